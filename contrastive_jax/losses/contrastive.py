"""The softmax contrastive losses over the two views of a batch, or a query and its key:
SimCLR's NT-Xent, supervised contrastive (SupCon), InfoNCE (MoCo v2 with a queue, MoCo v3) and
the decoupled DCL / DCLW. Negatives are gathered from every device."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from contrastive_jax.losses.collectives import gather, global_offset
from contrastive_jax.losses.common import (
    MASKED, Metrics, check_temperature, l2_normalize, softmax_loss_and_metrics)

Array = jax.Array


def _two_view_logits(
    z1: Array, z2: Array, temperature: float, axis_name: str | None
) -> tuple[Array, Array, Array]:
    """Logits of this device's 2n anchors against all 2N embeddings, self-similarity masked.

    Returns (logits [2n, 2N], anchor global ids [2n], candidate global ids [2N]), where the id of
    view-1 row r is r and of view-2 row r is N + r, so a pair (i, i) sits N ids apart.
    """
    check_temperature(temperature)
    n = z1.shape[0]
    anchors = l2_normalize(jnp.concatenate([z1, z2], axis=0))
    candidates = jnp.concatenate([gather(l2_normalize(z1), axis_name),
                                  gather(l2_normalize(z2), axis_name)], axis=0)
    num_global = candidates.shape[0] // 2
    local_rows = global_offset(n, axis_name) + jnp.arange(n)
    anchor_ids = jnp.concatenate([local_rows, local_rows + num_global])
    candidate_ids = jnp.arange(2 * num_global)
    logits = anchors @ candidates.T / temperature
    logits = jnp.where(anchor_ids[:, None] == candidate_ids[None, :], MASKED, logits)
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
    return softmax_loss_and_metrics(logits, positive_mask, with_metrics)


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
    return softmax_loss_and_metrics(logits, positive_mask, with_metrics)


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
    check_temperature(temperature)
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
    return softmax_loss_and_metrics(logits, positive_mask, with_metrics)


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
    negative = jax.nn.logsumexp(jnp.where(positive_mask, MASKED, logits), axis=-1)
    if weight_sigma is not None:
        weights = _vmf_weights(z1, z2, weight_sigma, axis_name)
        weights = jax.lax.stop_gradient(weights) if detach_weight else weights
        positive = jnp.concatenate([weights, weights]) * positive
    loss = jnp.mean(negative - positive)
    if not with_metrics:
        return loss
    _, metrics = softmax_loss_and_metrics(logits, positive_mask, with_metrics=True)
    return loss, metrics
