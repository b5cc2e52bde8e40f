"""SwAV (Caron et al. 2020, "Unsupervised Learning of Visual Features by Contrasting Cluster
Assignments"): each view's projection is assigned to K learned prototypes under an equal
partition of the global batch (Sinkhorn-Knopp), and each view predicts the other's assignment.

Network: ResNet encoder -> projection MLP (`heads.ProjectionHead`, 2048 hidden, 128 out;
Dense -> BN -> ReLU -> Dense as the reference's, or with `model.swav_output_bn` a last BN) ->
L2-normalised -> cosines to K prototypes (unit rows of the parameter `prototypes`, renormalised
after every optimizer step as the reference does before each). The codes come from
`losses.sinkhorn_knopp` over all devices' rows without gradient; the loss is
`losses.swav_loss` (cross-entropies of softmax(scores / T) against the other view's codes). The
prototypes stay fixed for the first `loss.freeze_prototypes_steps` steps, as the reference
freezes them for its first epoch(s). Both views go through the network as one batch, as in
SimCLR, so BatchNorm (over the `data` axis) sees all 2N views. An online linear probe tracks
representation quality.

Multi-crop (`data.small_crops` = V > 0; the paper's 2 x 224 + 6 x 96): the V small views of
every example go through the encoder as a second batch, since they differ in size (so its
BatchNorm normalises each resolution by its own statistics, as the reference's per-resolution
forward passes do); their features join the two views' in one batch through the projection.
Only the two views get codes; all 2 + V crops predict them (`losses.swav_loss`).

The queue (`loss.queue_length` = Q > 0, the reference's for batches under 256): the unit
projections of both views of the last Q / B global batches, in `TrainState.extra` (so
checkpointed), filled from step `loss.queue_start_steps` on. Once full, their scores against
the current prototypes join each view's rows in Sinkhorn-Knopp: each device takes an equal
share of the queue, so the sums over all devices cover it once, as the reference's
per-device queues do.
"""

from __future__ import annotations

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from contrastive_jax import losses
from contrastive_jax.methods import Method, common
from contrastive_jax.models import heads

Array = jax.Array


class SwAVModel(nn.Module):
    """SimCLR's network (the same parameter names) with its projection L2-normalised, beside K
    prototypes of the projection's width."""

    encoder: nn.Module
    projection: nn.Module
    num_classes: int
    num_prototypes: int

    @nn.compact
    def __call__(self, images: Array, train: bool,
                 small_images: Array | None = None) -> tuple[Array, Array, Array, Array]:
        """(features of `images`, unit projections of `images` then `small_images`, probe
        logits of `images`, prototypes)."""
        features = self.encoder(images, train=train)
        crops = features
        if small_images is not None:  # A second pass: BatchNorm statistics per resolution.
            crops = jnp.concatenate([features, self.encoder(small_images, train=train)], axis=0)
        projection = self.projection(crops, train=train)
        probe_logits = heads.LinearProbe(self.num_classes, name="probe")(features)
        prototypes = self.param(
            "prototypes", lambda key, shape: losses.l2_normalize(jax.random.normal(key, shape)),
            (self.num_prototypes, projection.shape[-1]))
        return features, losses.l2_normalize(projection), probe_logits, prototypes


def validate(config: ml_collections.ConfigDict) -> None:
    """Refuses SwAV settings that cannot run, naming the field."""
    for key in ("num_prototypes", "sinkhorn_iterations"):
        if config.loss[key] < 1:
            raise ValueError(f"config.loss.{key} must be >= 1, got {config.loss[key]}")
    if config.loss.sinkhorn_epsilon <= 0:
        raise ValueError(f"config.loss.sinkhorn_epsilon must be > 0, got "
                         f"{config.loss.sinkhorn_epsilon}")
    _validate_small_crops(config.data)
    queue_length = config.loss.get("queue_length", 0)
    if queue_length < 0 or queue_length % config.batch_size:
        raise ValueError(f"config.loss.queue_length must be a multiple of batch_size "
                         f"({config.batch_size}), got {queue_length}")


def _validate_small_crops(data: ml_collections.ConfigDict) -> None:
    num = data.get("small_crops", 0)
    if num < 0:
        raise ValueError(f"config.data.small_crops must be >= 0, got {num}")
    if num == 0:
        return
    if data.small_crop_size < 1:
        raise ValueError(f"config.data.small_crop_size must be >= 1, got {data.small_crop_size}")
    if not 0 < data.small_crop_area_min < data.small_crop_area_max <= 1:
        raise ValueError(
            f"config.data.small_crop_area_min and _max must satisfy 0 < min < max <= 1, got "
            f"{data.small_crop_area_min} and {data.small_crop_area_max}")
    if data.augment_on != "host":
        raise ValueError("config.data.small_crops needs data.augment_on='host': the device "
                         "augmentation makes the two views only")
    for key in ("blur_prob", "solarize_prob"):
        if isinstance(data.get(key), (tuple, list)):
            raise ValueError(f"config.data.small_crops needs one config.data.{key} for all "
                             f"crops, got the per-view pair {data[key]}")


def batch_shapes(config: ml_collections.ConfigDict, n: int) -> dict[str, jax.ShapeDtypeStruct]:
    """SimCLR's two views and labels, and with multi-crop "small_views" [n, V, s, s, 3]."""
    shapes = common.two_view_batch_shapes(config, n)
    num = config.data.get("small_crops", 0)
    if num > 0:
        size = config.data.small_crop_size
        shapes["small_views"] = jax.ShapeDtypeStruct((n, num, size, size, 3), jnp.float32)
    return shapes


def build_model(config: ml_collections.ConfigDict, num_classes: int,
                axis_name: str | None) -> SwAVModel:
    """SimCLR's encoder and a projection head of `config.model` that ends in a Dense (the
    reference's) or, with `model.swav_output_bn`, in SimCLR's BatchNorm; the prototypes."""
    model_config = config.model
    projection = heads.ProjectionHead(
        num_layers=model_config.head_layers, hidden_dim=model_config.head_hidden_dim,
        out_dim=model_config.head_out_dim, use_bn=model_config.head_bn,
        output_bn=model_config.swav_output_bn, bn_axis_name=axis_name,
        dtype=common.model_dtype(config))
    return SwAVModel(encoder=common.build_encoder(config, axis_name), projection=projection,
                     num_classes=num_classes, num_prototypes=config.loss.num_prototypes)


def init_extra(config: ml_collections.ConfigDict, variables: dict, rng: Array) -> dict:
    """With `loss.queue_length` = Q > 0, an empty queue for the two views' unit projections
    [2, Q, d], its write pointer and the number of rows written (at most Q); else nothing."""
    del variables, rng
    queue_length = config.loss.get("queue_length", 0)
    if queue_length == 0:
        return {}
    return {"queue": jnp.zeros((2, queue_length, config.model.head_out_dim), jnp.float32),
            "queue_ptr": jnp.zeros((), jnp.int32), "queue_rows": jnp.zeros((), jnp.int32)}


def device_share(rows: Array, axis_name: str | None) -> Array:
    """This device's equal share of `rows` [..., Q, d] along the rows (all of them without a
    named axis), so the devices' shares together are every row once."""
    if axis_name is None:
        return rows
    share = rows.shape[-2] // jax.lax.axis_size(axis_name)
    return jax.lax.dynamic_slice_in_dim(rows, jax.lax.axis_index(axis_name) * share, share,
                                        axis=rows.ndim - 2)


def _queue_update(config: ml_collections.ConfigDict, extra: dict, step: Array,
                  projections: Array, n: int, axis_name: str | None) -> dict:
    """The queue with this global batch's unit projections of the two views written over its
    oldest rows, once `loss.queue_start_steps` is reached."""
    rows = jnp.stack([losses.gather(jax.lax.stop_gradient(projections[k * n:(k + 1) * n]),
                                    axis_name) for k in (0, 1)]).astype(jnp.float32)
    queue = jax.lax.dynamic_update_slice_in_dim(extra["queue"], rows, extra["queue_ptr"],
                                                axis=1)
    started = step >= config.loss.queue_start_steps
    written = jnp.minimum(extra["queue_rows"] + rows.shape[1], queue.shape[1])
    return {"queue": jnp.where(started, queue, extra["queue"]),
            "queue_ptr": jnp.where(started, (extra["queue_ptr"] + rows.shape[1])
                                   % queue.shape[1], extra["queue_ptr"]),
            "queue_rows": jnp.where(started, written, extra["queue_rows"])}


def prototype_scores(projections: Array, prototypes: Array, frozen: Array) -> Array:
    """Cosines of unit projections to the prototypes; no gradient reaches the prototypes
    while `frozen`."""
    prototypes = jnp.where(frozen, jax.lax.stop_gradient(prototypes), prototypes)
    return projections @ losses.l2_normalize(prototypes).T.astype(projections.dtype)


def loss_fn(model: SwAVModel, config: ml_collections.ConfigDict, params, state,
            batch: dict[str, Array], rng: Array, axis_name: str | None):
    """The swapped prediction of the two views' codes (by the small crops too, with
    multi-crop; from Sinkhorn-Knopp over the queue's rows too, once it is full), plus the
    online probe; `extra` gets the queue with this global batch written in."""
    del rng
    n = batch["view1"].shape[0]
    images = jnp.concatenate([batch["view1"], batch["view2"]], axis=0)
    small_images = None
    if "small_views" in batch:
        small_images = einops.rearrange(batch["small_views"], "n v h w c -> (v n) h w c")
    (_, projections, probe_logits, prototypes), updates = model.apply(
        {"params": params, "batch_stats": state.batch_stats}, images, train=True,
        small_images=small_images, mutable=["batch_stats"])
    frozen = state.step < config.loss.freeze_prototypes_steps
    scores = prototype_scores(projections, prototypes, frozen)
    small_scores = [] if small_images is None else list(
        einops.rearrange(scores[2 * n:], "(v n) k -> v n k", n=n))
    queue_scores, use_queue, extra = None, False, state.extra
    if "queue" in state.extra:
        queue = device_share(state.extra["queue"], axis_name)
        queue_scores = tuple(prototype_scores(queue[k], jax.lax.stop_gradient(prototypes),
                                              frozen) for k in (0, 1))
        use_queue = state.extra["queue_rows"] == state.extra["queue"].shape[1]  # Full.
        extra = _queue_update(config, state.extra, state.step, projections, n, axis_name)
    contrastive = losses.swav_loss(
        scores[:n], scores[n:2 * n], config.loss.temperature,
        epsilon=config.loss.sinkhorn_epsilon, iterations=config.loss.sinkhorn_iterations,
        axis_name=axis_name, small_scores=small_scores, queue_scores=queue_scores,
        use_queue=use_queue)
    probe_loss, probe_metrics = common.probe_loss_and_metrics(
        probe_logits, jnp.concatenate([batch["label"], batch["label"]]))
    metrics = {**probe_metrics, "contrastive_loss": contrastive,
               "prototypes_frozen": frozen.astype(jnp.float32),
               "queue_used": jnp.asarray(use_queue, jnp.float32)}
    changes = {"batch_stats": updates["batch_stats"], "extra": extra}
    return contrastive + probe_loss, (changes, metrics)


def after_update(config: ml_collections.ConfigDict, state):
    """Puts the prototypes back on the unit sphere."""
    params = {**state.params, "prototypes": losses.l2_normalize(state.params["prototypes"])}
    return state.replace(params=params)


METHOD = Method(name="swav", build_model=build_model,
                init_variables=common.init_image_variables, batch_shapes=batch_shapes,
                loss_fn=loss_fn, encoder_features=common.encoder_features, validate=validate,
                init_extra=init_extra, after_update=after_update)
