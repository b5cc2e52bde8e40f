"""The metric-learning losses on raw embeddings: Hadsell et al.'s margin contrastive loss, the
triplet loss and Sohn's multi-class N-pair loss (its negatives gathered from every device)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from contrastive_jax.losses.collectives import gather, global_offset
from contrastive_jax.losses.common import softmax_loss_and_metrics

Array = jax.Array


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
    return softmax_loss_and_metrics(f @ all_positive.T, positive_mask, False)
