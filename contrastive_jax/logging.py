"""Metrics to `metrics.jsonl`, TensorBoard (clu.metric_writers) and a one-line progress report.

Every process may call. Process 0 appends to `metrics.jsonl` and writes TensorBoard events
through `clu.metric_writers.create_default_writer`; the others only log (clu's `just_logging`),
so every host's log shows the run. `metrics.jsonl` holds one JSON object per logged step
(DESIGN: at least `step`, `loss`, `learning_rate`, `examples_per_sec`; evaluation results such
as `knn_top1`), appended so that a resumed run continues the same file. A resumed run first
drops the rows of the steps it will run again (those after the restored checkpoint) and a
partial last line left by a crash, so the file never holds a step twice.

Where clu's writers cannot be imported (they need TensorFlow, which GPU images often lack),
`metrics.jsonl` and the log lines are written all the same, without TensorBoard events
(`LogOnlyWriter`), and the loop's progress report is `NoProgressReport`.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any, ContextManager, Mapping

import jax
import numpy as np
from absl import logging


def _to_python(value) -> float | int | str:
    if isinstance(value, str):
        return value
    value = np.asarray(value)
    return value.item() if value.dtype.kind in "iub" else float(value)


def format_seconds(seconds: float) -> str:
    """A duration as H:MM:SS."""
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def progress_line(step: int, total_steps: int, metrics: Mapping[str, float],
                  seconds_left: float | None) -> str:
    """One log line: `step 120/1000 | loss 4.123 | top1 0.412 | lr 0.3 | 1234 ex/s | ETA 0:05:10`
    (tests/test_train.py's SIGTERM test waits for `step N/`)."""
    parts = [f"step {step}/{total_steps}"]
    for key, label in (("loss", "loss"), ("contrastive_top1", "top1"),
                       ("learning_rate", "lr"), ("examples_per_sec", "ex/s")):
        if key in metrics:
            value = metrics[key]
            parts.append(f"{label} {value:.0f}" if key == "examples_per_sec"
                         else f"{label} {value:.4g}")
    parts += [f"{k} {v:.4f}" for k, v in metrics.items() if k.endswith("_top1")
              and k != "contrastive_top1"]
    if seconds_left is not None:
        parts.append(f"ETA {format_seconds(seconds_left)}")
    return " | ".join(parts)


def hparams(config: Mapping[str, Any], prefix: str = "") -> dict[str, bool | int | float | str]:
    """A nested config as TensorBoard hyperparameters: dotted names, and values that are not
    bool, int, float or str (None, tuples) written as their text."""
    flat: dict[str, bool | int | float | str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(hparams(value, prefix=f"{name}."))
        else:
            flat[name] = value if isinstance(value, (bool, int, float, str)) else str(value)
    return flat


class MetricWriter:
    """Appends metrics to DIR/metrics.jsonl and writes them to clu's writers.

    `start_step` is the step the run starts from (the restored checkpoint's, 0 for a new run):
    rows logged after it are dropped, since the run logs those steps again; None appends to the
    rows there (linear evaluation of a trained workdir). `clu_writer` is the
    clu writer itself (TensorBoard events on process 0, the log), for clu's periodic actions.
    """

    def __init__(self, workdir: str, start_step: int | None = 0):
        primary = jax.process_index() == 0
        self._path = os.path.join(workdir, "metrics.jsonl") if primary else None
        if primary and start_step is None:
            try:  # Unwritable: say so before the work whose result would be lost.
                open(self._path, "a", encoding="utf-8").close()
            except OSError as error:
                raise OSError(f"cannot write {self._path}: {error.strerror or error}") from error
        elif primary:
            os.makedirs(workdir, exist_ok=True)
            _keep_rows_up_to(self._path, start_step)
        try:  # TensorFlow: imported by runs that write, not plots.
            from clu import metric_writers
        except ImportError as error:
            if primary:
                logging.warning("no TensorBoard events (%s); metrics go to metrics.jsonl and "
                                "the log", error)
            self.clu_writer = LogOnlyWriter()
        else:
            self.clu_writer = metric_writers.create_default_writer(
                workdir if primary else None, just_logging=not primary, asynchronous=False)

    def write(self, step: int, metrics: Mapping[str, object]) -> None:
        row = {"step": int(step), **{k: _to_python(v) for k, v in metrics.items()}}
        if self._path is not None:
            with open(self._path, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
        self.clu_writer.write_scalars(int(step), {
            key: value for key, value in row.items()
            if key != "step" and isinstance(value, (int, float))})
        self.clu_writer.flush()

    def write_hparams(self, config: Mapping[str, Any]) -> None:
        """The run's config, as TensorBoard's hyperparameters (and one log line)."""
        self.clu_writer.write_hparams(hparams(config))

    def log_progress(self, step: int, total_steps: int, metrics: Mapping[str, float],
                     seconds_left: float | None) -> None:
        if self._path is not None:
            logging.info(progress_line(step, total_steps, metrics, seconds_left))

    def close(self) -> None:
        self.clu_writer.close()


class LogOnlyWriter:
    """The part of clu's MetricWriter interface the loop uses, writing to the log only."""

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        logging.info("[%d] %s", step, ", ".join(f"{k}={v:.6g}" for k, v in scalars.items()))

    def write_hparams(self, hparams_: Mapping[str, Any]) -> None:
        logging.info("hparams: %s", ", ".join(f"{k}={v}" for k, v in hparams_.items()))

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class NoProgressReport:
    """Stands in for clu's ReportProgress where clu's periodic actions cannot be imported: the
    loop's own progress lines (with ETA) still appear."""

    def __call__(self, step: int) -> None:
        del step

    def timed(self, name: str) -> ContextManager[None]:
        del name
        return contextlib.nullcontext()


def _parse_rows(path: str) -> list[dict]:
    """The rows of a metrics.jsonl that parse; a line cut short by a crash is skipped."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                logging.warning("%s:%d is not a JSON row (cut short by a crash?); skipped",
                                path, number)
    return rows


def _keep_rows_up_to(path: str, start_step: int) -> None:
    """Rewrites `path` (atomically) with its whole rows of steps <= start_step. A run that
    starts from scratch (step 0) in a workdir whose metrics.jsonl has rows (a run killed before
    its first checkpoint) sets that file aside, with a warning, instead of losing it."""
    if not os.path.exists(path):
        return
    if start_step == 0:
        if _parse_rows(path):
            aside, n = f"{path[:-len('.jsonl')]}.before_restart.jsonl", 1
            while os.path.exists(aside):
                n += 1
                aside = f"{path[:-len('.jsonl')]}.before_restart_{n}.jsonl"
            os.replace(path, aside)
            logging.warning("%s holds rows of a run that saved no checkpoint; this run starts "
                            "from step 0: moved them to %s", path, aside)
        else:
            os.remove(path)
        return
    rows = [row for row in _parse_rows(path)
            if isinstance(row.get("step"), int) and row["step"] <= start_step]
    from contrastive_jax import files
    with files.atomic_write(path) as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)


def read_metrics(workdir: str) -> list[dict]:
    """All rows of DIR/metrics.jsonl (empty if none yet); a partial last line is skipped."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    return _parse_rows(path)
