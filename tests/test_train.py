"""The training loop end to end on tiny models: wrappers agree, resume is exact, bad input is
refused. Runs on the 8 simulated CPU devices that conftest.py sets up."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from contrastive_jax import checkpoints, train
from contrastive_jax.logging import read_metrics

from support import REPO, assert_trees_equal, final_params, tiny_config

@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same 4-step run under each wrapper: {kind: workdir}."""
    workdirs = {}
    for kind in ("pmap", "shard_map"):
        workdirs[kind] = str(tmp_path_factory.mktemp(kind))
        train.train_and_evaluate(tiny_config(parallel=kind), workdirs[kind])
    return workdirs


def test_pmap_and_shard_map_give_the_same_losses_and_parameters(runs):
    losses = {kind: [row["loss"] for row in read_metrics(workdir) if "loss" in row]
              for kind, workdir in runs.items()}
    assert len(losses["pmap"]) == 4
    np.testing.assert_allclose(losses["pmap"], losses["shard_map"], rtol=1e-5)
    assert_trees_equal(final_params(runs["pmap"])[1], final_params(runs["shard_map"])[1],
                       rtol=1e-4, atol=1e-6)


def test_workdir_holds_config_metrics_and_checkpoints(runs):
    workdir = runs["shard_map"]
    rows = read_metrics(workdir)
    assert [row["step"] for row in rows if "loss" in row] == [1, 2, 3, 4]
    for key in ("loss", "learning_rate", "examples_per_sec", "contrastive_top1"):
        assert all(key in row for row in rows if "loss" in row), key
    final = [row for row in rows if "knn_top1" in row]
    assert final and 0.0 <= final[-1]["knn_top1"] <= 1.0 and 0.0 <= final[-1]["linear_top1"] <= 1
    assert os.path.exists(os.path.join(workdir, "config.json"))
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(workdir))
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "4"]


def test_checkpoint_from_another_config_is_refused(runs):
    with pytest.raises(checkpoints.ConfigMismatchError, match="model was"):
        train.Trainer(tiny_config(**{"model.base_width": 8}), runs["shard_map"])


def test_a_workdir_from_before_a_model_field_was_added_still_matches(tmp_path):
    """config.json of an older version lacks a field that the code now has: the workdir
    resumes; a changed value or a field that went away is refused."""
    config = tiny_config()
    saved = json.loads(config.to_json())
    del saved["model"]["zero_init_residual"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    checkpoints.check_config(str(tmp_path), config, write=True)  # Rewrites config.json whole.
    (tmp_path / "config.json").write_text(json.dumps(saved))
    with pytest.raises(checkpoints.ConfigMismatchError, match="model was"):
        checkpoints.check_config(str(tmp_path), tiny_config(**{"model.head_out_dim": 8}),
                                 write=True)
    saved["model"]["no_longer_a_field"] = 1
    (tmp_path / "config.json").write_text(json.dumps(saved))
    with pytest.raises(checkpoints.ConfigMismatchError, match="model was"):
        checkpoints.check_config(str(tmp_path), config, write=True)


@pytest.mark.parametrize("override,message", [
    ({"loss.temperature": 0.0}, "config.loss.temperature must be > 0"),
    ({"data.source": "tfds:no_such_dataset"}, "no_such_dataset"),
    ({"data.source": "folder:/does/not/exist"}, "/does/not/exist"),
    ({"parallel": "pjit"}, "config.parallel must be one of"),
    ({"batch_size": 12}, "does not divide over 8 devices"),
])
def test_bad_config_is_refused_with_a_clear_message(tmp_path, override, message):
    with pytest.raises(ValueError, match=message):
        train.Trainer(tiny_config(**override), str(tmp_path / "run"))


def test_nan_loss_stops_before_checkpointing(tmp_path):
    workdir = str(tmp_path / "run")
    config = tiny_config(**{"optimizer.learning_rate": 1e30, "optimizer.lr_scaling": "none",
                            "total_steps": 6, "checkpoint_every": 1, "eval_every": -1})
    with pytest.raises(FloatingPointError, match="loss is nan"):
        train.train_and_evaluate(config, workdir)
    manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"))
    for step in manager.all_steps():
        params = manager.restore(step)["params"]
        assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(params)), step


def run_main(workdir, *overrides, stop_at_step=None):
    """Runs the CLI in a subprocess (1 CPU device); with stop_at_step, sends SIGTERM as soon as
    the progress line of that step is printed."""
    command = [sys.executable, "-m", "contrastive_jax.main", "--config=configs/demo.py",
               f"--workdir={workdir}", "--config.data.source=synthetic",
               "--config.data.synthetic_num_examples=64", "--config.data.image_size=16",
               "--config.model.base_width=4", "--config.batch_size=16",
               "--config.eval_at_start=False", "--config.eval.batch_size=16",
               "--config.eval.knn_k=5", "--config.eval.linear_steps=5", "--config.log_every=1",
               "--config.checkpoint_every=100", "--config.optimizer.warmup_steps=1",
               "--config.eval_every=-1",
               *overrides]
    env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    stderr = []
    if stop_at_step is not None:
        for line in proc.stderr:
            stderr.append(line)
            if f"step {stop_at_step}/" in line:
                proc.terminate()  # SIGTERM
                break
    stdout, rest = proc.communicate(timeout=300)
    return proc.returncode, stdout, "".join(stderr) + rest


def test_sigterm_saves_and_the_resumed_run_equals_an_uninterrupted_one(tmp_path):
    steps = "--config.total_steps=8"
    stopped = str(tmp_path / "stopped")
    code, stdout, stderr = run_main(stopped, steps, stop_at_step=3)
    assert code == 0, stderr[-2000:]
    assert "preempted" in stdout
    saved_step, _ = final_params(stopped)
    assert 3 <= saved_step < 8
    code, _, stderr = run_main(stopped, steps)
    assert code == 0, stderr[-2000:]
    uninterrupted = str(tmp_path / "uninterrupted")
    code, _, stderr = run_main(uninterrupted, steps)
    assert code == 0, stderr[-2000:]
    step_a, params_a = final_params(stopped)
    step_b, params_b = final_params(uninterrupted)
    assert step_a == step_b == 8
    assert_trees_equal(params_a, params_b)


def test_cli_bad_input_gives_one_clear_line_and_exit_1(tmp_path):
    code, _, stderr = run_main(str(tmp_path / "run"), "--config.loss.temperature=0")
    assert code == 1
    last = stderr.strip().splitlines()[-1]
    assert last == "error: config.loss.temperature must be > 0, got 0.0", stderr[-2000:]


def test_unknown_config_key_is_refused(tmp_path):
    code, _, stderr = run_main(str(tmp_path / "run"), "--config.no_such_key=1")
    assert code != 0 and "no_such_key" in stderr
