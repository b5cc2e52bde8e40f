"""LARS against a hand-computed update; schedules; scaling rules; SimCLR's parameter masks."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from contrastive_jax import config_defaults, optim
from contrastive_jax.models import resnet, vit


def opt_config(**overrides):
    config = ml_collections.ConfigDict(config_defaults.base().optimizer.to_dict())
    config.update(lr_scaling="none", warmup_steps=0, schedule="constant", **overrides)
    return config


def flat(tree) -> dict:
    """{"['a']['b']": leaf}: a tree's leaves by path."""
    return {jax.tree_util.keystr(path): leaf
            for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


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


@pytest.mark.parametrize("scan_layers", [False, True])
def test_mask_decays_vit_kernels_and_embeddings_not_biases_or_norms(scan_layers):
    """A ViT's attention biases are [heads, head_dim], and scanned blocks stack every leaf on a
    layer axis (norm scales [depth, width]): the mask goes by name as well as rank."""
    model = vit.vit("mu/4", depth=2, scan_layers=scan_layers)
    params = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False),
                            jnp.zeros((1, 8, 8, 3)))["params"]
    names = flat(params)
    assert any(name.endswith("['query']['bias']") and leaf.ndim >= 2
               for name, leaf in names.items())
    decayed = ("['kernel']", "['pos_embedding']", "['cls_token']")
    for name, value in flat(optim.weight_decay_mask(params)).items():
        assert value == name.endswith(decayed), name


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
    """Step 1 of 4 (no warmup; cosine multiplier s = (1 + cos(pi / 4)) / 2): Adam's
    bias-corrected direction times lr(t) = peak * s, plus the kernel's decay, peak * s * wd * w
    (optax.adamw) or s * wd * w (big_vision); biases (1-D, or 2-D as attention's) and scalars are
    never decayed."""
    peak, wd = 1e-3, 0.1
    config = opt_config(name="adamw", learning_rate=peak, weight_decay=wd,
                        weight_decay_mode=mode, b1=0.9, b2=0.95, eps=1e-8)
    config.schedule = "cosine"
    tx, _ = optim.make_optimizer(config, total_steps=4, batch_size=256)
    params = {"kernel": jnp.array([[1.0, -2.0], [0.5, 3.0]]), "bias": jnp.array([1.0, -1.0]),
              "query": {"bias": jnp.array([[2.0, -3.0]])}, "log_scale": jnp.array(2.3)}
    grads = {"kernel": jnp.array([[0.2, -0.1], [0.0, 0.3]]), "bias": jnp.array([0.5, 0.25]),
             "query": {"bias": jnp.array([[-0.4, 0.1]])}, "log_scale": jnp.array(0.7)}
    state = tx.init(params)
    _, state = tx.update(jax.tree.map(jnp.zeros_like, grads), state, params)  # Step 0.
    updates, _ = tx.update(grads, state, params)  # Step 1: the moments hold 0 and g.
    s = (1 + np.cos(np.pi / 4)) / 2
    decay = peak * s * wd if mode == "lr_scaled" else s * wd
    grads, updates = flat(grads), flat(updates)
    for name, p in flat(params).items():
        g = np.asarray(grads[name], np.float64)
        m_hat = 0.1 * g / (1 - 0.9 ** 2)
        v_hat = 0.05 * g * g / (1 - 0.95 ** 2)
        want = -peak * s * m_hat / (np.sqrt(v_hat) + 1e-8)
        if name == "['kernel']":
            want = want - decay * np.asarray(p)
        np.testing.assert_allclose(updates[name], want, rtol=1e-5, atol=1e-9, err_msg=name)


def test_decoupled_weight_decay_is_adamw_only():
    with pytest.raises(ValueError, match="'decoupled' is AdamW's"):
        optim.make_optimizer(opt_config(name="lars", weight_decay_mode="decoupled"),
                             total_steps=4, batch_size=256)


def _numpy_lars(params, grads, lr, wd, momentum, eta, exclude, clip):
    """LARS written out: decay and adapt the leaves a mask selects (kernels only with
    `exclude`, else all); with `clip` the adapted rate is min(trust ratio, lr) (LARC's clip);
    velocity = momentum * velocity + rate * u. Returns the parameters and whether clipping
    ever bound."""
    want = {key: np.copy(value) for key, value in params.items()}
    velocity = {key: np.zeros_like(value) for key, value in params.items()}
    clipped = False
    for g in grads:
        for key, w in want.items():
            adapted = key == "kernel" or not exclude
            u = g[key] + wd * w if adapted else g[key]
            rate = lr
            if adapted:
                trust = eta * np.linalg.norm(w) / np.linalg.norm(u)
                clipped |= clip and trust > lr
                rate = min(trust, lr) if clip else lr * trust
            velocity[key] = momentum * velocity[key] + rate * u
            want[key] = w - velocity[key]
    return want, clipped


@pytest.mark.parametrize("exclude,eta,clip,lr", [
    (False, 1e-3, False, 0.5),  # SwAV's LARC: every parameter decayed and adapted
    (True, 0.02, True, 0.01),   # solo-learn's LARS: eta 0.02, clip_lr
    (False, 0.02, True, 0.01),
])
def test_lars_options_equal_a_hand_computed_update(exclude, eta, clip, lr):
    rng = np.random.default_rng(1)
    params = {"kernel": rng.normal(size=(3, 3, 2, 4)), "scale": rng.normal(size=4),
              "bias": rng.normal(size=4)}
    grads = [{k: rng.normal(size=p.shape) * (0.01 if k == "bias" else 1.0)
              for k, p in params.items()} for _ in range(3)]
    tx, _ = optim.make_optimizer(opt_config(
        name="lars", learning_rate=lr, weight_decay=0.1, momentum=0.9,
        exclude_bias_and_norm=exclude, lars_trust_coefficient=eta, lars_clip=clip),
        total_steps=10, batch_size=256)
    state, got = tx.init(params), jax.tree.map(jnp.asarray, params)
    for g in grads:
        updates, state = tx.update(jax.tree.map(jnp.asarray, g), state, got)
        got = jax.tree.map(lambda p, u: p + u, got, updates)
    want, clipped = _numpy_lars(params, grads, lr, 0.1, 0.9, eta, exclude, clip)
    assert clipped == clip
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-7, err_msg=key)


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_exclude_bias_and_norm_false_decays_every_parameter(name):
    """With a zero gradient only weight decay moves a parameter: every one moves when the
    exclusion is off, the kernel alone when it is on (the default)."""
    params = {"kernel": jnp.ones((2, 3)), "scale": jnp.ones(3), "bias": jnp.ones(3)}
    zeros = jax.tree.map(jnp.zeros_like, params)
    for exclude in (True, False):
        tx, _ = optim.make_optimizer(opt_config(name=name, learning_rate=0.1, weight_decay=0.5,
                                                exclude_bias_and_norm=exclude),
                                     total_steps=10, batch_size=256)
        updates, _ = tx.update(zeros, tx.init(params), params)
        moved = {key: bool(jnp.any(value != 0)) for key, value in updates.items()}
        assert moved == {"kernel": True, "scale": not exclude, "bias": not exclude}, exclude
