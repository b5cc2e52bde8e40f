"""DCL and DCLW (Yeh et al. 2022) against a numpy reference written from the paper's formula;
on 8 simulated devices the pmean of the per-device loss and of its gradients equals the
single-device loss on the global batch; SimCLR's `loss.decoupled` picks them. (The opt-in
CIFAR-10 learning runs with DCL and DCLW are in test_learning.)"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from contrastive_jax import config_checks, losses, parallel, train_step
from contrastive_jax.methods import simclr

from support import tiny_config

AXIS = parallel.AXIS


def numpy_dcl(z1, z2, temperature, sigma=None):
    """1/(2N) sum over the 2N anchors i (positive j, the other view) of
    -w_i s_ij + log sum_{k not in (i, j)} exp(s_ik), s = cos / T, in float64 loops."""
    z1, z2 = np.float64(z1), np.float64(z2)
    z = np.concatenate([z1, z2])
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    n = len(z1)
    s = z @ z.T / temperature
    weights = np.ones(n)
    if sigma is not None:
        agreement = np.exp(np.sum(z[:n] * z[n:], axis=1) / sigma)
        weights = 2 - agreement / agreement.mean()
    total = 0.0
    for i in range(2 * n):
        j = (i + n) % (2 * n)
        negatives = [k for k in range(2 * n) if k not in (i, j)]
        total += -weights[i % n] * s[i, j] + np.log(np.sum(np.exp(s[i, negatives])))
    return total / (2 * n)


def embeddings(n, dim=6, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, dim)).astype(np.float32),
            rng.normal(size=(n, dim)).astype(np.float32))


@pytest.mark.parametrize("sigma", [None, 0.5])
def test_dcl_matches_numpy(sigma):
    z1, z2 = embeddings(7)
    z2[:3] += 2 * z1[:3]  # Some pairs agree, so DCLW's weights differ from 1.
    got = jax.jit(lambda a, b: losses.dcl(a, b, 0.3, weight_sigma=sigma))(z1, z2)
    np.testing.assert_allclose(got, numpy_dcl(z1, z2, 0.3, sigma), rtol=1e-5)


def _dcl_with_fixed_weights(z1, z2, temperature, weights):
    """The paper's DCL terms in jnp with given positive weights (constants to autodiff)."""
    z = jnp.concatenate([z1, z2])
    z = z / jnp.linalg.norm(z, axis=1, keepdims=True)
    n = z1.shape[0]
    s = z @ z.T / temperature
    partner = (jnp.arange(2 * n) + n) % (2 * n)
    excluded = (jnp.eye(2 * n, dtype=bool)
                | (jnp.arange(2 * n)[None, :] == partner[:, None]))
    negative = jax.nn.logsumexp(jnp.where(excluded, -jnp.inf, s), axis=1)
    positive = s[jnp.arange(2 * n), partner] * jnp.concatenate([weights, weights])
    return jnp.mean(negative - positive)


def test_dclw_weight_is_detached_by_default_and_differentiated_on_request():
    """Detached: the gradient is DCL's with the weights held fixed at their values (taken from
    the numpy reference); differentiated: the weights' own gradient adds to it."""
    z1, z2 = embeddings(7, seed=3)
    z2[:3] += 2 * z1[:3]
    agreement = np.exp(np.sum(z1 / np.linalg.norm(z1, axis=1, keepdims=True)
                              * z2 / np.linalg.norm(z2, axis=1, keepdims=True), axis=1) / 0.5)
    weights = np.float32(2 - agreement / agreement.mean())
    want = jax.grad(_dcl_with_fixed_weights, argnums=(0, 1))(z1, z2, 0.3, weights)
    grads = {detach: jax.grad(lambda a, b: losses.dcl(a, b, 0.3, weight_sigma=0.5,
                                                      detach_weight=detach), argnums=(0, 1))(z1, z2)
             for detach in (True, False)}
    for got, expected in zip(grads[True], want):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert np.abs(np.asarray(grads[False][0]) - np.asarray(want[0])).max() > 1e-3
    config = tiny_config(**{"loss.decoupled": "dclw", "loss.dclw_sigma": 0.5,
                            "loss.temperature": 0.3})
    assert config.loss.dclw_detach_weight
    via_config = jax.grad(lambda a: simclr.contrastive_loss(config, None)(a, z2, None)[0])(z1)
    np.testing.assert_allclose(via_config, want[0], rtol=1e-5, atol=1e-6)


def test_dcl_metrics_are_nt_xents():
    z1, z2 = embeddings(8)
    _, metrics = jax.jit(lambda a, b: losses.dcl(a, b, 0.5, with_metrics=True))(z1, z2)
    _, want = jax.jit(lambda a, b: losses.nt_xent(a, b, 0.5, with_metrics=True))(z1, z2)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), metrics, want)


@pytest.mark.parametrize("kind", parallel.KINDS)
def test_sharded_dclw_and_gradients_equal_single_device(kind):
    """8 devices x 3 examples: the mean of the per-device losses and the pmean of the
    per-device gradients (which the train step takes) equal the single-device ones. DCLW, whose
    weights need the global batch, covers DCL's terms too."""
    num_devices, per_device = 8, 3
    z1, z2 = embeddings(num_devices * per_device, seed=1)
    loss_fn = lambda a, b, axis: losses.dcl(a, b, 0.4, weight_sigma=0.5, axis_name=axis)
    want_loss, want_grads = jax.jit(jax.value_and_grad(lambda a, b: loss_fn(a, b, None),
                                                       argnums=(0, 1)))(z1, z2)
    mesh = parallel.make_mesh(jax.devices()[:num_devices])

    def per_device_fn(a, b):
        loss, (ga, gb) = jax.value_and_grad(lambda a, b: loss_fn(a, b, AXIS),
                                            argnums=(0, 1))(a, b)
        return loss[None], ga / num_devices, gb / num_devices

    fn = parallel.wrap(per_device_fn, kind, mesh, in_specs=(P(AXIS), P(AXIS)),
                       out_specs=(P(AXIS), P(AXIS), P(AXIS)))
    split = lambda x: parallel.host_batch_to_devices(x, kind, mesh)
    loss, ga, gb = (np.asarray(x) for x in fn(split(z1), split(z2)))
    assert loss.size == num_devices
    np.testing.assert_allclose(loss.mean(), want_loss, rtol=1e-5)
    np.testing.assert_allclose(ga.reshape(z1.shape), want_grads[0], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(gb.reshape(z2.shape), want_grads[1], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("decoupled,sigma", [("dcl", None), ("dclw", 0.7)])
def test_simclr_loss_decoupled_picks_dcl(decoupled, sigma):
    config = tiny_config(**{"loss.decoupled": decoupled, "loss.dclw_sigma": 0.7,
                            "loss.temperature": 0.3})
    z1, z2 = embeddings(6, seed=2)
    loss, _ = jax.jit(lambda a, b: simclr.contrastive_loss(config, None)(a, b, None))(z1, z2)
    np.testing.assert_allclose(loss, numpy_dcl(z1, z2, 0.3, sigma), rtol=1e-5)


@pytest.mark.parametrize("field,value", [("decoupled", "dcw"), ("dclw_sigma", 0.0)])
def test_bad_decoupled_settings_are_refused(field, value):
    config = config_checks.resolve_steps(tiny_config(**{"loss.decoupled": "dclw",
                                                f"loss.{field}": value}), 64)
    with pytest.raises(ValueError, match=f"config.loss.{field}"):
        train_step.validate(config)
