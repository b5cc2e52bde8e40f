"""SwAV's clustering loss: Sinkhorn-Knopp codes over the global batch (sums across devices), and
the swapped prediction of each view's codes from the other crops, with multi-crop and a queue."""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from contrastive_jax.losses.common import check_temperature

Array = jax.Array


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
    check_temperature(temperature)
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
