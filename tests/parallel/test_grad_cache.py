"""Gradient caching against one pass: the same loss and gradients over 8 devices for
LayerNorm towers (CLIP, SigLIP's ring), and the SimCLR parts equal its one-pass loss."""

import jax
import numpy as np
import optax
import pytest

from contrastive_jax import config_checks, methods, parallel, train_step
from contrastive_jax.parallel import grad_cache
from contrastive_jax.methods import simclr

from support import assert_trees_equal, image_text_config, tiny_config

def _one_step(config, batch):
    """One training step of `make_train_step` (SGD at lr 1, 8 devices, shard_map): the loss
    and the change of every parameter, i.e. minus the gradient."""
    method, kind, mesh = methods.get(config.method), "shard_map", parallel.make_mesh()
    model = method.build_model(config, 10, parallel.AXIS)
    tx = optax.sgd(1.0)
    state = jax.device_get(jax.jit(lambda: train_step.create_train_state(
        method, model, config, tx, jax.random.PRNGKey(0)))())
    step = parallel.wrap_step(train_step.make_train_step(method, model, config, tx, lambda s: 1.0),
                              kind, mesh)
    new_state, metrics = step(parallel.replicate(state, kind, mesh),
                              parallel.host_batch_to_devices(batch, kind, mesh),
                              parallel.replicate(jax.random.PRNGKey(1), kind, mesh))
    new_params = parallel.unreplicate(new_state.params, kind)
    change = jax.tree.map(lambda new, old: np.float64(new) - np.float64(old), new_params,
                          state.params)
    return float(parallel.unreplicate(metrics, kind)["loss"]), change


@pytest.mark.parametrize("method,overrides", [
    ("clip", {}),
    ("siglip", {"loss.siglip_impl": "ring", "loss.init_bias": -2.0}),
])
def test_cached_gradients_equal_one_pass_for_layernorm_towers(method, overrides):
    """32 pairs over 8 devices, 4 per device in 4 chunks of 1: the training step's loss and
    update of every parameter equal those of one pass."""
    rng = np.random.default_rng(0)
    batch = {"image": rng.random((32, 16, 16, 3), np.float32),
             "text": rng.integers(1, 259, (32, 24)).astype(np.int32)}
    results = {chunks: _one_step(image_text_config(method, batch_size=32,
                                                   grad_cache_chunks=chunks, **overrides), batch)
               for chunks in (1, 4)}
    largest = max(float(np.abs(g).max()) for g in jax.tree.leaves(results[1][1]))
    assert largest > 0
    assert results[4][0] == pytest.approx(results[1][0], rel=1e-6)
    assert_trees_equal(results[4][1], results[1][1], rtol=1e-4, atol=1e-5 * largest)


def test_simclr_parts_in_one_chunk_equal_the_loss_function():
    """One chunk runs embed / loss-on-embeddings / pull-back: with BatchNorm and the online
    probe, the gradient equals jax.grad of the one-pass loss."""
    config = config_checks.resolve_steps(tiny_config("simclr", **{"loss.multiplier": 2.0}), 64)
    model = simclr.METHOD.build_model(config, 10, None)
    variables = simclr.METHOD.init_variables(model, config, jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    batch = {"view1": rng.random((6, 16, 16, 3), np.float32),
             "view2": rng.random((6, 16, 16, 3), np.float32),
             "label": rng.integers(0, 10, 6).astype(np.int32)}
    state = train_step.TrainState(step=0, params=variables["params"],
                             batch_stats=variables["batch_stats"], opt_state=(), extra={})
    (want_loss, (want_changes, _)), want_grads = jax.jit(jax.value_and_grad(
        lambda p: simclr.loss_fn(model, config, p, state, batch, None, None),
        has_aux=True))(variables["params"])
    (loss, (changes, _)), grads = jax.jit(lambda p: grad_cache.value_and_grad(
        simclr.loss_parts(model, config, None), p, variables["batch_stats"], batch, 1))(
            variables["params"])
    assert float(loss) == pytest.approx(float(want_loss), rel=1e-6)
    largest = max(float(np.abs(g).max()) for g in jax.tree.leaves(want_grads))
    assert_trees_equal(grads, want_grads, rtol=1e-4, atol=1e-5 * largest)
    assert_trees_equal(changes, want_changes, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("method,chunks,message", [
    ("moco", 2, "has no loss over embeddings"),
    ("simclr", 3, "does not divide the per-device batch"),
    ("simclr", 0, "must be >= 1"),
])
def test_bad_grad_cache_chunks_are_refused(method, chunks, message):
    config = config_checks.resolve_steps(tiny_config(method, batch_size=32, grad_cache_chunks=chunks),
                                 64)
    with pytest.raises(ValueError, match=message):
        train_step.validate(config)
