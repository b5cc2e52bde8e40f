"""`python -m contrastive_jax.linear_eval --config=configs/X.py --workdir=DIR [--config.k=v]`:
SimCLR's linear evaluation protocol (evaluation/linear_protocol.py) on DIR's newest checkpoint.

It restores the checkpoint (trained with the same config), runs the protocol and appends
`{"step": <checkpoint step>, "linear_eval_top1": ...}` to DIR/metrics.jsonl. It takes the flags
of `contrastive_jax.main` (runtime.py), multi-process ones included.
"""

from __future__ import annotations

from typing import Sequence

import jax
import ml_collections
from absl import app

from contrastive_jax import checkpoints, cli, config_checks, methods, runtime
from contrastive_jax.evaluation import linear_protocol
from contrastive_jax.parallel.layout import Layout
from contrastive_jax.logging import MetricWriter


def evaluate_workdir(config: ml_collections.ConfigDict, workdir: str) -> tuple[int, dict]:
    """Linear evaluation of the newest checkpoint in `workdir`, appended to its metrics.jsonl
    at the checkpoint's step; returns (step, results). `config` must be the workdir's in
    every checkpoint-defining entry; nothing else of the workdir is read or written."""
    config_checks.check_ranges(config)
    if not checkpoints.has_checkpoints(workdir):
        raise checkpoints.NoCheckpointError(
            f"no checkpoint in {checkpoints.checkpoint_dir(workdir)}: train first with python "
            f"-m contrastive_jax.main --config=<the same config> --workdir={workdir}")
    checkpoints.check_config(workdir, config, write=False)
    writer = MetricWriter(workdir, start_step=None)
    restored = checkpoints.restore(workdir)
    layout = Layout.from_config(config)
    variables = layout.replicate(restored.variables)
    encode_fn = methods.get(config.method).encoder_features(restored.model)
    results = linear_protocol.linear_eval(config, variables, encode_fn, layout)
    writer.write(restored.step, results)
    writer.close()
    return restored.step, results


def run_cli(argv: Sequence[str]) -> None:
    """The command line: `contrastive_jax.main`'s flags, linear evaluation instead of training."""
    del argv  # cli.absl_flags_parser refused anything beyond the flags.
    runtime.start()
    with cli.errors_as_one_line():
        step, results = evaluate_workdir(runtime.FLAGS.config, runtime.FLAGS.workdir)
    if jax.process_index() == 0:
        metric = linear_protocol.METRIC
        print(f"{metric} {results[metric]:.4f} (checkpoint at step {step})", flush=True)


if __name__ == "__main__":
    app.run(run_cli, flags_parser=cli.absl_flags_parser)
