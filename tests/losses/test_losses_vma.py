"""Every loss inside a user's own `jax.shard_map`, with `check_vma` on (JAX's default) and off.

The project's wrappers run shard_map with `check_vma=False`; a user calling `losses.*` from
their own step gets the default, under which each value carries its device-variance type and a
custom VJP must return cotangents of its inputs' types. On 8 devices, for each loss and both
settings:

- the gradient of the global loss (the `pmean` of per-device losses, differentiated outside
  the shard_map) equals the unsharded loss's gradient on the concatenated batch;
- differentiated inside the shard_map, each device's gradient w.r.t. its own embeddings is D
  times the unsharded rows (every device's loss reaches them through the gather), and the
  gradient w.r.t. a replicated scale or bias, summed over the devices, is D times the unsharded
  one. With the check on JAX does that sum itself (an invariant input's cotangent is summed);
  with it off the step sums the per-device gradients.
"""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from contrastive_jax import losses, parallel

import test_losses_multidevice
from test_losses_multidevice import make_inputs, single_device

AXIS = parallel.AXIS
NUM_DEVICES, PER_DEVICE, DIM = 8, 2, 6
HELPERS = {"l2_normalize", "gather", "global_offset", "as_varying"}


def _swav(a, b, ax, **kwargs):
    return losses.swav_loss(a, b, 0.1, epsilon=0.3, axis_name=ax, **kwargs)


def _sinkhorn_readout(a, ax):
    """A per-row function of the codes (they carry no gradient; a's own factor does)."""
    return jnp.mean(jnp.sum(losses.sinkhorn_knopp(a, 0.3, axis_name=ax) * a, axis=-1))


# The sharded == unsharded table, and the losses it leaves out.
LOSSES = {
    **test_losses_multidevice.LOSSES,
    "negative_cosine": lambda a, b, s, y, ax: losses.negative_cosine(a, b),
    "byol_loss": lambda a, b, s, y, ax: losses.byol_loss(a, b),
    "dcl": lambda a, b, s, y, ax: losses.dcl(a, b, 0.5, axis_name=ax),
    "dcl:weighted": lambda a, b, s, y, ax: losses.dcl(a, b, 0.5, weight_sigma=0.5, axis_name=ax),
    "dcl:weighted_differentiated": lambda a, b, s, y, ax: losses.dcl(
        a, b, 0.5, weight_sigma=0.5, detach_weight=False, axis_name=ax),
    "sinkhorn_knopp": lambda a, b, s, y, ax: _sinkhorn_readout(a, ax),
    "swav_loss:multi_crop": lambda a, b, s, y, ax: _swav(a, b, ax, small_scores=(0.5 * a + 0.5 * b,)),
    "swav_loss:queue": lambda a, b, s, y, ax: _swav(
        a, b, ax, queue_scores=(jnp.tanh(b), jnp.tanh(a))),
}


def _in_users_shard_map(name, check_vma, a, b, shared, labels):
    """(outside: value and gradients of the global loss), (inside: per-device gradients)."""
    mesh = parallel.make_mesh(jax.devices()[:NUM_DEVICES])
    specs = (P(AXIS), P(AXIS), P(), P(AXIS))

    def global_loss(a, b, s, y):
        return jax.lax.pmean(LOSSES[name](a, b, s, y, AXIS), AXIS)

    def inside(a, b, s, y):
        loss_fn = lambda a, b, s: LOSSES[name](a, b, s, y, AXIS)  # noqa: E731
        loss, (ga, gb, gs) = jax.value_and_grad(loss_fn, argnums=(0, 1, 2))(a, b, s)
        gs = gs if check_vma else jax.lax.psum(gs, AXIS)
        return jax.lax.pmean(loss, AXIS), ga, gb, gs

    outside_fn = jax.value_and_grad(
        jax.shard_map(global_loss, mesh=mesh, in_specs=specs, out_specs=P(),
                      check_vma=check_vma), argnums=(0, 1, 2))
    inside_fn = jax.shard_map(inside, mesh=mesh, in_specs=specs,
                              out_specs=(P(), P(AXIS), P(AXIS), P()), check_vma=check_vma)
    both = jax.jit(lambda *args: (outside_fn(*args), inside_fn(*args)))
    return jax.tree.map(np.asarray, both(a, b, shared, labels))


def test_every_loss_of_the_module_is_covered():
    public = {name for name, fn in vars(losses).items()
              if inspect.isfunction(fn) and fn.__module__.startswith(f"{losses.__name__}.")
              and not name.startswith("_")}
    assert public - HELPERS == {name.split(":")[0] for name in LOSSES}


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_values_and_gradients_equal_unsharded_under_both_vma_settings(name):
    a, b, shared, labels = make_inputs(NUM_DEVICES, PER_DEVICE, dim=DIM)
    want_loss, want_grads = single_device(LOSSES[name], a, b, shared, labels)
    results = {}
    for check_vma in (True, False):
        (loss, grads), (inside_loss, ga, gb, gs) = _in_users_shard_map(
            name, check_vma, a, b, shared, labels)
        for got, want in [(loss, want_loss), (inside_loss, want_loss), *zip(grads, want_grads),
                          (ga / NUM_DEVICES, want_grads[0]), (gb / NUM_DEVICES, want_grads[1]),
                          (gs / NUM_DEVICES, want_grads[2])]:
            np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-6)
        results[check_vma] = (loss, *grads, ga, gb, gs)
    for on, off in zip(results[True], results[False]):
        np.testing.assert_allclose(on, off, rtol=1e-6, atol=1e-7)
    if name.startswith(("clip", "siglip")):  # The scale (and bias) gradients are checked.
        assert np.all(np.abs(want_grads[2][: 1 if name == "clip_loss" else 2]) > 1e-4)


@pytest.mark.parametrize("name,loss_fn", [
    ("nt_xent", lambda a, b, s, ax: losses.nt_xent(a, b, 0.5, axis_name=ax, with_metrics=True)),
    ("siglip_ring", lambda a, b, s, ax: losses.siglip_loss(
        a, b, s[0], s[1], axis_name=ax, impl="ring", with_metrics=True)),
])
def test_metrics_under_check_vma_equal_unsharded(name, loss_fn):
    a, b, shared, _ = make_inputs(NUM_DEVICES, PER_DEVICE, dim=DIM)
    b = a + 0.8 * b  # Some positives win, some lose.
    _, want = jax.jit(lambda a, b, s: loss_fn(a, b, s, None))(a, b, shared)
    mesh = parallel.make_mesh(jax.devices()[:NUM_DEVICES])
    per_device = lambda a, b, s: jax.lax.pmean(loss_fn(a, b, s, AXIS)[1], AXIS)  # noqa: E731
    got = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P(AXIS), P(AXIS), P()),
                                out_specs=P(), check_vma=True))(a, b, shared)
    assert 0.0 < want["contrastive_top1"] < 1.0, name
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-5, err_msg=key)
