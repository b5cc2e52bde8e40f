"""Contrastive losses over embeddings gathered from every device (the loss contract of DESIGN.md).

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

Callers use the names below as `losses.NAME`; the modules hold

- `collectives`: `gather`, `global_offset`, `as_varying` (embeddings from every device);
- `common`: `l2_normalize` and the masked softmax cross-entropy the others build on;
- `contrastive`: `nt_xent`, `supcon`, `info_nce`, `dcl`;
- `image_text`: `clip_loss`, `siglip_loss` (all-gather or ring);
- `clustering`: `sinkhorn_knopp`, `swav_loss`;
- `regression`: `negative_cosine` (SimSiam), `byol_loss`;
- `metric_learning`: `margin_contrastive_loss`, `triplet_loss`, `n_pair_loss`.
"""

from contrastive_jax.losses.clustering import sinkhorn_knopp, swav_loss
from contrastive_jax.losses.collectives import as_varying, gather, global_offset
from contrastive_jax.losses.common import l2_normalize
from contrastive_jax.losses.contrastive import dcl, info_nce, nt_xent, supcon
from contrastive_jax.losses.image_text import clip_loss, siglip_loss
from contrastive_jax.losses.metric_learning import (
    margin_contrastive_loss, n_pair_loss, triplet_loss)
from contrastive_jax.losses.regression import byol_loss, negative_cosine

__all__ = [
    "as_varying", "byol_loss", "clip_loss", "dcl", "gather", "global_offset", "info_nce",
    "l2_normalize", "margin_contrastive_loss", "n_pair_loss", "negative_cosine", "nt_xent",
    "siglip_loss", "sinkhorn_knopp", "supcon", "swav_loss", "triplet_loss",
]
