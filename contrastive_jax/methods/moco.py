"""MoCo v2 (He et al. 2020; Chen et al. 2020b): a momentum key encoder and a queue of negatives.

The query encoder (ResNet + MLP head) is trained; the key encoder is an exponential moving
average of it, updated after every optimizer step with momentum m (constant, or raised to 1 on a
cosine as in BYOL / MoCo v3). Each query's positive is the key of its other view; the negatives
are exactly the K keys in the queue (`losses.info_nce(q, k, T, negatives=queue)`, MoCo's
Algorithm 1). After the step the keys of the whole global batch, gathered from every device in
order, replace the oldest keys in the queue. Key encoder, its BatchNorm statistics, the queue and
its pointer live in `TrainState.extra`, so they are checkpointed with the rest.

BatchNorm must not let a query see the batch its key came from (the positive would leak through
the batch statistics). `model.moco_bn` chooses how:

- "shuffle" (MoCo's shuffling BN): BatchNorm statistics are per group of examples, a group being
  one device's batch split into `model.bn_splits` parts; the keys are computed on the global
  batch in a random order shared by all devices, then put back in order, so a query's group and
  its key's group hold different examples. On one device, set `bn_splits` > 1 (MoCo's split BN).
  Each device's running statistics come from its own groups; after every step they are averaged
  over the devices (query and key encoder alike), so the state, which the step returns as
  replicated and checkpoints as one copy, is the same on every device.
- "global": BatchNorm over the whole global batch on every device (MoCo v3's synchronised BN).
"""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from contrastive_jax import losses
from contrastive_jax.methods import Method, common

Array = jax.Array
BN_MODES = ("shuffle", "global")


def validate(config: ml_collections.ConfigDict) -> None:
    """Refuses MoCo settings that cannot run, naming the field."""
    if config.model.moco_bn not in BN_MODES:
        raise ValueError(f"config.model.moco_bn must be one of {BN_MODES}, got "
                         f"{config.model.moco_bn!r}")
    if config.loss.queue_size <= 0 or config.loss.queue_size % config.batch_size:
        raise ValueError(f"config.loss.queue_size ({config.loss.queue_size}) must be a positive "
                         f"multiple of batch_size ({config.batch_size}), so that every step "
                         "replaces whole batches of keys")
    common.check_momentum(config)
    per_device = config.batch_size // jax.device_count()
    if config.model.bn_splits < 1 or per_device % config.model.bn_splits:
        raise ValueError(f"config.model.bn_splits ({config.model.bn_splits}) must divide the "
                         f"per-device batch ({per_device})")


def build_model(config: ml_collections.ConfigDict, num_classes: int,
                axis_name: str | None) -> common.ProjectionModel:
    """The ResNet + projection head of `config.model`; BatchNorm over `axis_name` only for
    global BN (shuffling BN keeps its statistics per group)."""
    global_bn = config.model.moco_bn == "global"
    return common.build_projection_model(config, num_classes, axis_name if global_bn else None)


def init_extra(config: ml_collections.ConfigDict, variables: dict, rng: Array) -> dict:
    """The key encoder (a copy of the query encoder) and a queue of random unit vectors."""
    queue = jax.random.normal(rng, (config.loss.queue_size, config.model.head_out_dim))
    return {"key_params": variables["params"], "key_batch_stats": variables["batch_stats"],
            "queue": losses.l2_normalize(queue), "queue_ptr": jnp.zeros((), jnp.int32)}


def _apply_in_groups(model: nn.Module, variables: dict, images: Array, groups: int):
    """Train-mode forward with BatchNorm statistics per group of examples (MoCo's split BN).

    Returns (outputs, new batch_stats); the running statistics average the groups' updates.
    """
    apply = lambda x: model.apply(variables, x, train=True, mutable=["batch_stats"])
    if groups == 1:
        outputs, updates = apply(images)
        return outputs, updates["batch_stats"]
    grouped = images.reshape(groups, -1, *images.shape[1:])
    outputs, updates = jax.vmap(apply)(grouped)
    outputs = jax.tree.map(lambda y: y.reshape(-1, *y.shape[2:]), outputs)
    return outputs, jax.tree.map(lambda s: s.mean(0), updates["batch_stats"])


def _shuffled_keys(key_fn: Callable[[Array], tuple[Array, dict]], images: Array, rng: Array,
                   axis_name: str | None) -> tuple[Array, Array, dict]:
    """Keys of this device's images computed on a random shuffle of the global batch.

    All devices draw the same permutation (the step key is shared), each encodes its slice of
    the shuffled global batch, and the keys are gathered and put back in order. Returns (this
    device's keys, the global batch's keys in order, new key batch_stats).
    """
    n = images.shape[0]
    all_images = losses.gather(images, axis_name)
    order = jax.random.permutation(rng, all_images.shape[0])
    first = losses.global_offset(n, axis_name)
    mine = jax.lax.dynamic_slice_in_dim(order, first, n)
    keys, batch_stats = key_fn(all_images[mine])
    shuffled = losses.gather(keys, axis_name)
    all_keys = jnp.zeros_like(shuffled).at[order].set(shuffled)
    return jax.lax.dynamic_slice_in_dim(all_keys, first, n), all_keys, batch_stats


def loss_fn(model: common.ProjectionModel, config: ml_collections.ConfigDict, params, state,
            batch: dict[str, Array], rng: Array, axis_name: str | None):
    """InfoNCE of view-1 queries against their view-2 keys and the queue, plus the online probe.

    Returns (loss, (changes, metrics)): the query BatchNorm statistics, and in `extra` the key
    BatchNorm statistics and the queue with this global batch's keys enqueued.
    """
    extra = state.extra
    groups = config.model.bn_splits
    (_, queries, probe_logits), batch_stats = _apply_in_groups(
        model, {"params": params, "batch_stats": state.batch_stats}, batch["view1"], groups)
    key_variables = {"params": extra["key_params"], "batch_stats": extra["key_batch_stats"]}

    def key_fn(images):
        (_, keys, _), stats = _apply_in_groups(model, key_variables, images, groups)
        return keys, stats

    if config.model.moco_bn == "shuffle":
        keys, all_keys, key_batch_stats = _shuffled_keys(key_fn, batch["view2"], rng, axis_name)
        if axis_name is not None:
            batch_stats, key_batch_stats = jax.lax.pmean((batch_stats, key_batch_stats),
                                                         axis_name)
    else:
        keys, key_batch_stats = key_fn(batch["view2"])
        all_keys = losses.gather(keys, axis_name)
    keys = jax.lax.stop_gradient(keys)
    contrastive, metrics = losses.info_nce(queries, keys, config.loss.temperature,
                                           negatives=extra["queue"], axis_name=axis_name,
                                           with_metrics=True)
    probe_loss, probe_metrics = common.probe_loss_and_metrics(probe_logits, batch["label"])
    queue = jax.lax.dynamic_update_slice_in_dim(
        extra["queue"], jax.lax.stop_gradient(losses.l2_normalize(all_keys)),
        extra["queue_ptr"], axis=0)
    new_extra = {**extra, "key_batch_stats": key_batch_stats, "queue": queue,
                 "queue_ptr": (extra["queue_ptr"] + all_keys.shape[0]) % queue.shape[0]}
    metrics = {**metrics, **probe_metrics, "contrastive_loss": contrastive,
               "moco_momentum": common.momentum_at(config, state.step)}
    return contrastive + probe_loss, ({"batch_stats": batch_stats, "extra": new_extra}, metrics)


def after_update(config: ml_collections.ConfigDict, state):
    """Moves the key encoder towards the updated query encoder: k <- m k + (1 - m) q."""
    m = common.momentum_at(config, state.step)
    key_params = optax.incremental_update(state.params, state.extra["key_params"], 1.0 - m)
    return state.replace(extra={**state.extra, "key_params": key_params})


METHOD = Method(name="moco", build_model=build_model,
                init_variables=common.init_image_variables,
                batch_shapes=common.two_view_batch_shapes, loss_fn=loss_fn,
                encoder_features=common.encoder_features, validate=validate,
                init_extra=init_extra, after_update=after_update)
