"""MoCo v3 (Chen, Xie and He 2021, "An Empirical Study of Training Self-Supervised Vision
Transformers"): a predictor on top of the query network, a momentum encoder, no queue.

The online network is a backbone (a ViT, or a ResNet) + a projector MLP (`model.head_layers`,
4096 hidden, 256 out; BatchNorm in the hidden layers and one without scale or bias at the end)
+ a predictor MLP (`model.predictor_layers`). The momentum encoder is an EMA of the backbone and
projector, k <- m k + (1 - m) q after every optimizer step, m rising from `loss.momentum` to 1 on
a cosine (`common.momentum_at`). Each view goes through both networks on its own, so BatchNorm
(synchronised over the `data` axis, as the reference's SyncBatchNorm) sees one view of the
global batch at a time. The loss is symmetric InfoNCE against the keys of all devices,

    loss = multiplier * (ctr(q1, k2) + ctr(q2, k1)),  ctr = losses.info_nce(q, k, T),

with multiplier 2T by default (`loss.multiplier`: the moco-v3 reference scales its
cross-entropy by 2T so that the gradient's size does not depend on T). The momentum encoder and
its BatchNorm statistics live in `TrainState.extra`; an online linear probe on stop-gradient
features logs `probe_top1`.

`model.freeze_patch_embed` keeps the ViT's patch projection at its random initialisation (the
paper's fix for the instability of ViT training, section 4.2): `frozen_params` marks it, and the
optimizer gives it no update at all (train_step.make_optimizer, optim.freeze).

Differences from the reference: the ViT's position embeddings are learned, not fixed 2-D
sin-cos; the patch projection keeps flax's initialisation; without its last BatchNorm (a ResNet
backbone, or `model.predictor_output_bn = False`) the predictor's output Dense has a bias
(heads.BatchNormMLP's form; the reference's has none).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from contrastive_jax import losses
from contrastive_jax.methods import Method, common
from contrastive_jax.models import heads

Array = jax.Array
MOMENTUM_GROUPS = ("encoder", "projection")  # What the momentum encoder averages.
PATCH_EMBEDDING = ("encoder", "patch_embedding")  # The ViT's patch projection, by path.


class MoCoV3Model(nn.Module):
    """Backbone -> projector -> predictor, and the online probe on the backbone's features."""

    encoder: nn.Module
    projection: nn.Module
    predictor: nn.Module
    num_classes: int

    def setup(self) -> None:
        self.probe = heads.LinearProbe(self.num_classes)

    def __call__(self, images: Array, train: bool) -> tuple[Array, Array, Array]:
        """(features, prediction, probe logits) of the online network."""
        features = self.encoder(images, train=train)
        prediction = self.predictor(self.projection(features, train=train), train=train)
        return features, prediction, self.probe(features)

    def momentum_embed(self, images: Array, train: bool) -> Array:
        """The projection without the predictor: what the momentum encoder computes."""
        return self.projection(self.encoder(images, train=train), train=train)


def validate(config: ml_collections.ConfigDict) -> None:
    """Refuses MoCo v3 settings that cannot run, naming the field."""
    common.check_momentum(config)
    if config.model.freeze_patch_embed and config.model.name != "vit":
        raise ValueError(f"config.model.freeze_patch_embed freezes a ViT's patch projection; "
                         f"model.name is {config.model.name!r}: set it False")
    if config.loss.multiplier is not None and config.loss.multiplier <= 0:
        raise ValueError(f"config.loss.multiplier must be > 0, got {config.loss.multiplier}")


def build_model(config: ml_collections.ConfigDict, num_classes: int,
                axis_name: str | None) -> MoCoV3Model:
    """The backbone, projector and predictor of `config.model`; BatchNorm over `axis_name`."""
    model_config = config.model
    dtype = jnp.dtype(model_config.dtype)
    projection = heads.BatchNormMLP(
        num_layers=model_config.head_layers, hidden_dim=model_config.head_hidden_dim,
        out_dim=model_config.head_out_dim, output_bn=True, bn_axis_name=axis_name, dtype=dtype)
    predictor = heads.BatchNormMLP(
        num_layers=model_config.predictor_layers, hidden_dim=model_config.predictor_hidden_dim,
        out_dim=model_config.head_out_dim, output_bn=predictor_output_bn(config),
        bn_axis_name=axis_name, dtype=dtype)
    return MoCoV3Model(encoder=common.build_image_encoder(config, axis_name),
                       projection=projection, predictor=predictor, num_classes=num_classes)


def predictor_output_bn(config: ml_collections.ConfigDict) -> bool:
    """`model.predictor_output_bn`, or where None the reference's: the ViT predictor ends in
    BatchNorm(affine=False) (`_build_mlp(..., last_bn=True)`), the ResNet one does not."""
    value = config.model.get("predictor_output_bn")
    return config.model.name == "vit" if value is None else bool(value)


def _momentum_part(tree: dict) -> dict:
    """The backbone's and projector's entries of a params or batch_stats tree."""
    return {name: tree[name] for name in MOMENTUM_GROUPS if name in tree}


def init_extra(config: ml_collections.ConfigDict, variables: dict, rng: Array) -> dict:
    """The momentum encoder: a copy of the backbone and projector, with their BN statistics."""
    del config, rng
    return {"key_params": _momentum_part(variables["params"]),
            "key_batch_stats": _momentum_part(variables.get("batch_stats", {}))}


def frozen_params(config: ml_collections.ConfigDict, params: Any) -> Any:
    """True on the ViT's patch projection (kernel and bias) with `model.freeze_patch_embed`."""
    freeze = config.model.freeze_patch_embed

    def is_frozen(path, _):
        return freeze and tuple(getattr(key, "key", None) for key in path[:2]) == PATCH_EMBEDDING

    return jax.tree_util.tree_map_with_path(is_frozen, params)


def momentum(config: ml_collections.ConfigDict, step: Array) -> Array:
    """The EMA momentum applied after optimizer step `step`: `common.momentum_at(step + 1)`, so
    that the encoder of step t + 1's keys moved with m(t + 1), as the reference moves it at the
    start of each iteration with that iteration's m."""
    return common.momentum_at(config, step + 1)


def loss_multiplier(config: ml_collections.ConfigDict) -> float:
    """`loss.multiplier`, or 2 T when it is None (the reference's scale)."""
    multiplier = config.loss.multiplier
    return 2.0 * config.loss.temperature if multiplier is None else multiplier


def symmetric_loss(q1: Array, q2: Array, k1: Array, k2: Array, temperature: float,
                   multiplier: float, axis_name: str | None = None) -> tuple[Array, dict]:
    """multiplier * (ctr(q1, k2) + ctr(q2, k1)), ctr the InfoNCE of queries against the keys
    of all devices; metrics are those of ctr(q1, k2)."""
    loss12, metrics = losses.info_nce(q1, k2, temperature, axis_name=axis_name,
                                      with_metrics=True)
    loss21 = losses.info_nce(q2, k1, temperature, axis_name=axis_name)
    return multiplier * (loss12 + loss21), metrics


def _online(model: MoCoV3Model, params, batch_stats, images: Array):
    """(prediction, probe logits, new batch_stats) of the online network on one view."""
    (_, prediction, probe_logits), updates = model.apply(
        {"params": params, "batch_stats": batch_stats}, images, train=True,
        mutable=["batch_stats"])
    return prediction, probe_logits, updates["batch_stats"]


def _keys(model: MoCoV3Model, params, batch_stats, images: Array):
    """(keys, new batch_stats) of the momentum encoder on one view, out of the gradient."""
    keys, updates = model.apply({"params": params, "batch_stats": batch_stats}, images,
                                train=True, method=MoCoV3Model.momentum_embed,
                                mutable=["batch_stats"])
    return jax.lax.stop_gradient(keys), updates.get("batch_stats", {})


def loss_fn(model: MoCoV3Model, config: ml_collections.ConfigDict, params, state,
            batch: dict[str, Array], rng: Array, axis_name: str | None):
    """The symmetric loss of both views' predictions and keys, plus the online probe.

    Returns (loss, (changes, metrics)): the online and (in `extra`) the momentum encoder's
    BatchNorm statistics, each updated by view 1 and then view 2, as the reference runs them.
    """
    del rng
    extra = state.extra
    q1, probe1, batch_stats = _online(model, params, state.batch_stats, batch["view1"])
    q2, probe2, batch_stats = _online(model, params, batch_stats, batch["view2"])
    k1, key_stats = _keys(model, extra["key_params"], extra["key_batch_stats"], batch["view1"])
    k2, key_stats = _keys(model, extra["key_params"], key_stats, batch["view2"])
    contrastive, metrics = symmetric_loss(q1, q2, k1, k2, config.loss.temperature,
                                          loss_multiplier(config), axis_name)
    probe_loss, probe_metrics = common.probe_loss_and_metrics(
        jnp.concatenate([probe1, probe2]), jnp.concatenate([batch["label"], batch["label"]]))
    metrics = {**metrics, **probe_metrics, "contrastive_loss": contrastive,
               "moco_momentum": momentum(config, state.step)}
    changes = {"batch_stats": batch_stats, "extra": {**extra, "key_batch_stats": key_stats}}
    return contrastive + probe_loss, (changes, metrics)


def after_update(config: ml_collections.ConfigDict, state):
    """Moves the momentum encoder towards the updated backbone and projector:
    k <- m k + (1 - m) q, m = `momentum(config, step)`."""
    m = momentum(config, state.step)
    key_params = optax.incremental_update(_momentum_part(state.params),
                                          state.extra["key_params"], 1.0 - m)
    return state.replace(extra={**state.extra, "key_params": key_params})


METHOD = Method(name="moco_v3", build_model=build_model,
                init_variables=common.init_image_variables,
                batch_shapes=common.two_view_batch_shapes, loss_fn=loss_fn,
                encoder_features=common.encoder_features, validate=validate,
                init_extra=init_extra, after_update=after_update, frozen_params=frozen_params)
