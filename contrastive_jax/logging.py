"""Metrics to `metrics.jsonl`, TensorBoard event files and a one-line progress report.

Only process 0 writes; every process may call. `metrics.jsonl` holds one JSON object per logged
step (DESIGN: at least `step`, `loss`, `learning_rate`, `examples_per_sec`; evaluation results
such as `knn_top1`), appended so that a resumed run continues the same file. A resumed run
first drops the rows of the steps it will run again (those after the restored checkpoint) and a
partial last line left by a crash, so the file never holds a step twice.
"""

from __future__ import annotations

import json
import os
from typing import Mapping

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
    """`step 120/1000 | loss 4.1234 | contrastive_top1 0.412 | lr 0.30 | 1234 ex/s | ETA 0:05:10`."""
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


class MetricWriter:
    """Appends metrics to DIR/metrics.jsonl and DIR's TensorBoard events (process 0 only).

    `start_step` is the step the run starts from (the restored checkpoint's, 0 for a new run):
    rows logged after it are dropped, since the run logs those steps again.
    """

    def __init__(self, workdir: str, start_step: int = 0):
        self._primary = jax.process_index() == 0
        self._path = os.path.join(workdir, "metrics.jsonl")
        self._summary = None
        if self._primary:
            os.makedirs(workdir, exist_ok=True)
            _keep_rows_up_to(self._path, start_step)
            import tensorflow as tf
            self._summary = tf.summary.create_file_writer(workdir)

    def write(self, step: int, metrics: Mapping[str, object]) -> None:
        if not self._primary:
            return
        row = {"step": int(step), **{k: _to_python(v) for k, v in metrics.items()}}
        with open(self._path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        import tensorflow as tf
        with self._summary.as_default(step=int(step)):
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)):
                    tf.summary.scalar(key, value)
        self._summary.flush()

    def log_progress(self, step: int, total_steps: int, metrics: Mapping[str, float],
                     seconds_left: float | None) -> None:
        if self._primary:
            logging.info(progress_line(step, total_steps, metrics, seconds_left))

    def close(self) -> None:
        if self._summary is not None:
            self._summary.close()


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
    """Rewrites `path` (atomically) with its whole rows of steps <= start_step; of none if the
    run starts from scratch (step 0), whose start-of-run evaluation is logged again."""
    if not os.path.exists(path):
        return
    rows = [row for row in _parse_rows(path)
            if start_step > 0 and isinstance(row.get("step"), int) and row["step"] <= start_step]
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    os.replace(path + ".tmp", path)


def read_metrics(workdir: str) -> list[dict]:
    """All rows of DIR/metrics.jsonl (empty if none yet); a partial last line is skipped."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    return _parse_rows(path)
