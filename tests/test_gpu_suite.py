"""The GPU suite's PyTorch reference computes the loss the JAX step computes, and the whole
suite runs in its CPU smoke mode (opt-in: minutes)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from contrastive_jax import losses

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_torch_reference_nt_xent_equals_ours():
    rng = np.random.default_rng(0)
    z1, z2 = rng.normal(size=(2, 6, 5)).astype(np.float32)
    # torch in a process of its own: its CUDA build crashes beside jax and TensorFlow.
    program = ("import json, sys, torch\n"
               "from contrastive_jax.bench import torch_simclr_step\n"
               "z = torch.tensor(json.loads(sys.stdin.read()))\n"
               "print(float(torch_simclr_step.nt_xent(z, 0.1)))\n")
    result = subprocess.run([sys.executable, "-c", program], input=json.dumps(
        np.concatenate([z1, z2]).tolist()), capture_output=True, text=True, timeout=300,
        cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    assert float(result.stdout) == pytest.approx(float(losses.nt_xent(z1, z2, 0.1)), rel=1e-5)


@pytest.mark.slow
def test_gpu_suite_smoke_mode(tmp_path):
    env = {**os.environ, "SMOKE": "1", "WORK_DIR": str(tmp_path / "work")}
    result = subprocess.run(["bash", "repro/gpu_suite.sh", str(tmp_path / "out")], env=env,
                            capture_output=True, text=True, timeout=1800, cwd=REPO)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "out" / "suite.jsonl").read_text()
            .splitlines()]
    parts = {row["part"]: row for row in rows}
    assert set(parts) == {"machine", "r50_jax", "r50_torch", "siglip_jax", "simclr_cifar10",
                          "summary"}
    assert parts["summary"]["failed"] == []
    assert parts["simclr_cifar10"]["finite"] and parts["simclr_cifar10"]["knn_curve"]
    assert parts["r50_jax"]["seconds_per_step"] > 0 < parts["r50_torch"]["seconds_per_step"]
