"""Entry point: `python -m contrastive_jax.main --config=configs/X.py --workdir=DIR`.

Starts jax.distributed when the run spans several processes (TPU pods and SLURM find their peers
by themselves; elsewhere pass --coordinator_address, --num_processes and --process_id, or the
JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID variables), then trains and
evaluates. Bad input ends the run with one `error:` line naming the problem and exit status 1;
a SIGTERM ends it with status 0, after saving a checkpoint once training has begun.
"""

from __future__ import annotations

import os
import signal
import sys

from absl import app, logging

from contrastive_jax import cli, config_checks, runtime, workdir

EVAL_COLUMNS = {"knn_top1": "kNN top-1", "linear_top1": "linear top-1",
                "linear_eval_top1": "linear eval top-1",
                "zeroshot_top1": "zero-shot top-1", "i2t_recall@1": "i2t R@1",
                "t2i_recall@1": "t2i R@1", "i2t_recall@5": "i2t R@5", "t2i_recall@5": "t2i R@5"}


def summary_table(workdir: str) -> str:
    """The evaluation metrics of the randomly initialised model (step 0) and of the last eval."""
    from contrastive_jax.logging import read_metrics
    by_step: dict[int, dict] = {}  # Evaluations logged at one step (kNN, linear eval) merged.
    for row in read_metrics(workdir):
        if any(key in row for key in EVAL_COLUMNS):
            by_step.setdefault(row["step"], {}).update(row)
    evals = [by_step[step] for step in sorted(by_step)]
    if not evals:
        return "no evaluation results"
    columns = [key for key in EVAL_COLUMNS if key in evals[-1]]
    rows = [(f"trained (step {evals[-1]['step']})", evals[-1])]
    if evals[0]["step"] == 0 and len(evals) > 1:
        rows.insert(0, ("random init (step 0)", evals[0]))
    lines = [f"{'model':<22}" + "".join(f"{EVAL_COLUMNS[key]:>17}" for key in columns)]
    for label, row in rows:
        lines.append(f"{label:<22}" + "".join(f"{row.get(key, float('nan')):>17.4f}"
                                              for key in columns))
    return "\n".join(lines)


def _exit_on_sigterm(signum, frame) -> None:
    """SIGTERM before the training loop began: there is nothing new to save, so stop now.
    (Once it begins, train.py's handler takes over and saves first.)

    It leaves with os._exit: sys.exit would raise SystemExit wherever the main thread happens
    to be, and a library that catches every exception there swallows it (a run was seen to go
    on training after this message).
    """
    del frame
    logging.warning("%s before training began: nothing new to save; exiting",
                    signal.Signals(signum).name)
    logging.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def main(argv) -> None:
    del argv  # cli.absl_flags_parser refused anything beyond the flags.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    signal.signal(signal.SIGINT, _exit_on_sigterm)  # Ctrl-C: as SIGTERM.
    from contrastive_jax import train
    try:  # Before TensorFlow and JAX start: a bad field or workdir fails in a second.
        config_checks.check_ranges(runtime.FLAGS.config)
        workdir.check_writable(runtime.FLAGS.workdir)
    except ValueError as error:
        cli.fail(error)
    runtime.start()

    import jax
    logging.info("JAX %s: process %d of %d, %d local / %d global devices (%s)", jax.__version__,
                 jax.process_index(), jax.process_count(), jax.local_device_count(),
                 jax.device_count(), jax.devices()[0].platform)
    try:
        results = train.train_and_evaluate(runtime.FLAGS.config, runtime.FLAGS.workdir)
    except (ValueError, FloatingPointError, OSError) as error:  # DataError, CheckpointError
        cli.fail_now(error)
    if "preempted_at" in results:
        print(f"preempted: checkpoint saved at step {results['preempted_at']}; run the same "
              "command again to resume", flush=True)
    elif jax.process_index() == 0:
        print(summary_table(runtime.FLAGS.workdir), flush=True)


if __name__ == "__main__":
    app.run(main, flags_parser=cli.absl_flags_parser)
