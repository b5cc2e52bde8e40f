"""Contrastive losses over embeddings gathered from every device.

Every function is pure `jnp`, jit-able and differentiable. Inputs of any float dtype are cast to
float32 before the similarities are formed, so logits, losses and diagnostics are float32 while
gradients come back in the input's dtype. Cosine-similarity losses L2-normalise their inputs.

Under a named axis (`axis_name="data"` inside `pmap` or `shard_map`), each function returns the
loss of this device's anchors against candidates from all devices. The `pmean` of that over the
axis equals the single-device loss on the concatenated global batch, and the `pmean` of the
per-device gradients equals the single-device gradient: `all_gather`'s transpose sums the
cotangents of every device's copy back onto the device that owns the embedding.

`with_metrics=True` additionally returns this device's diagnostics, as the SimCLR reference logs
them: `contrastive_top1` (the positive is the arg-max among all global candidates) and
`contrastive_entropy` (entropy of the softmax over the candidates), both per-device means.
"""

from __future__ import annotations

import functools

from typing import Literal, Sequence

import jax
import jax.numpy as jnp

Array = jax.Array
Metrics = dict[str, Array]

_MASKED = -jnp.inf


def l2_normalize(x: Array, eps: float = 1e-12) -> Array:
    """Unit-normalises the last axis in float32 (eps guards the zero vector)."""
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps * eps))


def gather(x: Array, axis_name: str | None) -> Array:
    """Concatenates `x` from every device along axis 0 (identity without an axis)."""
    if axis_name is None:
        return x
    return jax.lax.all_gather(x, axis_name, tiled=True)


def as_varying(x: Array, axis_name: str | None) -> Array:
    """`x` typed as device-varying over `axis_name` (`jax.lax.pcast`), so that a custom VJP may
    return each device's own cotangent for it: under `shard_map(check_vma=True)` the cast's
    transpose then sums the cotangents of an input that is the same on every device. A no-op
    without an axis, for an already varying `x`, and under `check_vma=False` (no types to meet).
    """
    if axis_name is None or axis_name in jax.typeof(x).mat.varying:
        return x
    return jax.lax.pcast(x, axis_name, to="varying")


def global_offset(local_size: int, axis_name: str | None) -> Array:
    """Index of this device's first row in the gathered (global) batch."""
    if axis_name is None:
        return jnp.zeros((), jnp.int32)
    return jax.lax.axis_index(axis_name) * local_size


def _check_temperature(temperature: float) -> None:
    if isinstance(temperature, (int, float)) and temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def _softmax_loss_and_metrics(
    logits: Array, positive_mask: Array, with_metrics: bool
) -> Array | tuple[Array, Metrics]:
    """Mean over rows of -mean_{p in positives} log softmax(logits)_p, and diagnostics.

    Masked candidates carry -inf logits. With one positive per row this is cross-entropy.
    """
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    positives = positive_mask.astype(jnp.float32)
    positive_log_probs = jnp.sum(jnp.where(positive_mask, log_probs, 0.0), axis=-1)
    loss = -jnp.mean(positive_log_probs / jnp.sum(positives, axis=-1))
    if not with_metrics:
        return loss
    probs = jnp.exp(log_probs)
    entropy = -jnp.sum(jnp.where(probs > 0, probs * log_probs, 0.0), axis=-1)
    best = jnp.argmax(logits, axis=-1)
    top1 = jnp.take_along_axis(positive_mask, best[:, None], axis=-1)[:, 0]
    metrics = {
        "contrastive_top1": jnp.mean(top1.astype(jnp.float32)),
        "contrastive_entropy": jnp.mean(entropy),
    }
    return loss, metrics


def _two_view_logits(
    z1: Array, z2: Array, temperature: float, axis_name: str | None
) -> tuple[Array, Array, Array]:
    """Logits of this device's 2n anchors against all 2N embeddings, self-similarity masked.

    Returns (logits [2n, 2N], anchor global ids [2n], candidate global ids [2N]), where the id of
    view-1 row r is r and of view-2 row r is N + r, so a pair (i, i) sits N ids apart.
    """
    _check_temperature(temperature)
    n = z1.shape[0]
    anchors = l2_normalize(jnp.concatenate([z1, z2], axis=0))
    candidates = jnp.concatenate([gather(l2_normalize(z1), axis_name),
                                  gather(l2_normalize(z2), axis_name)], axis=0)
    num_global = candidates.shape[0] // 2
    local_rows = global_offset(n, axis_name) + jnp.arange(n)
    anchor_ids = jnp.concatenate([local_rows, local_rows + num_global])
    candidate_ids = jnp.arange(2 * num_global)
    logits = anchors @ candidates.T / temperature
    logits = jnp.where(anchor_ids[:, None] == candidate_ids[None, :], _MASKED, logits)
    return logits, anchor_ids, candidate_ids


def nt_xent(
    z1: Array, z2: Array, temperature: float, *, axis_name: str | None = None,
    with_metrics: bool = False,
) -> Array | tuple[Array, Metrics]:
    """SimCLR's NT-Xent (normalised temperature-scaled cross-entropy).

    With s_ij = cos(z_i, z_j) / T over the 2N embeddings of both views, the loss of anchor i with
    positive j (its other view) is l(i, j) = -log exp(s_ij) / sum_{k != i} exp(s_ik), and
    L = 1/(2N) sum_i [l(i, j) + l(j, i)]: every other embedding is a negative (2N - 2 of them).
    Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual Representations".
    """
    logits, anchor_ids, candidate_ids = _two_view_logits(z1, z2, temperature, axis_name)
    num_global = candidate_ids.shape[0] // 2
    partner_ids = (anchor_ids + num_global) % (2 * num_global)
    positive_mask = partner_ids[:, None] == candidate_ids[None, :]
    return _softmax_loss_and_metrics(logits, positive_mask, with_metrics)


def supcon(
    z1: Array, z2: Array, labels: Array, temperature: float, *, axis_name: str | None = None,
    with_metrics: bool = False,
) -> Array | tuple[Array, Metrics]:
    """Supervised contrastive loss, the L_out form (Khosla et al. 2020, eq. 2).

    Over the 2N embeddings of both views, P(i) = {p != i : y_p = y_i} and
    L = 1/(2N) sum_i -1/|P(i)| sum_{p in P(i)} log exp(s_ip) / sum_{a != i} exp(s_ia),
    s = cos / T. With labels = arange(N) each anchor's only positive is its other view, and the
    loss equals `nt_xent`.
    """
    logits, _, _ = _two_view_logits(z1, z2, temperature, axis_name)
    local_labels = jnp.concatenate([labels, labels])
    all_labels = gather(labels, axis_name)
    candidate_labels = jnp.concatenate([all_labels, all_labels])
    same_label = local_labels[:, None] == candidate_labels[None, :]
    positive_mask = same_label & jnp.isfinite(logits)
    return _softmax_loss_and_metrics(logits, positive_mask, with_metrics)


def info_nce(
    query: Array, key: Array, temperature: float, *, negatives: Array | None = None,
    axis_name: str | None = None, with_metrics: bool = False,
) -> Array | tuple[Array, Metrics]:
    """One-directional InfoNCE: row i of `key` is the positive of row i of `query`.

    Without `negatives`: logits_ij = cos(q_i, k_j) / T against the keys of all devices (MoCo v3,
    CPC; van den Oord et al. 2018). With `negatives` [K, d] (a MoCo queue): exactly those are the
    negatives, logits_i = [cos(q_i, k_i), cos(q_i, queue_1..K)] / T with the positive at index 0,
    as in MoCo's Algorithm 1 (He et al. 2020). Mean over queries of the cross-entropy.
    """
    _check_temperature(temperature)
    q = l2_normalize(query)
    k = l2_normalize(key)
    if negatives is not None:
        positive = jnp.sum(q * k, axis=-1, keepdims=True)
        negative = q @ l2_normalize(negatives).T
        logits = jnp.concatenate([positive, negative], axis=-1) / temperature
        positive_mask = jnp.arange(logits.shape[1])[None, :] == 0
        positive_mask = jnp.broadcast_to(positive_mask, logits.shape)
    else:
        all_keys = gather(k, axis_name)
        logits = q @ all_keys.T / temperature
        rows = global_offset(q.shape[0], axis_name) + jnp.arange(q.shape[0])
        positive_mask = rows[:, None] == jnp.arange(all_keys.shape[0])[None, :]
    return _softmax_loss_and_metrics(logits, positive_mask, with_metrics)


def clip_loss(
    image: Array, text: Array, scale: Array | float, *, axis_name: str | None = None,
    with_metrics: bool = False,
) -> Array | tuple[Array, Metrics]:
    """CLIP's symmetric InfoNCE over image-text pairs (Radford et al. 2021).

    logits_ij = scale * cos(image_i, text_j); the loss is 0.5 * (mean cross-entropy over rows,
    image -> text, + mean cross-entropy over columns, text -> image), the diagonal being positive.
    Under an axis this device's images are scored against all texts and its texts against all
    images. Metrics are the image -> text direction's.
    """
    img = l2_normalize(image)
    txt = l2_normalize(text)
    scale = jnp.asarray(scale, jnp.float32)
    rows = global_offset(img.shape[0], axis_name) + jnp.arange(img.shape[0])
    all_txt = gather(txt, axis_name)
    all_img = gather(img, axis_name)
    positive_mask = rows[:, None] == jnp.arange(all_txt.shape[0])[None, :]
    image_to_text = _softmax_loss_and_metrics(scale * img @ all_txt.T, positive_mask, with_metrics)
    text_to_image = _softmax_loss_and_metrics(scale * txt @ all_img.T, positive_mask, False)
    if not with_metrics:
        return 0.5 * (image_to_text + text_to_image)
    loss_i2t, metrics = image_to_text
    return 0.5 * (loss_i2t + text_to_image), metrics


def _pair_logits(img: Array, txt: Array, scale: Array, bias: Array) -> Array:
    return scale * img @ txt.T + bias


def _sigmoid_block(logits: Array, positive_mask: Array) -> tuple[Array, Array, Array]:
    """A block of pair logits: its summed softplus terms, each row's positive logit (0 if none)
    and each row's best negative logit."""
    signs = jnp.where(positive_mask, 1.0, -1.0)
    total = jnp.sum(jax.nn.softplus(-signs * logits))
    positives = jnp.sum(jnp.where(positive_mask, logits, 0.0), axis=-1)
    best_negative = jnp.max(jnp.where(positive_mask, _MASKED, logits), axis=-1)
    return total, positives, best_negative


def _siglip_all_gather(img, txt, scale, bias, axis_name):
    """All texts gathered: this device's n rows against N columns in one block."""
    all_txt = gather(txt, axis_name)
    rows = global_offset(img.shape[0], axis_name) + jnp.arange(img.shape[0])
    positive_mask = rows[:, None] == jnp.arange(all_txt.shape[0])[None, :]
    return _sigmoid_block(_pair_logits(img, all_txt, scale, bias), positive_mask)


def _ring_shift(axis_name: str) -> list[tuple[int, int]]:
    num_devices = jax.lax.axis_size(axis_name)
    return [(i, (i + 1) % num_devices) for i in range(num_devices)]


def _ring_sums(img, txt, scale, bias, axis_name):
    """The ring's forward pass: this device's own block (the positives), then D - 1 text blocks
    passed along with ppermute, one n x n block of logits at a time."""
    own_block = jnp.eye(img.shape[0], dtype=bool)
    total, positives, best_negative = _sigmoid_block(_pair_logits(img, txt, scale, bias),
                                                     own_block)
    if axis_name is None:
        return total, positives, best_negative

    def step(carry, _):
        txt_block, total, best_negative = carry
        txt_block = jax.lax.ppermute(txt_block, axis_name, _ring_shift(axis_name))
        logits = _pair_logits(img, txt_block, scale, bias)
        total = total + jnp.sum(jax.nn.softplus(logits))
        return (txt_block, total, jnp.maximum(best_negative, jnp.max(logits, axis=-1))), None

    (_, total, best_negative), _ = jax.lax.scan(
        step, (txt, total, best_negative), None, length=jax.lax.axis_size(axis_name) - 1)
    return total, positives, best_negative


def _block_grads(img, txt_block, scale, bias, signs, d_total):
    """Gradients of d_total * sum softplus(-signs * logits) over one block: (d_img, d_txt_block,
    d_scale, d_bias). Only the logits' gradient g outlives the cosines it is computed from:
    d_scale = sum g * cos is read off g @ txt_block, which d_img needs anyway."""
    g = -signs * jax.nn.sigmoid(-signs * (scale * (img @ txt_block.T) + bias)) * d_total
    g_txt = g @ txt_block
    return scale * g_txt, scale * g.T @ img, jnp.sum(img * g_txt), jnp.sum(g)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _siglip_ring(img, txt, scale, bias, axis_name):
    """Passes text blocks around the ring with ppermute; holds one n x n block at a time.

    The backward pass is written out (`_siglip_ring_bwd`) rather than derived: it runs the ring
    again, each text block travelling with its gradient, which returns to the block's device
    at the end, so no step keeps more than a block's logits and their gradient. Every input is
    device-varying (`as_varying`): each device's share of d_scale and d_bias is its cotangent.
    """
    return _ring_sums(img, txt, scale, bias, axis_name)


def _siglip_ring_fwd(img, txt, scale, bias, axis_name):
    return _ring_sums(img, txt, scale, bias, axis_name), (img, txt, scale, bias)


def _siglip_ring_bwd(axis_name, residuals, cotangents):
    """Only the summed loss carries a gradient; the positives and best negatives are metrics."""
    img, txt, scale, bias = residuals
    d_total = cotangents[0]
    own_signs = jnp.where(jnp.eye(img.shape[0], dtype=bool), 1.0, -1.0)
    d_img, d_txt, d_scale, d_bias = _block_grads(img, txt, scale, bias, own_signs, d_total)
    if axis_name is not None:
        shift = _ring_shift(axis_name)

        def step(carry, _):
            txt_block, d_txt_block, d_img, d_scale, d_bias = carry
            txt_block, d_txt_block = jax.lax.ppermute((txt_block, d_txt_block), axis_name, shift)
            block = _block_grads(img, txt_block, scale, bias, -1.0, d_total)
            return (txt_block, d_txt_block + block[1], d_img + block[0], d_scale + block[2],
                    d_bias + block[3]), None

        (_, d_txt, d_img, d_scale, d_bias), _ = jax.lax.scan(
            step, (txt, d_txt, d_img, d_scale, d_bias), None,
            length=jax.lax.axis_size(axis_name) - 1)
        d_txt = jax.lax.ppermute(d_txt, axis_name, shift)  # Home: D shifts in all.
    return d_img, d_txt, d_scale, d_bias


_siglip_ring.defvjp(_siglip_ring_fwd, _siglip_ring_bwd)


def siglip_loss(
    image: Array, text: Array, scale: Array | float, bias: Array | float, *,
    axis_name: str | None = None, impl: Literal["all_gather", "ring"] = "all_gather",
    with_metrics: bool = False,
) -> Array | tuple[Array, Metrics]:
    """SigLIP's pairwise sigmoid loss (Zhai et al. 2023).

    L = (1/N) sum over all N x N pairs of softplus(-z_ij * (scale * cos_ij + bias)), z_ij = +1 on
    the diagonal and -1 elsewhere. Under an axis each device returns (1/n) times its rows' sum.
    impl="all_gather" gathers every text (n x N logits per device); impl="ring" passes text
    blocks around the devices with ppermute so no device holds more than n x n logits, forward
    or backward. Metrics: `contrastive_top1`, the positive beats every negative of its row.
    """
    if impl not in ("all_gather", "ring"):
        raise ValueError(f"siglip_loss impl must be 'all_gather' or 'ring', got {impl!r}")
    img = l2_normalize(image)
    txt = l2_normalize(text)
    scale = jnp.asarray(scale, jnp.float32)
    bias = jnp.asarray(bias, jnp.float32)
    if impl == "ring":
        args = [as_varying(x, axis_name) for x in (img, txt, scale, bias)]
        total, positives, best_negative = _siglip_ring(*args, axis_name)
    else:
        total, positives, best_negative = _siglip_all_gather(img, txt, scale, bias, axis_name)
    loss = total / img.shape[0]
    if not with_metrics:
        return loss
    top1 = jnp.mean((positives > best_negative).astype(jnp.float32))
    return loss, {"contrastive_top1": top1}


def margin_contrastive_loss(x1: Array, x2: Array, is_similar: Array, margin: float = 1.0) -> Array:
    """The margin contrastive loss of Hadsell, Chopra and LeCun 2006 ("Dimensionality Reduction
    by Learning an Invariant Mapping"), on Euclidean distances D = ||x1 - x2||:

    L = mean of  y * D^2 / 2 + (1 - y) * max(0, margin - D)^2 / 2,  y = 1 for similar pairs.
    Pointwise per pair, so under a named axis the pmean of per-device means is the global mean.
    """
    diff = x1.astype(jnp.float32) - x2.astype(jnp.float32)
    squared = jnp.sum(diff * diff, axis=-1)
    distance = jnp.sqrt(jnp.maximum(squared, 1e-12))
    similar = is_similar.astype(jnp.float32)
    return jnp.mean(0.5 * similar * squared
                    + 0.5 * (1.0 - similar) * jnp.square(jax.nn.relu(margin - distance)))


def triplet_loss(anchor: Array, positive: Array, negative: Array, margin: float = 0.2) -> Array:
    """The triplet loss with a margin, on squared Euclidean distances (Schroff et al. 2015,
    FaceNet, eq. 1): L = mean of max(0, ||a - p||^2 - ||a - n||^2 + margin)."""
    a = anchor.astype(jnp.float32)
    to_positive = jnp.sum(jnp.square(a - positive.astype(jnp.float32)), axis=-1)
    to_negative = jnp.sum(jnp.square(a - negative.astype(jnp.float32)), axis=-1)
    return jnp.mean(jax.nn.relu(to_positive - to_negative + margin))


def n_pair_loss(anchor: Array, positive: Array, *, axis_name: str | None = None) -> Array:
    """Multi-class N-pair loss (Sohn 2016, eq. 6), on raw inner products (no normalisation):

    L = (1/N) sum_i log(1 + sum_{j != i} exp(f_i . f+_j - f_i . f+_i)), the other anchors'
    positives (from all devices) being the negatives; this is the cross-entropy of the logits
    f_i . f+_j with target i. Sohn's L2 penalty on the embeddings is left to the caller.
    """
    f = anchor.astype(jnp.float32)
    all_positive = gather(positive.astype(jnp.float32), axis_name)
    rows = global_offset(f.shape[0], axis_name) + jnp.arange(f.shape[0])
    positive_mask = rows[:, None] == jnp.arange(all_positive.shape[0])[None, :]
    return _softmax_loss_and_metrics(f @ all_positive.T, positive_mask, False)


def negative_cosine(prediction: Array, target: Array) -> Array:
    """SimSiam's D(p, z) (Chen & He 2021, eq. 1): the mean over rows of -cos(p_i, z_i).

    No stop-gradient here: the method applies it to the target. Pointwise per pair, so under a
    named axis the pmean of per-device means is the global mean.
    """
    return -jnp.mean(jnp.sum(l2_normalize(prediction) * l2_normalize(target), axis=-1))


def byol_loss(prediction: Array, target: Array) -> Array:
    """BYOL's regression loss (Grill et al. 2020, eq. 2): the mean over rows of
    ||p_i/|p_i| - z_i/|z_i|||^2 = 2 - 2 cos(p_i, z_i).

    No stop-gradient here: the target comes from the EMA network, which the method keeps out of
    the gradient. Pointwise per pair, so under a named axis the pmean of per-device means is the
    global mean.
    """
    return 2.0 + 2.0 * negative_cosine(prediction, target)


def _vmf_weights(z1: Array, z2: Array, sigma: float, axis_name: str | None) -> Array:
    """DCLW's von Mises-Fisher weight of each local positive pair,
    w_i = 2 - exp(c_i / sigma) / E_j[exp(c_j / sigma)], c = cos(z1, z2), E over the global batch
    (a log-sum-exp of the gathered cosines, so it cannot overflow)."""
    cosines = jnp.sum(l2_normalize(z1) * l2_normalize(z2), axis=-1) / sigma
    all_cosines = gather(cosines, axis_name)
    log_mean = jax.nn.logsumexp(all_cosines) - jnp.log(all_cosines.shape[0])
    return 2.0 - jnp.exp(cosines - log_mean)


def dcl(
    z1: Array, z2: Array, temperature: float, *, weight_sigma: float | None = None,
    detach_weight: bool = True, axis_name: str | None = None, with_metrics: bool = False,
) -> Array | tuple[Array, Metrics]:
    """Decoupled contrastive loss, DCL, and with `weight_sigma` its weighted form DCLW (Yeh et al.
    2022, "Decoupled Contrastive Learning").

    NT-Xent with the positive taken out of the denominator: anchor i with positive j (its other
    view) has l(i) = -w_i s_ij + log sum_{k != i, j} exp(s_ik), s = cos / T over the 2N
    embeddings of both views, and L is the mean over all 2N anchors (the reference sums its two
    directions' means: `loss.multiplier = 2`). DCL has w = 1; DCLW the von Mises-Fisher weight
    w_i = 2 - exp(cos(z1_i, z2_i) / sigma) / E_k[exp(cos(z1_k, z2_k) / sigma)], the mean over the
    global batch, which down-weights easy positives. `detach_weight=True` (the default) keeps
    w out of the gradient: the paper presents it as a weight on each positive's term, and
    lightly's DCLWLoss detaches it; False differentiates it, as raminnakhli's (third-party)
    implementation does. Metrics are nt_xent's: the positive among all candidates.
    """
    logits, anchor_ids, candidate_ids = _two_view_logits(z1, z2, temperature, axis_name)
    num_global = candidate_ids.shape[0] // 2
    partner_ids = (anchor_ids + num_global) % (2 * num_global)
    positive_mask = partner_ids[:, None] == candidate_ids[None, :]
    positive = jnp.sum(jnp.where(positive_mask, logits, 0.0), axis=-1)
    negative = jax.nn.logsumexp(jnp.where(positive_mask, _MASKED, logits), axis=-1)
    if weight_sigma is not None:
        weights = _vmf_weights(z1, z2, weight_sigma, axis_name)
        weights = jax.lax.stop_gradient(weights) if detach_weight else weights
        positive = jnp.concatenate([weights, weights]) * positive
    loss = jnp.mean(negative - positive)
    if not with_metrics:
        return loss
    _, metrics = _softmax_loss_and_metrics(logits, positive_mask, with_metrics=True)
    return loss, metrics


def sinkhorn_knopp(scores: Array, epsilon: float = 0.05, iterations: int = 3, *,
                   axis_name: str | None = None) -> Array:
    """SwAV's codes (Caron et al. 2020, section 3.1): the soft assignment of the global batch to
    K prototypes nearest to exp(scores / epsilon) under an equal partition, by `iterations` of
    Sinkhorn-Knopp's alternating normalisation.

    `scores` [n, K] are this device's rows; the sums run over every device's rows. Returns codes
    [n, K] without gradient: each row sums to 1 and each prototype receives B / K of the batch's
    mass (exactly after the last row step, approximately after the column steps).
    """
    logits = jax.lax.stop_gradient(scores).astype(jnp.float32) / epsilon
    batch_max = jnp.max(logits)
    batch_max = batch_max if axis_name is None else jax.lax.pmax(batch_max, axis_name)
    codes = jnp.exp(logits - batch_max)  # A constant factor, which the first step removes.
    total = lambda x: x if axis_name is None else jax.lax.psum(x, axis_name)  # noqa: E731
    num_rows, num_prototypes = total(codes.shape[0]), codes.shape[1]
    codes = codes / total(jnp.sum(codes))
    for _ in range(iterations):
        codes = codes / (total(jnp.sum(codes, axis=0, keepdims=True)) * num_prototypes)
        codes = codes / (jnp.sum(codes, axis=1, keepdims=True) * num_rows)
    return codes * num_rows


def swav_loss(scores1: Array, scores2: Array, temperature: float, *, epsilon: float = 0.05,
              iterations: int = 3, axis_name: str | None = None,
              small_scores: Sequence[Array] = (),
              queue_scores: tuple[Array, Array] | None = None,
              use_queue: Array | bool = True) -> Array:
    """SwAV's swapped prediction (Caron et al. 2020, eq. 1-2) for two views: each view's codes
    (`sinkhorn_knopp` over the global batch, no gradient) are the targets of the other view's
    softmax(scores / T); the mean over the local rows of the two cross-entropies, halved.

    With multi-crop, `small_scores` holds the V small crops' scores [n, K] each: they have no
    codes of their own but predict both views', so each view's codes are the targets of the
    V + 1 other crops, their cross-entropies averaged, and the two views' averages halved (the
    reference's loss; V = 0 is the two-view loss above).

    With `queue_scores` (the scores of earlier batches' projections of view 1 and of view 2,
    [m, K] per device), each view's codes come from Sinkhorn-Knopp over its queue's rows and
    the batch's together (a larger batch to partition; the reference's queue for batches under
    256), where `use_queue` holds; elsewhere from the batch alone.

    `scores` are cosines to the prototypes. Per example once the codes are fixed, so under a
    named axis the pmean of per-device losses, and of their gradients, are the global ones.
    """
    _check_temperature(temperature)
    crops = [scores1, scores2, *small_scores]

    def cross_entropy(codes, scores):
        log_probs = jax.nn.log_softmax(scores.astype(jnp.float32) / temperature, axis=-1)
        return -jnp.mean(jnp.sum(codes * log_probs, axis=-1))

    total = 0.0
    for view, scores in enumerate((scores1, scores2)):
        codes = sinkhorn_knopp(scores, epsilon, iterations, axis_name=axis_name)
        if queue_scores is not None:
            with_queue = sinkhorn_knopp(jnp.concatenate([queue_scores[view], scores]), epsilon,
                                        iterations, axis_name=axis_name)[-scores.shape[0]:]
            codes = jnp.where(use_queue, with_queue, codes)
        others = [crop for k, crop in enumerate(crops) if k != view]
        total += sum(cross_entropy(codes, crop) for crop in others) / len(others)
    return 0.5 * total
