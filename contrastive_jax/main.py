"""Entry point: `python -m contrastive_jax.main --config=configs/X.py --workdir=DIR`.

Starts jax.distributed when the run spans several processes (TPU pods and SLURM find their peers
by themselves; elsewhere pass --coordinator_address, --num_processes and --process_id, or the
JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID variables), then trains and
evaluates. Bad input ends the run with one `error:` line naming the problem and exit status 1;
a SIGTERM ends it with status 0, after saving a checkpoint once training has begun.
"""

from __future__ import annotations

import logging as python_logging
import os
import signal
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from contrastive_jax import cli

config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py[:ARG]).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and TensorBoard events.")
flags.DEFINE_string("coordinator_address", os.environ.get("JAX_COORDINATOR_ADDRESS"),
                    "HOST:PORT of process 0, for multi-process runs outside TPU pods / SLURM.")
flags.DEFINE_integer("num_processes", int(os.environ.get("JAX_NUM_PROCESSES", "0")) or None,
                     "Number of processes (with --coordinator_address).")
flags.DEFINE_integer("process_id", int(os.environ.get("JAX_PROCESS_ID", "-1")),
                     "This process's index (with --coordinator_address).")
flags.DEFINE_bool("library_logs", False, "Show Orbax's and TensorStore's INFO lines (about 40 "
                  "per checkpoint).")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def quiet_library_logs() -> None:
    """Orbax reports every save and restore step by step at INFO (some 40 lines a checkpoint):
    keep them, and TensorStore's, out of the console unless --library_logs asks for them."""
    if FLAGS.library_logs:
        return
    # ABSLHandler passes records on to its Python handler, which applies the filters.
    # absl's logging.WARNING is its verbosity (-1); records carry Python's levels.
    logging.get_absl_handler().python_handler.addFilter(_project_lines)


def _project_lines(record: python_logging.LogRecord) -> bool:
    """Whether a log record reaches the console without --library_logs: not Orbax's or
    TensorStore's INFO lines, and not the tracebacks that a failed save's threads log (the
    failure reaches the loop, which ends the run with one error line saying it)."""
    if not any(name in record.pathname for name in ("orbax", "tensorstore")):
        return True
    return record.levelno >= python_logging.WARNING and not record.exc_info


def drop_closed_event_loop_reports() -> None:
    """After a failed Orbax save, TensorStore's callbacks for the writes still in flight call
    into the save's event loop, which has closed; Python reports each as an unraisable
    RuntimeError with a traceback (dozens of them, before and around the one error line). They
    say nothing the error line does not, so they are dropped; any other report is kept."""
    previous = sys.unraisablehook

    def hook(report) -> None:
        if not (report.exc_type is RuntimeError and str(report.exc_value) ==
                "Event loop is closed"):
            previous(report)

    sys.unraisablehook = hook


def _on_pod_or_cluster() -> bool:
    """A TPU pod slice or a SLURM job of several tasks: jax.distributed finds its peers."""
    tpu_hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    return "," in tpu_hosts or int(os.environ.get("SLURM_NTASKS", "1")) > 1


def initialize_distributed() -> None:
    """jax.distributed.initialize for multi-process runs; nothing for a single process."""
    import jax
    if FLAGS.coordinator_address:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU-only runs
        jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                                   num_processes=FLAGS.num_processes,
                                   process_id=FLAGS.process_id if FLAGS.process_id >= 0 else None)
    elif _on_pod_or_cluster():
        jax.distributed.initialize()


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
        train.check_fields(FLAGS.config)
        train.check_workdir(FLAGS.workdir)
    except ValueError as error:
        cli.fail(error)
    from contrastive_jax.data import numpy_data
    if numpy_data.tensorflow_available():  # Absent on many GPU images: the device path runs.
        import tensorflow as tf
        tf.config.set_visible_devices([], "GPU")  # tf.data only; the accelerators are JAX's.
    quiet_library_logs()
    drop_closed_event_loop_reports()
    initialize_distributed()

    import jax
    logging.info("JAX %s: process %d of %d, %d local / %d global devices (%s)", jax.__version__,
                 jax.process_index(), jax.process_count(), jax.local_device_count(),
                 jax.device_count(), jax.devices()[0].platform)
    try:
        results = train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except (ValueError, FloatingPointError, OSError) as error:  # DataError, CheckpointError
        cli.fail_now(error)
    if "preempted_at" in results:
        print(f"preempted: checkpoint saved at step {results['preempted_at']}; run the same "
              "command again to resume", flush=True)
    elif jax.process_index() == 0:
        print(summary_table(FLAGS.workdir), flush=True)


if __name__ == "__main__":
    app.run(main, flags_parser=cli.absl_flags_parser)
