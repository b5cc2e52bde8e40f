"""What the softmax losses share: L2 normalisation in float32, the temperature check, and the
mean cross-entropy over a masked set of positives with its diagnostics."""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array
Metrics = dict[str, Array]

MASKED = -jnp.inf  # The logit of a candidate left out of the softmax.


def l2_normalize(x: Array, eps: float = 1e-12) -> Array:
    """Unit-normalises the last axis in float32 (eps guards the zero vector)."""
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps * eps))


def check_temperature(temperature: float) -> None:
    """Refuses a Python temperature <= 0 (a traced one cannot be checked)."""
    if isinstance(temperature, (int, float)) and temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def softmax_loss_and_metrics(
    logits: Array, positive_mask: Array, with_metrics: bool
) -> Array | tuple[Array, Metrics]:
    """Mean over rows of -mean_{p in positives} log softmax(logits)_p, and diagnostics.

    Masked candidates carry -inf logits. With one positive per row this is cross-entropy.
    Diagnostics: `contrastive_top1` (the arg-max candidate is a positive) and
    `contrastive_entropy` (entropy of the softmax), both means over the rows.
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
