"""parallel="fsdp" against the shard_map step on 8 devices: the same losses and parameters for
SimCLR (BatchNorm, LARS) and SigLIP (ring, AdamW), SimCLR also with gradient caching, and about
1/D of the state per device."""

import os
import shutil

import jax
import numpy as np
import pytest

from contrastive_jax import config_checks, methods, optim, parallel, train, train_step
from contrastive_jax.parallel import fsdp
from contrastive_jax.parallel.layout import Layout

from support import assert_trees_equal, final_params, image_text_config, synthetic_batches, tiny_config


def _run(config, kind, batches):
    """Losses of each step and the final host state, from the same initial state."""
    config = config.copy_and_resolve_references()
    config.parallel = kind
    method, layout = methods.get(config.method), Layout.from_config(config)
    mesh = layout.mesh
    tx, schedule = optim.make_optimizer(config.optimizer, total_steps=config.total_steps,
                                        batch_size=config.batch_size)
    model = method.build_model(config, 10, layout.bn_axis)
    host_state = jax.device_get(jax.jit(lambda: train_step.create_train_state(
        method, model, config, tx, jax.random.PRNGKey(0)))())
    rng = parallel.replicate(jax.random.PRNGKey(1), "shard_map", mesh)
    shardings, step = train_step.make_step(method, model, config, tx, schedule, host_state,
                                           layout)
    state = layout.place_state(host_state, shardings)
    losses = []
    for batch in batches:
        state, metrics = step(state, parallel.host_batch_to_devices(batch, "shard_map", mesh),
                              rng)
        losses.append(float(parallel.unreplicate(metrics, "shard_map")["loss"]))
    return losses, jax.device_get(state)


def test_fsdp_step_equals_shard_map_with_batchnorm_and_the_siglip_ring():
    """SimCLR's ResNet (BatchNorm over the global batch, LARS) on all 8 devices, and SigLIP's
    ring inside the shard_map over the embeddings on a 2 x 4 mesh (state split 4 ways): 3 steps
    of each path from one state."""
    for config in (tiny_config("simclr", batch_size=32, total_steps=3),
                   image_text_config("siglip", batch_size=32, fsdp_size=4,
                                     **{"loss.siglip_impl": "ring"})):
        _check_fsdp_equals_shard_map(config_checks.resolve_steps(config, 64))


def test_fsdp_with_gradient_caching_equals_shard_map_with_it():
    """SimCLR, 4 examples per device in 2 chunks, one SGD step at lr 1 (so the update is the
    gradient): BatchNorm's statistics per chunk are those of shard_map's chunks (each a slice of
    every device's rows). Float32 sums in another order: the tolerance is 1e-5 of the largest
    parameter; the chunking itself moves parameters by ~1."""
    sgd = {"optimizer.name": "sgd", "optimizer.learning_rate": 1.0, "optimizer.momentum": 0.0,
           "optimizer.weight_decay": 0.0, "optimizer.lr_scaling": "none",
           "optimizer.warmup_steps": 0, "optimizer.grad_clip_norm": 0.0}
    config = config_checks.resolve_steps(tiny_config("simclr", batch_size=32, total_steps=1,
                                             grad_cache_chunks=2, **sgd), 64)
    batches = synthetic_batches(config, 1)
    want_losses, want = _run(config, "shard_map", batches)
    losses, got = _run(config, "fsdp", batches)
    np.testing.assert_allclose(losses, want_losses, rtol=1e-6)
    largest = max(float(np.abs(g).max()) for g in jax.tree.leaves(want.params))
    assert_trees_equal(got.params, want.params, rtol=1e-5, atol=1e-5 * largest)
    assert_trees_equal(got.batch_stats, want.batch_stats, rtol=1e-5, atol=1e-6)


def _check_fsdp_equals_shard_map(config):
    batches = synthetic_batches(config, 3)
    want_losses, want = _run(config, "shard_map", batches)
    losses, got = _run(config, "fsdp", batches)
    assert want_losses[-1] != want_losses[0]  # The parameters did move.
    np.testing.assert_allclose(losses, want_losses, rtol=1e-5)
    assert_trees_equal(got.params, want.params, rtol=1e-4, atol=1e-6)
    assert_trees_equal(got.batch_stats, want.batch_stats, rtol=1e-4, atol=1e-6)


def test_each_device_holds_about_an_eighth_of_the_state():
    config = config_checks.resolve_steps(image_text_config("clip", batch_size=32), 64)
    method = methods.get("clip")
    tx, _ = optim.make_optimizer(config.optimizer, total_steps=3, batch_size=32)
    model = method.build_model(config, 10, None)
    host_state = jax.device_get(jax.jit(lambda: train_step.create_train_state(
        method, model, config, tx, jax.random.PRNGKey(0)))())
    state = fsdp.shard_state(host_state, fsdp.state_shardings(host_state, fsdp.make_mesh()))
    total = sum(np.asarray(x).nbytes for x in jax.tree.leaves(host_state))
    whole = sum(np.asarray(x).nbytes for x in jax.tree.leaves(host_state)
                if fsdp.param_spec(np.shape(x), 8) == jax.sharding.PartitionSpec())
    assert fsdp.bytes_per_device(state) == whole + (total - whole) // 8
    assert fsdp.bytes_per_device(state) < 0.15 * total


def test_param_spec_splits_the_largest_divisible_dimension():
    P = jax.sharding.PartitionSpec
    assert fsdp.param_spec((3, 3, 4, 64), 8) == P(None, None, None, "fsdp")
    assert fsdp.param_spec((64, 512), 8) == P(None, "fsdp")
    assert fsdp.param_spec((12, 8), 8) == P(None, "fsdp")  # 12 is not divisible.
    assert fsdp.param_spec((6, 3), 8) == P() and fsdp.param_spec((), 8) == P()


def test_training_under_fsdp_equals_shard_map_and_resumes_exactly(tmp_path):
    """The whole loop: 4 CLIP steps with evaluations under fsdp end with the shard_map run's
    parameters and evaluation results; resumed from its step-2 checkpoint, the fsdp run ends
    where it ended uninterrupted."""
    config = lambda kind: image_text_config("clip", parallel=kind, total_steps=4,  # noqa: E731
                                            eval_every=0)
    runs = {kind: str(tmp_path / kind) for kind in ("shard_map", "fsdp")}
    results = {kind: train.train_and_evaluate(config(kind), workdir)
               for kind, workdir in runs.items()}
    assert results["fsdp"]["zeroshot_top1"] == results["shard_map"]["zeroshot_top1"]
    assert_trees_equal(final_params(runs["fsdp"])[1], final_params(runs["shard_map"])[1],
                       rtol=1e-4, atol=1e-6)
    resumed = shutil.copytree(runs["fsdp"], str(tmp_path / "resumed"))
    shutil.rmtree(os.path.join(resumed, "checkpoints", "4"))
    train.train_and_evaluate(config("fsdp"), resumed)
    assert final_params(resumed)[0] == 4
    assert_trees_equal(final_params(resumed)[1], final_params(runs["fsdp"])[1])


def test_fsdp_mesh_rows_and_a_size_that_does_not_divide_the_devices():
    mesh = fsdp.make_mesh(4)
    assert dict(mesh.shape) == {"data": 2, "fsdp": 4}
    assert list(mesh.devices.flat) == jax.devices()  # The batch lies as on parallel's mesh.
    config = config_checks.resolve_steps(image_text_config("clip", parallel="fsdp", fsdp_size=3), 64)
    with pytest.raises(ValueError, match="fsdp_size=3 does not divide the 8 devices"):
        train_step.validate(config)
