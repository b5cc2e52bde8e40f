"""Sharded == unsharded: every loss on D simulated devices, under pmap and jit + shard_map.

Each device computes its anchors' loss against candidates gathered from all devices. The mean
of the per-device losses must equal the single-device loss on the concatenated batch; the
per-device gradients w.r.t. the local embeddings, scaled by 1/D as a gradient `pmean` scales
them, must equal the corresponding rows of the single-device gradient; and the `pmean` of the
gradients w.r.t. shared parameters (scale, bias, a projection) must equal theirs.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from contrastive_jax import losses, parallel

AXIS = parallel.AXIS

# "function[:variant]": loss(a, b, shared [scale, bias], labels, axis_name) -> this device's loss
LOSSES = {
    "nt_xent": lambda a, b, s, y, ax: losses.nt_xent(a, b, 0.5, axis_name=ax),
    "supcon": lambda a, b, s, y, ax: losses.supcon(a, b, y, 0.3, axis_name=ax),
    "info_nce": lambda a, b, s, y, ax: losses.info_nce(a, b, 0.2, axis_name=ax),
    "info_nce:queue": lambda a, b, s, y, ax: losses.info_nce(
        a, b, 0.2, negatives=jnp.linspace(-1, 1, 5 * a.shape[1]).reshape(5, -1), axis_name=ax),
    "clip_loss": lambda a, b, s, y, ax: losses.clip_loss(a, b, s[0], axis_name=ax),
    "siglip_loss:all_gather": lambda a, b, s, y, ax: losses.siglip_loss(
        a, b, s[0], s[1], axis_name=ax, impl="all_gather"),
    "siglip_loss:ring": lambda a, b, s, y, ax: losses.siglip_loss(
        a, b, s[0], s[1], axis_name=ax, impl="ring"),
    "n_pair_loss": lambda a, b, s, y, ax: losses.n_pair_loss(a, b, axis_name=ax),
    "margin_contrastive_loss": lambda a, b, s, y, ax: losses.margin_contrastive_loss(
        a, b, y % 2, 2.0),
    "triplet_loss": lambda a, b, s, y, ax: losses.triplet_loss(a, b, a - 0.5 * b, 1.0),
}

SHAPES = [(1, 5), (2, 3), (8, 1), (8, 4)]  # (devices, per-device batch)


def make_inputs(num_devices, per_device, dim=6, seed=0):
    rng = np.random.default_rng(seed)
    n = num_devices * per_device
    a = rng.normal(size=(n, dim)).astype(np.float32)
    b = rng.normal(size=(n, dim)).astype(np.float32)
    labels = rng.integers(0, 3, size=n).astype(np.int32)
    shared = np.array([4.0, -1.5], np.float32)
    return a, b, shared, labels


def single_device(loss, a, b, shared, labels):
    """The value and gradients (a, b, shared) of `loss` (a LOSSES entry) on one device."""
    loss_fn = lambda a, b, s: loss(a, b, s, jnp.asarray(labels), None)
    return jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1, 2)))(a, b, shared)


def sharded(name, kind, num_devices, a, b, shared, labels):
    mesh = parallel.make_mesh(jax.devices()[:num_devices])

    def per_device(a, b, s, y):
        loss_fn = lambda a, b, s: LOSSES[name](a, b, s, y, AXIS)
        loss, (ga, gb, gs) = jax.value_and_grad(loss_fn, argnums=(0, 1, 2))(a, b, s)
        return loss[None], ga, gb, jax.lax.pmean(gs, AXIS)

    fn = parallel.wrap(per_device, kind, mesh, in_specs=(P(AXIS), P(AXIS), P(), P(AXIS)),
                       out_specs=(P(AXIS), P(AXIS), P(AXIS), P()))
    split = lambda x: parallel.host_batch_to_devices(x, kind, mesh)
    loss, ga, gb, gs = fn(split(a), split(b), parallel.replicate(shared, kind, mesh),
                          split(labels))
    loss, ga, gb = (np.asarray(x).reshape(-1, *x.shape[2:]) if kind == "pmap" else np.asarray(x)
                    for x in (loss, ga, gb))
    return loss, ga.reshape(a.shape), gb.reshape(b.shape), parallel.unreplicate(gs, kind)


@pytest.mark.parametrize("kind", parallel.KINDS)
@pytest.mark.parametrize("num_devices,per_device", SHAPES)
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_sharded_loss_and_gradients_equal_single_device(name, kind, num_devices, per_device):
    a, b, shared, labels = make_inputs(num_devices, per_device)
    want_loss, (want_ga, want_gb, want_gs) = single_device(LOSSES[name], a, b, shared, labels)
    loss, ga, gb, gs = sharded(name, kind, num_devices, a, b, shared, labels)
    assert loss.shape == (num_devices,)
    np.testing.assert_allclose(loss.mean(), want_loss, rtol=2e-6, atol=1e-6)
    np.testing.assert_allclose(ga / num_devices, want_ga, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gb / num_devices, want_gb, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gs, want_gs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", parallel.KINDS)
def test_pmean_of_projection_gradients_equals_single_device(kind):
    """The training identity: a shared projection W, pmean-ed gradients == global gradients."""
    num_devices, per_device = 8, 2
    a, b, _, _ = make_inputs(num_devices, per_device, dim=4)
    w = np.random.default_rng(1).normal(size=(4, 3)).astype(np.float32)
    loss_fn = lambda w, a, b, ax: losses.nt_xent(a @ w, b @ w, 0.2, axis_name=ax)
    want_loss, want_grad = jax.value_and_grad(loss_fn)(w, a, b, None)
    mesh = parallel.make_mesh(jax.devices()[:num_devices])

    def per_device_step(w, a, b):
        loss, grad = jax.value_and_grad(loss_fn)(w, a, b, AXIS)
        return jax.lax.pmean(loss, AXIS), jax.lax.pmean(grad, AXIS)

    fn = parallel.wrap(per_device_step, kind, mesh, in_specs=(P(), P(AXIS), P(AXIS)),
                       out_specs=(P(), P()))
    loss, grad = parallel.unreplicate(
        fn(parallel.replicate(w, kind, mesh), parallel.host_batch_to_devices(a, kind, mesh),
           parallel.host_batch_to_devices(b, kind, mesh)), kind)
    np.testing.assert_allclose(loss, want_loss, rtol=2e-6)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("kind", parallel.KINDS)
def test_metrics_over_global_candidates_equal_single_device(kind):
    num_devices, per_device = 8, 3
    a, b, _, _ = make_inputs(num_devices, per_device)
    b = a + 0.8 * b  # some positives win, some lose
    _, want = losses.nt_xent(a, b, 0.5, with_metrics=True)
    mesh = parallel.make_mesh(jax.devices()[:num_devices])

    def per_device(a, b):
        _, metrics = losses.nt_xent(a, b, 0.5, axis_name=AXIS, with_metrics=True)
        return jax.lax.pmean(metrics, AXIS)

    fn = parallel.wrap(per_device, kind, mesh, in_specs=(P(AXIS), P(AXIS)), out_specs=P())
    got = parallel.unreplicate(fn(parallel.host_batch_to_devices(a, kind, mesh),
                                  parallel.host_batch_to_devices(b, kind, mesh)), kind)
    assert 0.0 < want["contrastive_top1"] < 1.0
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-5)


def test_indivisible_global_batch_is_refused():
    with pytest.raises(ValueError, match="does not divide over 8 devices"):
        parallel.per_device_batch_size(12, 8)
    with pytest.raises(ValueError, match="parallel must be one of"):
        parallel.wrap(lambda x: x, "pjit", parallel.make_mesh(), P(), P())


@pytest.mark.parametrize("gradients", ["all", "embeddings"])
def test_siglip_ring_scratch_is_under_a_third_of_all_gathers(gradients):
    """XLA's buffer assignment for loss + gradients on 8 devices, n = 256 per device: the ring
    never holds the n x N logits, so its scratch stays far below all_gather's."""
    from contrastive_jax.bench import loss_memory

    mesh = parallel.make_mesh()
    temp = {impl: loss_memory.compiled_loss_and_grad(
        impl, 256, 64, mesh, jnp.float32, gradients).memory_analysis().temp_size_in_bytes
        for impl in ("all_gather", "ring")}
    assert temp["ring"] <= temp["all_gather"] / 3, temp
    assert temp["ring"] < 4 * 256 * 256 * 4, temp  # Under four n x n float32 blocks.
