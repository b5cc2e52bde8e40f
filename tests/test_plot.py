"""`python -m contrastive_jax.plot WORKDIR`: a PNG with a panel per curve, read back."""

import json
import subprocess
import sys

import numpy as np
import pytest

from contrastive_jax import plot
from contrastive_jax.logging import read_metrics

from support import REPO


def _write_metrics(workdir, rows):
    with open(workdir / "metrics.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)


def test_plot_writes_a_png_with_loss_lr_and_accuracy_panels(tmp_path):
    rows = [{"step": 0, "knn_top1": 0.1, "linear_top1": 0.2}]
    rows += [{"step": s, "loss": 5.0 - s / 100, "learning_rate": s / 1000, "probe_top1": s / 400}
             for s in range(10, 110, 10)]
    rows += [{"step": 100, "knn_top1": 0.5, "linear_top1": 0.6}]
    _write_metrics(tmp_path, rows)
    curves = plot.series(rows)
    assert curves["knn_top1"] == ([0, 100], [0.1, 0.5])
    assert curves["loss"][0] == list(range(10, 110, 10))
    result = subprocess.run([sys.executable, "-m", "contrastive_jax.plot", str(tmp_path)],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "loss, learning_rate, accuracy" in result.stdout
    import matplotlib.image
    image = matplotlib.image.imread(str(tmp_path / "curves.png"))
    height, width = image.shape[:2]
    assert width > 2.5 * height  # Three panels side by side.
    assert np.std(image[..., :3]) > 0.05  # Something is drawn.


def test_plot_of_an_empty_workdir_is_one_error_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "contrastive_jax.plot", str(tmp_path)],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "holds no metrics" in result.stderr


@pytest.mark.parametrize("rows", [[{"step": 3, "note": "text", "loss": 1.0}]])
def test_series_keeps_numbers_only(rows):
    assert plot.series(rows) == {"loss": ([3], [1.0])}


def test_rows_without_a_step_are_left_out_and_an_unwritable_out_is_one_line(tmp_path, capsys):
    (tmp_path / "metrics.jsonl").write_text(
        '{"step": 1, "loss": 2.0}\n[1, 2]\n{"loss": 3.0}\n{"step": 2, "loss": 1.5}\n')
    assert plot.series(read_metrics(str(tmp_path))) == {"loss": ([1, 2], [2.0, 1.5])}
    with pytest.raises(SystemExit) as exit_info:
        plot.main([str(tmp_path), f"--out={tmp_path / 'missing' / 'curves.png'}"])
    assert exit_info.value.code == 1
    assert capsys.readouterr().err.strip() == (
        f"error: cannot write {tmp_path / 'missing' / 'curves.png'}: No such file or directory")
