"""The image-text losses: CLIP's symmetric InfoNCE and SigLIP's pairwise sigmoid loss, the
latter either over all gathered texts or as a ring that passes text blocks between devices with
`ppermute` (its backward pass written out, so no device holds more than a block of logits)."""

from __future__ import annotations

import functools
from typing import Literal

import jax
import jax.numpy as jnp

from contrastive_jax.losses.collectives import as_varying, gather, global_offset
from contrastive_jax.losses.common import MASKED, Metrics, l2_normalize, softmax_loss_and_metrics

Array = jax.Array


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
    image_to_text = softmax_loss_and_metrics(scale * img @ all_txt.T, positive_mask, with_metrics)
    text_to_image = softmax_loss_and_metrics(scale * txt @ all_img.T, positive_mask, False)
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
    best_negative = jnp.max(jnp.where(positive_mask, MASKED, logits), axis=-1)
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
