"""checkpoints: a workdir read without its data and without being written; the config checks."""

import json
import os

import jax
import numpy as np
import pytest

from contrastive_jax import checkpoints, config_defaults, export, linear_eval, train

from support import image_text_config, random_like, tiny_config


def snapshot(directory) -> dict:
    """Every file and directory under `directory`: path -> (size, mtime, content digest)."""
    found = {}
    for root, dirs, names in os.walk(directory):
        for name in dirs:
            path = os.path.join(root, name)
            found[path] = ("dir", os.stat(path).st_mtime_ns)
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                found[path] = (os.stat(path).st_mtime_ns, hash(f.read()))
    return found


def saved_workdir(directory, config, steps=(1,)):
    """A workdir holding checkpoints of `config` at `steps` (random states, saved by the
    Trainer as training saves them), its owner released; returns (workdir, the last state as
    host arrays)."""
    workdir = str(directory)
    trainer = train.Trainer(config, workdir)
    for seed, step in enumerate(steps):
        host_state = random_like(trainer.state_shapes, seed)
        trainer.save(trainer.layout.replicate(host_state), step)
    trainer.wait_for_saves()
    trainer.release_workdir()
    return workdir, host_state


def without_data(workdir):
    """Points the workdir's config.json at a dataset that does not exist (not a
    checkpoint-defining entry): reading the workdir must not need it."""
    path = os.path.join(workdir, "config.json")
    with open(path, encoding="utf-8") as f:
        config = json.load(f)
    config["data"]["source"] = "folder:/nonexistent/dataset"
    with open(path, "w", encoding="utf-8") as f:
        json.dump(config, f)


def test_restore_reads_no_data_writes_nothing_and_gives_the_saved_variables(tmp_path):
    workdir, saved = saved_workdir(tmp_path / "run", tiny_config(eval_every=-1), steps=(1, 2))
    without_data(workdir)
    before = snapshot(workdir)

    restored = checkpoints.restore(workdir)

    assert restored.step == 2
    assert restored.config.data.source == "folder:/nonexistent/dataset"
    jax.tree.map(np.testing.assert_array_equal, restored.variables,
                 {"params": saved.params, "batch_stats": saved.batch_stats})
    assert checkpoints.probe_classes(restored.variables["params"]) == 10  # synthetic: 10
    images = np.zeros((2, 16, 16, 3), np.float32)
    restored.model.apply(restored.variables, images, train=False)  # The model fits the tree.
    export.export(workdir, "npz", str(tmp_path / "model.npz"))
    assert snapshot(workdir) == before


def test_a_newer_checkpoint_that_does_not_restore_is_skipped_and_left_where_it_is(tmp_path):
    workdir, saved = saved_workdir(tmp_path / "run", tiny_config(eval_every=-1))
    os.makedirs(os.path.join(workdir, "checkpoints", "7"))  # A copy interrupted.
    before = snapshot(workdir)
    restored = checkpoints.restore(workdir)
    assert restored.step == 1
    np.testing.assert_array_equal(restored.variables["params"]["probe"]["Dense_0"]["bias"],
                                  saved.params["probe"]["Dense_0"]["bias"])
    assert snapshot(workdir) == before


def test_an_image_text_workdir_restores_without_a_probe(tmp_path):
    workdir, saved = saved_workdir(tmp_path / "run", image_text_config("siglip"))
    restored = checkpoints.restore(workdir)
    assert checkpoints.probe_classes(restored.variables["params"]) == 0
    jax.tree.map(np.testing.assert_array_equal, restored.variables["params"], saved.params)


def test_config_json_is_needed_and_checked_but_only_written_when_asked(tmp_path):
    workdir = str(tmp_path / "run")
    with pytest.raises(checkpoints.NoCheckpointError, match="is not a training workdir"):
        checkpoints.load_config(workdir)
    config = tiny_config()
    assert checkpoints.check_config(workdir, config, write=False) is None
    assert not os.path.exists(workdir)
    checkpoints.check_config(workdir, config, write=True)
    assert checkpoints.load_config(workdir).to_dict() == json.loads(config.to_json())
    with pytest.raises(checkpoints.ConfigMismatchError, match="method was simclr, now byol"):
        checkpoints.check_config(workdir, tiny_config("byol"), write=True)
    assert checkpoints.load_config(workdir).method == "simclr"
    with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
        f.write('{"method": ')  # Cut short.
    with pytest.raises(checkpoints.ConfigMismatchError, match="cannot read .*config.json"):
        checkpoints.load_config(workdir)


def test_linear_eval_of_a_workdir_refuses_an_unwritable_metrics_file_before_any_work(tmp_path):
    workdir, _ = saved_workdir(tmp_path / "run", tiny_config(eval_every=-1))
    os.makedirs(os.path.join(workdir, "metrics.jsonl"))  # Cannot be appended to.
    without_data(workdir)  # Reading the data would fail first if the check came later.
    config = checkpoints.load_config(workdir)
    with pytest.raises(OSError, match=r"cannot write .*metrics.jsonl: Is a directory"):
        linear_eval.evaluate_workdir(config, workdir)


def test_a_config_json_from_before_fields_were_added_loads_them_at_their_defaults(tmp_path):
    """A workdir written before `model.zero_init_residual` and the whole `eval` section existed: the
    config it loads with has them at the schema's defaults, everything it had as written, and
    its checkpoint restores (export and linear_eval read workdirs this way)."""
    config = tiny_config(**{"model.head_out_dim": 8})
    workdir, _ = saved_workdir(tmp_path / "old", config)
    path = os.path.join(workdir, "config.json")
    with open(path, encoding="utf-8") as f:
        old = json.load(f)
    del old["model"]["zero_init_residual"], old["eval"]
    with open(path, "w", encoding="utf-8") as f:
        json.dump(old, f)
    loaded = checkpoints.load_config(workdir)
    defaults = config_defaults.base("simclr")
    assert loaded.model.zero_init_residual is defaults.model.zero_init_residual
    assert loaded.eval.to_dict() == defaults.eval.to_dict()
    assert loaded.model.head_out_dim == 8 and loaded.data.source == "synthetic"
    assert checkpoints.restore(workdir).step == 1
