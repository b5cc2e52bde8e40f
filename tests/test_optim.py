"""LARS against a hand-computed update; schedules; scaling rules; SimCLR's parameter masks."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from contrastive_jax import config_defaults, optim
from contrastive_jax.models import resnet


def opt_config(**overrides):
    config = ml_collections.ConfigDict(config_defaults.base().optimizer.to_dict())
    config.update(lr_scaling="none", warmup_steps=0, schedule="constant", **overrides)
    return config


def test_lars_two_steps_equal_a_hand_computed_update():
    rng = np.random.default_rng(0)
    params = {"conv": {"kernel": rng.normal(size=(3, 3, 2, 4))},
              "bn": {"scale": rng.normal(size=4), "bias": rng.normal(size=4)}}
    grads = [jax.tree.map(lambda p: rng.normal(size=p.shape), params) for _ in range(2)]
    lr, wd, momentum, eta = 0.5, 0.1, 0.9, 0.001
    tx, _ = optim.make_optimizer(opt_config(name="lars", learning_rate=lr, weight_decay=wd,
                                            momentum=momentum), total_steps=10, batch_size=256)
    state = tx.init(params)
    got = jax.tree.map(jnp.asarray, params)
    for g in grads:
        updates, state = tx.update(jax.tree.map(jnp.asarray, g), state, got)
        got = jax.tree.map(lambda p, u: p + u, got, updates)

    want = jax.tree.map(np.copy, params)
    velocity = jax.tree.map(np.zeros_like, params)
    for g in grads:
        w, v = want["conv"]["kernel"], velocity["conv"]["kernel"]
        u = g["conv"]["kernel"] + wd * w
        trust = eta * np.linalg.norm(w) / np.linalg.norm(u)
        velocity["conv"]["kernel"] = momentum * v + lr * trust * u
        want["conv"]["kernel"] = w - velocity["conv"]["kernel"]
        for name in ("scale", "bias"):  # masked: no decay, no trust ratio
            velocity["bn"][name] = momentum * velocity["bn"][name] + lr * g["bn"][name]
            want["bn"][name] = want["bn"][name] - velocity["bn"][name]
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), got, want)


def test_warmup_cosine_schedule_values():
    schedule = optim.learning_rate_schedule(2.0, total_steps=110, warmup_steps=10)
    assert float(schedule(0)) == 0.0
    np.testing.assert_allclose(schedule(5), 1.0, rtol=1e-6)
    np.testing.assert_allclose(schedule(10), 2.0, rtol=1e-6)
    np.testing.assert_allclose(schedule(60), 1.0, rtol=1e-5)
    np.testing.assert_allclose(schedule(110), 0.0, atol=1e-6)


def test_learning_rate_scaling_rules():
    assert optim.scale_learning_rate(0.3, 4096, "linear") == pytest.approx(4.8)
    assert optim.scale_learning_rate(0.075, 4096, "sqrt") == pytest.approx(4.8)
    assert optim.scale_learning_rate(0.3, 4096, "none") == 0.3
    with pytest.raises(ValueError, match="lr_scaling"):
        optim.scale_learning_rate(0.3, 256, "cubic")


def test_unknown_optimizer_and_schedule_are_refused():
    with pytest.raises(ValueError, match="optimizer"):
        optim.make_optimizer(opt_config(name="adagrad"), total_steps=10, batch_size=256)
    with pytest.raises(ValueError, match="schedule"):
        optim.learning_rate_schedule(1.0, total_steps=10, warmup_steps=1, schedule="step")


def test_mask_covers_kernels_not_biases_or_batchnorm():
    model = resnet.resnet("resnet18", num_classes=10)
    params = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False),
                            jnp.zeros((1, 32, 32, 3)))["params"]
    mask = optim.weight_decay_mask(params)
    for path, value in jax.tree_util.tree_leaves_with_path(mask):
        name = jax.tree_util.keystr(path)
        assert value == name.endswith("['kernel']"), name


def test_adamw_decays_kernels_but_not_biases():
    tx, _ = optim.make_optimizer(opt_config(name="adamw", learning_rate=0.1, weight_decay=0.5),
                                 total_steps=10, batch_size=256)
    params = {"kernel": jnp.ones((2, 2)), "bias": jnp.ones((2,))}
    zero = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zero, tx.init(params), params)
    np.testing.assert_allclose(updates["kernel"], -0.1 * 0.5 * np.ones((2, 2)), rtol=1e-6)
    np.testing.assert_allclose(updates["bias"], 0.0)


@pytest.mark.parametrize("mode", ["lr_scaled", "decoupled"])
def test_adamw_weight_decay_modes_equal_a_hand_computed_step(mode):
    """Step 1 of 4 (no warmup; cosine multiplier s below 1): Adam's bias-corrected direction
    times lr(t) = peak * s, plus the kernel's decay, peak * s * wd * w (optax.adamw) or
    s * wd * w (big_vision); biases are never decayed."""
    peak, wd = 1e-3, 0.1
    config = opt_config(name="adamw", learning_rate=peak, weight_decay=wd,
                        weight_decay_mode=mode, b1=0.9, b2=0.95, eps=1e-8)
    config.schedule = "cosine"
    tx, schedule = optim.make_optimizer(config, total_steps=4, batch_size=256)
    params = {"kernel": jnp.array([[1.0, -2.0], [0.5, 3.0]]), "bias": jnp.array([1.0, -1.0])}
    grads = {"kernel": jnp.array([[0.2, -0.1], [0.0, 0.3]]), "bias": jnp.array([0.5, 0.25])}
    state = tx.init(params)
    _, state = tx.update(jax.tree.map(jnp.zeros_like, grads), state, params)  # Step 0.
    updates, _ = tx.update(grads, state, params)  # Step 1: the moments hold 0 and g.
    s = float(schedule(1)) / peak
    assert 0.5 < s < 1.0
    for name, p in params.items():
        g = np.asarray(grads[name], np.float64)
        m_hat = 0.1 * g / (1 - 0.9 ** 2)
        v_hat = 0.05 * g * g / (1 - 0.95 ** 2)
        want = -peak * s * m_hat / (np.sqrt(v_hat) + 1e-8)
        if name == "kernel":
            decay = peak * s * wd if mode == "lr_scaled" else s * wd
            want = want - decay * np.asarray(p)
        np.testing.assert_allclose(updates[name], want, rtol=1e-5, atol=1e-9)


def test_decoupled_weight_decay_is_adamw_only():
    with pytest.raises(ValueError, match="'decoupled' is AdamW's"):
        optim.make_optimizer(opt_config(name="lars", weight_decay_mode="decoupled"),
                             total_steps=4, batch_size=256)
