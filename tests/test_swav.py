"""SwAV: Sinkhorn-Knopp codes and the swapped-prediction loss against numpy, the same codes,
loss and gradients on 8 devices as on one, frozen and unit prototypes in the step, the encoder's
features for evaluation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from contrastive_jax import losses, methods, optim, parallel, train
from contrastive_jax.methods import swav

from test_train import tiny_config

AXIS = parallel.AXIS


def numpy_sinkhorn(scores, epsilon, iterations):
    """The reference's loop in float64: Q = exp(scores / eps)^T [K, B] made a joint
    distribution, then prototype rows and sample columns normalised in turn to 1/K and 1/B."""
    q = np.exp(np.float64(scores) / epsilon).T
    q /= q.sum()
    num_prototypes, num_rows = q.shape
    for _ in range(iterations):
        q /= q.sum(axis=1, keepdims=True) * num_prototypes
        q /= q.sum(axis=0, keepdims=True) * num_rows
    return (q * num_rows).T


def numpy_swav_loss(scores1, scores2, temperature, epsilon, iterations):
    def log_softmax(x):
        x = np.float64(x) / temperature
        return x - np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
            - x.max(-1, keepdims=True)
    q1, q2 = (numpy_sinkhorn(s, epsilon, iterations) for s in (scores1, scores2))
    return -0.5 * (np.mean(np.sum(q1 * log_softmax(scores2), -1))
                   + np.mean(np.sum(q2 * log_softmax(scores1), -1)))


def cosine_scores(rng, n, k, d=6):
    z = rng.normal(size=(n, d))
    c = rng.normal(size=(k, d))
    return (z / np.linalg.norm(z, axis=1, keepdims=True)
            @ (c / np.linalg.norm(c, axis=1, keepdims=True)).T).astype(np.float32)


def test_sinkhorn_and_the_loss_equal_numpy():
    rng = np.random.default_rng(0)
    scores1, scores2 = cosine_scores(rng, 16, 5), cosine_scores(rng, 16, 5)
    codes = np.asarray(losses.sinkhorn_knopp(scores1, 0.05, 3))
    np.testing.assert_allclose(codes, numpy_sinkhorn(scores1, 0.05, 3), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(codes.sum(axis=1), 1.0, rtol=1e-5)
    # Many iterations reach the equal partition: every prototype gets B / K of the mass.
    balanced = np.asarray(losses.sinkhorn_knopp(scores1, 0.05, 200))
    np.testing.assert_allclose(balanced.sum(axis=0), 16 / 5, rtol=1e-3)
    loss = float(losses.swav_loss(scores1, scores2, 0.1, epsilon=0.05, iterations=3))
    assert loss == pytest.approx(numpy_swav_loss(scores1, scores2, 0.1, 0.05, 3), rel=1e-5)


@pytest.mark.parametrize("kind", parallel.KINDS)
def test_codes_loss_and_gradients_over_8_devices_equal_one_device(kind):
    """8 devices x 3 rows: the codes are those of the global batch (its sums span devices);
    the pmean of the per-device losses is the global loss and each device's gradient / 8 is
    its rows of the global gradient."""
    rng = np.random.default_rng(1)
    scores1, scores2 = cosine_scores(rng, 24, 4), cosine_scores(rng, 24, 4)
    loss_of = lambda axis: (  # noqa: E731
        lambda a, b: losses.swav_loss(a, b, 0.1, epsilon=0.05, iterations=3, axis_name=axis))
    want_loss, want_grads = jax.value_and_grad(loss_of(None), argnums=(0, 1))(scores1, scores2)
    want_codes = losses.sinkhorn_knopp(scores1, 0.05, 3)

    def per_device(a, b):
        loss, grads = jax.value_and_grad(loss_of(AXIS), argnums=(0, 1))(a, b)
        codes = losses.sinkhorn_knopp(a, 0.05, 3, axis_name=AXIS)
        return jax.lax.pmean(loss, AXIS), jax.tree.map(lambda g: g / 8, grads), codes

    mesh = parallel.make_mesh()
    if kind == "pmap":
        loss, grads, codes = jax.pmap(per_device, axis_name=AXIS)(
            scores1.reshape(8, 3, 4), scores2.reshape(8, 3, 4))
        loss, grads, codes = loss[0], jax.tree.map(lambda g: g.reshape(24, 4), grads), \
            codes.reshape(24, 4)
    else:
        loss, grads, codes = jax.jit(jax.shard_map(
            per_device, mesh=mesh, in_specs=(P(AXIS), P(AXIS)),
            out_specs=(P(), P(AXIS), P(AXIS)), check_vma=False))(scores1, scores2)
    assert float(loss) == pytest.approx(float(want_loss), rel=1e-6)
    np.testing.assert_allclose(codes, want_codes, rtol=1e-5, atol=1e-7)
    for got, want in zip(grads, want_grads):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-7)


def _state_and_gradients(config, steps):
    """A fresh state, and the gradient of the loss at each of `steps` (one compilation)."""
    method = methods.get("swav")
    model = method.build_model(config, 10, None)
    tx, _ = optim.make_optimizer(config.optimizer, total_steps=config.total_steps,
                                 batch_size=config.batch_size)
    state = jax.jit(lambda: train.create_train_state(method, model, config, tx,
                                                     jax.random.PRNGKey(0)))()
    rng = np.random.default_rng(0)
    batch = {"view1": rng.random((8, 16, 16, 3), np.float32),
             "view2": rng.random((8, 16, 16, 3), np.float32),
             "label": rng.integers(0, 10, 8).astype(np.int32)}
    grad_at = jax.jit(jax.grad(lambda params, state: method.loss_fn(
        model, config, params, state, batch, None, None)[0]))
    return state, [grad_at(state.params, state.replace(step=jnp.asarray(step, jnp.int32)))
                   for step in steps]


def test_prototypes_get_no_gradient_while_frozen_and_stay_unit_after_a_step():
    config = train.resolve_steps(tiny_config("swav", **{
        "loss.num_prototypes": 12, "loss.freeze_prototypes_steps": 3}), 64)
    state, (frozen, thawed) = _state_and_gradients(config, (2, 3))
    assert float(jnp.abs(frozen["prototypes"]).max()) == 0.0
    assert float(jnp.abs(thawed["prototypes"]).max()) > 0.0
    assert float(jnp.abs(frozen["encoder"]["stem_conv"]["kernel"]).max()) > 0.0
    features = swav.encoder_features(swav.build_model(config, 10, None))(
        {"params": state.params, "batch_stats": state.batch_stats}, np.zeros((2, 16, 16, 3)))
    assert features.shape == (2, 32)  # The pooled encoder features, not the projections.
    moved = state.params | {"prototypes": state.params["prototypes"] + thawed["prototypes"]}
    renormalised = swav.after_update(config, state.replace(params=moved))
    np.testing.assert_allclose(jnp.linalg.norm(renormalised.params["prototypes"], axis=1), 1.0,
                               rtol=1e-6)


def test_bad_sinkhorn_settings_are_refused():
    for key, value, message in (("loss.sinkhorn_epsilon", 0.0, "sinkhorn_epsilon must be > 0"),
                                ("loss.num_prototypes", 0, "num_prototypes must be >= 1")):
        config = train.resolve_steps(tiny_config("swav", **{key: value}), 64)
        with pytest.raises(ValueError, match=message):
            train.validate(config)
