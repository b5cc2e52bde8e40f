"""Every loss against an independent float64 numpy implementation: values and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from contrastive_jax import losses


def normalize(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def logsumexp(x, axis=-1):
    m = np.max(x, axis=axis, keepdims=True)
    return np.squeeze(m, axis) + np.log(np.sum(np.exp(x - m), axis=axis))


def ref_nt_xent(z1, z2, t):
    z = normalize(np.concatenate([z1, z2]))
    n2 = len(z)
    total = 0.0
    for i in range(n2):
        j = (i + n2 // 2) % n2
        others = [k for k in range(n2) if k != i]
        total += -z[i] @ z[j] / t + logsumexp(np.array([z[i] @ z[k] / t for k in others]))
    return total / n2


def ref_supcon(z1, z2, labels, t):
    z = normalize(np.concatenate([z1, z2]))
    y = np.concatenate([labels, labels])
    total = 0.0
    for i in range(len(z)):
        others = [a for a in range(len(z)) if a != i]
        log_norm = logsumexp(np.array([z[i] @ z[a] / t for a in others]))
        positives = [p for p in others if y[p] == y[i]]
        total += -np.mean([z[i] @ z[p] / t - log_norm for p in positives])
    return total / len(z)


def ref_info_nce(q, k, t, negatives=None):
    q, k = normalize(q), normalize(k)
    total = 0.0
    for i in range(len(q)):
        if negatives is None:
            logits = k @ q[i] / t
            total += -logits[i] + logsumexp(logits)
        else:
            logits = np.concatenate([[q[i] @ k[i]], normalize(negatives) @ q[i]]) / t
            total += -logits[0] + logsumexp(logits)
    return total / len(q)


def ref_clip(img, txt, scale):
    logits = scale * normalize(img) @ normalize(txt).T
    rows = np.mean(logsumexp(logits, 1) - np.diag(logits))
    cols = np.mean(logsumexp(logits, 0) - np.diag(logits))
    return 0.5 * (rows + cols)


def ref_siglip(img, txt, scale, bias):
    logits = scale * normalize(img) @ normalize(txt).T + bias
    z = 2 * np.eye(len(img)) - 1
    return np.sum(np.logaddexp(0, -z * logits)) / len(img)


def ref_margin(x1, x2, similar, margin):
    d = np.linalg.norm(x1 - x2, axis=-1)
    return np.mean(similar * d**2 / 2 + (1 - similar) * np.maximum(0, margin - d) ** 2 / 2)


def ref_triplet(a, p, n, margin):
    return np.mean(np.maximum(0, np.sum((a - p) ** 2, -1) - np.sum((a - n) ** 2, -1) + margin))


def ref_n_pair(f, fp):
    total = 0.0
    for i in range(len(f)):
        total += np.log1p(sum(np.exp(f[i] @ fp[j] - f[i] @ fp[i]) for j in range(len(f)) if j != i))
    return total / len(f)


def finite_difference_grad(fn, args, eps=1e-6):
    """Central differences in float64 of `fn` w.r.t. every float array in `args`."""
    grads = []
    for a, arg in enumerate(args):
        grad = np.zeros_like(arg)
        for idx in np.ndindex(arg.shape):
            up = [x.copy() for x in args]
            down = [x.copy() for x in args]
            up[a][idx] += eps
            down[a][idx] -= eps
            grad[idx] = (fn(*up) - fn(*down)) / (2 * eps)
        grads.append(grad)
    return grads


rng = np.random.default_rng(0)
N, D = 6, 5
Z1, Z2 = rng.normal(size=(N, D)), rng.normal(size=(N, D))
LABELS = np.array([0, 1, 0, 2, 1, 0])
QUEUE = rng.normal(size=(7, D))
SIMILAR = np.array([1, 0, 1, 0, 0, 1], np.float64)
Z3 = rng.normal(size=(N, D))

# name: (jax loss of float arrays, numpy reference of the same float arrays, float arguments)
CASES = {
    "nt_xent": (lambda a, b: losses.nt_xent(a, b, 0.5), lambda a, b: ref_nt_xent(a, b, 0.5),
                (Z1, Z2)),
    "supcon": (lambda a, b: losses.supcon(a, b, jnp.asarray(LABELS), 0.3),
               lambda a, b: ref_supcon(a, b, LABELS, 0.3), (Z1, Z2)),
    "info_nce": (lambda a, b: losses.info_nce(a, b, 0.2), lambda a, b: ref_info_nce(a, b, 0.2),
                 (Z1, Z2)),
    "info_nce_queue": (lambda a, b, c: losses.info_nce(a, b, 0.2, negatives=c),
                       lambda a, b, c: ref_info_nce(a, b, 0.2, c), (Z1, Z2, QUEUE)),
    "clip": (lambda a, b, s: losses.clip_loss(a, b, s), ref_clip, (Z1, Z2, np.array(7.0))),
    "siglip": (lambda a, b, s, c: losses.siglip_loss(a, b, s, c), ref_siglip,
               (Z1, Z2, np.array(5.0), np.array(-2.0))),
    "siglip_ring": (lambda a, b, s, c: losses.siglip_loss(a, b, s, c, impl="ring"), ref_siglip,
                    (Z1, Z2, np.array(5.0), np.array(-2.0))),
    "margin": (lambda a, b: losses.margin_contrastive_loss(a, b, jnp.asarray(SIMILAR), 3.0),
               lambda a, b: ref_margin(a, b, SIMILAR, 3.0), (Z1, Z2)),
    "triplet": (lambda a, b, c: losses.triplet_loss(a, b, c, 4.0),
                lambda a, b, c: ref_triplet(a, b, c, 4.0), (Z1, Z2, Z3)),
    "n_pair": (lambda a, b: losses.n_pair_loss(a, b), ref_n_pair, (0.5 * Z1, 0.5 * Z2)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_value_matches_numpy(name):
    loss_fn, ref_fn, args = CASES[name]
    value = jax.jit(loss_fn)(*[jnp.asarray(a, jnp.float32) for a in args])
    assert value.dtype == jnp.float32
    np.testing.assert_allclose(value, ref_fn(*args), rtol=1e-5)


@pytest.mark.parametrize("name", sorted(CASES))
def test_gradient_matches_finite_differences(name):
    loss_fn, ref_fn, args = CASES[name]
    grads = jax.jit(jax.grad(loss_fn, argnums=tuple(range(len(args)))))(
        *[jnp.asarray(a, jnp.float32) for a in args])
    expected = finite_difference_grad(ref_fn, [np.asarray(a, np.float64) for a in args])
    for got, want in zip(grads, expected):
        assert np.linalg.norm(got - want) <= 1e-5 * np.linalg.norm(want) + 1e-7


def test_supcon_with_unique_labels_is_nt_xent():
    z1, z2 = jnp.asarray(Z1, jnp.float32), jnp.asarray(Z2, jnp.float32)
    np.testing.assert_allclose(losses.supcon(z1, z2, jnp.arange(N), 0.1),
                               losses.nt_xent(z1, z2, 0.1), rtol=1e-6)


def test_info_nce_queue_is_moco_algorithm_1():
    """MoCo's pseudocode: l_pos = bmm(q, k), l_neg = mm(q, queue), CE with label 0."""
    q, k, queue = normalize(Z1), normalize(Z2), normalize(QUEUE)
    logits = np.concatenate([np.sum(q * k, 1, keepdims=True), q @ queue.T], axis=1) / 0.07
    expected = np.mean(logsumexp(logits) - logits[:, 0])
    got = losses.info_nce(jnp.asarray(q, jnp.float32), jnp.asarray(k, jnp.float32), 0.07,
                          negatives=jnp.asarray(queue, jnp.float32))
    np.testing.assert_allclose(got, expected, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(CASES))
def test_bfloat16_inputs_give_float32_loss_close_to_float32(name):
    loss_fn, _, args = CASES[name]
    full = loss_fn(*[jnp.asarray(a, jnp.float32) for a in args])
    half = loss_fn(*[jnp.asarray(a, jnp.bfloat16) for a in args])
    assert half.dtype == jnp.float32
    assert abs(float(half) - float(full)) <= 1e-2 * max(1.0, abs(float(full)))


def test_gradients_keep_the_input_dtype():
    grads = jax.grad(lambda a, b: losses.nt_xent(a, b, 0.1), argnums=(0, 1))(
        jnp.asarray(Z1, jnp.bfloat16), jnp.asarray(Z2, jnp.bfloat16))
    assert all(g.dtype == jnp.bfloat16 for g in grads)


@pytest.mark.parametrize("scale", [100.0, 1000.0])
def test_large_scale_is_finite_and_matches_numpy(scale):
    """Near-identical pairs at scale 1000: logits of +-1000 must not overflow."""
    img = Z1 + 1e-3 * Z2
    value, grads = jax.value_and_grad(lambda a, b: losses.clip_loss(a, b, scale), (0, 1))(
        jnp.asarray(img, jnp.float32), jnp.asarray(Z1, jnp.float32))
    assert np.isfinite(value) and all(np.all(np.isfinite(g)) for g in grads)
    np.testing.assert_allclose(value, ref_clip(img, Z1, scale), rtol=1e-3, atol=1e-3)
    sig, sig_grads = jax.value_and_grad(
        lambda a, b: losses.siglip_loss(a, b, scale, -10.0), (0, 1))(
        jnp.asarray(img, jnp.float32), jnp.asarray(Z1, jnp.float32))
    assert np.isfinite(sig) and all(np.all(np.isfinite(g)) for g in sig_grads)
    np.testing.assert_allclose(sig, ref_siglip(img, Z1, scale, -10.0), rtol=1e-4)
    t = 1.0 / scale
    nt, nt_grads = jax.value_and_grad(lambda a, b: losses.nt_xent(a, b, t), (0, 1))(
        jnp.asarray(img, jnp.float32), jnp.asarray(Z1, jnp.float32))
    assert np.isfinite(nt) and all(np.all(np.isfinite(g)) for g in nt_grads)
    np.testing.assert_allclose(nt, ref_nt_xent(img, Z1, t), rtol=1e-3, atol=1e-3)


def test_metrics_against_numpy():
    loss, metrics = losses.nt_xent(jnp.asarray(Z1, jnp.float32), jnp.asarray(Z2, jnp.float32),
                                   0.5, with_metrics=True)
    z = normalize(np.concatenate([Z1, Z2]))
    logits = z @ z.T / 0.5
    np.fill_diagonal(logits, -np.inf)
    probs = np.exp(logits - logsumexp(logits)[:, None])
    partner = (np.arange(2 * N) + N) % (2 * N)
    top1 = np.mean(np.argmax(logits, 1) == partner)
    entropy = np.mean(-np.sum(np.where(probs > 0, probs * np.log(np.maximum(probs, 1e-300)), 0), 1))
    np.testing.assert_allclose(loss, ref_nt_xent(Z1, Z2, 0.5), rtol=1e-5)
    np.testing.assert_allclose(metrics["contrastive_top1"], top1)
    np.testing.assert_allclose(metrics["contrastive_entropy"], entropy, rtol=1e-5)


def test_top1_is_one_for_perfect_pairs_and_siglip_agrees():
    img = jnp.eye(4, 8)
    for loss_and_metrics in (losses.clip_loss(img, img, 10.0, with_metrics=True),
                             losses.siglip_loss(img, img, 10.0, -5.0, with_metrics=True),
                             losses.siglip_loss(img, img, 10.0, -5.0, impl="ring",
                                                with_metrics=True)):
        assert float(loss_and_metrics[1]["contrastive_top1"]) == 1.0
    _, flipped = losses.clip_loss(img, img[::-1], 10.0, with_metrics=True)
    assert float(flipped["contrastive_top1"]) == 0.0


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="temperature"):
        losses.nt_xent(jnp.ones((2, 3)), jnp.ones((2, 3)), 0.0)
    with pytest.raises(ValueError, match="impl"):
        losses.siglip_loss(jnp.ones((2, 3)), jnp.ones((2, 3)), 1.0, 0.0, impl="chunked")
