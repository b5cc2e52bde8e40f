"""kill -9 at random moments, mid-save included: nothing saved is lost or wrong, and the run
resumed after the kills ends bitwise equal to one that was never stopped."""

import os
import random
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from contrastive_jax import checkpoints
from contrastive_jax.logging import read_metrics

from support import REPO


def total_steps(kills: int) -> int:
    """Steps enough for every kill to land before the run ends (each run saves a new step or
    two before its kill)."""
    return 20 + 8 * kills


def start(workdir: str, cache_dir: str, steps: int) -> subprocess.Popen:
    """The CLI on a tiny synthetic run that saves a checkpoint after every step (so that a kill
    often lands in a save) and keeps them all, on one CPU device; stderr piped."""
    command = [sys.executable, "-m", "contrastive_jax.main", "--config=configs/demo.py",
               f"--workdir={workdir}", "--config.data.source=synthetic",
               "--config.data.synthetic_num_examples=64", "--config.data.image_size=8",
               "--config.model.base_width=2", "--config.batch_size=16",
               f"--config.total_steps={steps}", "--config.log_every=1",
               "--config.eval_every=-1", "--config.checkpoint_every=1",
               f"--config.keep_checkpoints={steps}", "--config.optimizer.warmup_steps=1"]
    # The compilation cache makes every restart after the first compile-free.
    env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu",
               JAX_COMPILATION_CACHE_DIR=cache_dir)
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def wait_for_training(proc: subprocess.Popen, steps: int) -> None:
    """Returns once the run has logged a step (after its start-up and restore)."""
    for line in proc.stderr:
        if "step " in line and f"/{steps}" in line:
            return
    raise AssertionError(f"the run ended (status {proc.wait()}) before its first step")


def wait_for_a_checkpoint_after(workdir: str, step: int, timeout: float = 120) -> None:
    """Returns once a checkpoint newer than `step` has been saved whole."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if max(checkpoints.all_steps(workdir), default=0) > step:
            return
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint after step {step} was saved")


def wait_for_a_save_in_progress(checkpoint_dir: str, timeout: float = 30) -> None:
    """Returns as soon as Orbax's temporary directory of a save in progress exists."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any("tmp" in name for name in os.listdir(checkpoint_dir)):
            return
    raise AssertionError("no save was seen in progress")


def saved_state(directory: str, step: int):
    manager = ocp.CheckpointManager(directory)
    try:
        return manager.restore(step)
    finally:
        manager.close()


def assert_bitwise_equal(a, b) -> None:
    jax.tree.map(np.testing.assert_array_equal, a, b)


@pytest.mark.parametrize("kills", [2, pytest.param(10, marks=pytest.mark.slow)])
def test_kill_9_at_random_moments_then_resume_equals_an_uninterrupted_run(tmp_path, kills):
    """The first kill lands in start-up or the first steps; each later one once its run has
    saved a new step, either in a save (every other kill) or up to a second later."""
    steps = total_steps(kills)
    cache_dir = str(tmp_path / "compilation_cache")
    uninterrupted = str(tmp_path / "uninterrupted")
    proc = start(uninterrupted, cache_dir, steps)
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    reference_dir = os.path.join(uninterrupted, "checkpoints")

    killed = str(tmp_path / "killed")
    killed_dir = os.path.join(killed, "checkpoints")
    rng = random.Random(0)
    kills_in_a_save, newest = 0, 0
    for kill in range(kills):
        proc = start(killed, cache_dir, steps)
        if kill == 0:  # During start-up, compilation and the first steps.
            time.sleep(rng.uniform(0.0, 20.0))
        else:  # Once this run has saved a step, in a save or at a random moment.
            wait_for_training(proc, steps)
            wait_for_a_checkpoint_after(killed, newest)
            if kill % 2:
                wait_for_a_save_in_progress(killed_dir)
            else:
                time.sleep(rng.uniform(0.0, 1.0))
        in_a_save = os.path.isdir(killed_dir) and any("tmp" in name
                                                      for name in os.listdir(killed_dir))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        assert proc.returncode == -signal.SIGKILL, "the run ended before it was killed"
        proc.stderr.close()
        kills_in_a_save += in_a_save
        if newest == 0 and not checkpoints.all_steps(killed):
            continue  # Killed before its first save had finished.
        # No saved step is lost, and the newest is the uninterrupted run's state at that step.
        restored = checkpoints.restore(killed)
        assert newest <= restored.step < steps
        newest = restored.step
        assert_bitwise_equal(restored.variables["params"],
                             saved_state(reference_dir, restored.step)["params"])
    waited_for_a_save = kills // 2  # The odd-numbered kills.
    assert kills_in_a_save >= max(1, waited_for_a_save - 2)  # A save may end meanwhile.
    assert newest > 0

    proc = start(killed, cache_dir, steps)
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    assert_bitwise_equal(saved_state(killed_dir, steps),
                         saved_state(reference_dir, steps))
    losses = {run: [(row["step"], row["loss"]) for row in read_metrics(run) if "loss" in row]
              for run in (killed, uninterrupted)}
    assert losses[killed] == losses[uninterrupted]
    assert len(losses[killed]) == steps
