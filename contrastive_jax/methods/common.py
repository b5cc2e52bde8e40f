"""What several methods share, so that a method module imports this, never another method: the
encoders, the two image networks built on them (encoder -> projection head, and the same with a
predictor on top) with their online linear probe, the two-view batch, the EMA momentum of
momentum encoders, and BatchNorm one view at a time.
"""

from __future__ import annotations

import math
import operator
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from contrastive_jax import losses
from contrastive_jax.models import heads, resnet, vit
from contrastive_jax.parallel import grad_cache

Array = jax.Array
MOMENTUM_SCHEDULES = ("constant", "cosine")


def model_dtype(config: ml_collections.ConfigDict) -> jnp.dtype:
    """The compute dtype of `config.model` (float32 unless set)."""
    return jnp.dtype(config.model.dtype)


def layer_options(model_config: ml_collections.ConfigDict) -> dict:
    """How the transformer towers run their blocks (`model.scan_layers`, `model.remat_policy`)."""
    return {"scan_layers": model_config.get("scan_layers", False),
            "remat_policy": model_config.get("remat_policy", "none")}


def build_encoder(config: ml_collections.ConfigDict, axis_name: str | None) -> nn.Module:
    """The ResNet of `config.model`, BatchNorm synchronised over `axis_name`."""
    model_config = config.model
    return resnet.resnet(
        model_config.name, width=model_config.width, stem=model_config.stem,
        base_width=model_config.base_width, bn_axis_name=axis_name,
        zero_init_residual=model_config.zero_init_residual,
        dtype=model_dtype(config))


def build_image_encoder(config: ml_collections.ConfigDict, axis_name: str | None) -> nn.Module:
    """A ViT (`model.name = "vit"`, `model.variant` such as "B/16"), else `build_encoder`'s
    ResNet."""
    model_config = config.model
    if model_config.name == "vit":
        return vit.vit(model_config.variant, pool=model_config.pool, depth=model_config.depth,
                       dtype=model_dtype(config), **layer_options(model_config))
    return build_encoder(config, axis_name)


class ProjectionModel(nn.Module):
    """Encoder -> (features, projection, probe logits): SimCLR's network, which SupCon, MoCo v2
    and NNCLR build on."""

    encoder: nn.Module
    projection: nn.Module
    num_classes: int

    @nn.compact
    def __call__(self, images: Array, train: bool) -> tuple[Array, Array, Array]:
        features = self.encoder(images, train=train)
        projection = self.projection(features, train=train)
        probe_logits = heads.LinearProbe(self.num_classes, name="probe")(features)
        return features, projection, probe_logits


def build_projection_model(config: ml_collections.ConfigDict, num_classes: int,
                           axis_name: str | None) -> ProjectionModel:
    """The ResNet encoder and projection head that `config.model` describes."""
    model_config = config.model
    projection = heads.ProjectionHead(
        num_layers=model_config.head_layers, hidden_dim=model_config.head_hidden_dim,
        out_dim=model_config.head_out_dim, use_bn=model_config.head_bn,
        bn_axis_name=axis_name, dtype=model_dtype(config))
    return ProjectionModel(encoder=build_encoder(config, axis_name), projection=projection,
                           num_classes=num_classes)


class PredictorModel(nn.Module):
    """Encoder -> projector -> predictor, and the online probe: the network of BYOL and
    SimSiam. `project` is a target network's path (no predictor)."""

    encoder: nn.Module
    projection: nn.Module
    predictor: nn.Module
    num_classes: int

    def project(self, images: Array, train: bool) -> Array:
        return self.projection(self.encoder(images, train=train), train=train)

    @nn.compact
    def __call__(self, images: Array, train: bool) -> dict[str, Array]:
        features = self.encoder(images, train=train)
        projection = self.projection(features, train=train)
        return {"features": features, "projection": projection,
                "prediction": self.predictor(projection, train=train),
                "probe_logits": heads.LinearProbe(self.num_classes, name="probe")(features)}


def build_predictor_model(config: ml_collections.ConfigDict, num_classes: int,
                          axis_name: str | None, *, projector_output_bn: bool
                          ) -> PredictorModel:
    """The ResNet, projector (`model.head_*`) and predictor (`model.predictor_*`, out to the
    projection's width) of `config.model`; `projector_output_bn` is SimSiam's projector.
    `model.mlp_bias = "hidden"` puts the MLPs' bias on the hidden Dense and none on the output
    one (BYOL's reference); "output" the other way round."""
    model_config, dtype = config.model, model_dtype(config)
    hidden_bias = model_config.get("mlp_bias", "output") == "hidden"
    biases = dict(hidden_bias=hidden_bias, output_bias=not hidden_bias)
    projection = heads.BatchNormMLP(
        num_layers=model_config.head_layers, hidden_dim=model_config.head_hidden_dim,
        out_dim=model_config.head_out_dim, output_bn=projector_output_bn,
        bn_axis_name=axis_name, dtype=dtype, **biases)
    predictor = heads.BatchNormMLP(
        num_layers=model_config.predictor_layers, hidden_dim=model_config.predictor_hidden_dim,
        out_dim=model_config.head_out_dim, bn_axis_name=axis_name, dtype=dtype, **biases)
    return PredictorModel(encoder=build_encoder(config, axis_name), projection=projection,
                          predictor=predictor, num_classes=num_classes)


def check_mlp_layers(config: ml_collections.ConfigDict) -> None:
    """The projector and predictor need at least one layer each."""
    for key in ("head_layers", "predictor_layers"):
        if config.model[key] < 1:
            raise ValueError(f"config.model.{key} must be >= 1, got {config.model[key]}")


def init_image_variables(model: nn.Module, config: ml_collections.ConfigDict,
                         rng: Array) -> dict:
    """The variables of an image network, initialised on one image of `data.image_size`."""
    size = config.data.image_size
    return model.init(rng, jnp.zeros((1, size, size, 3), jnp.float32), train=False)


def two_view_batch_shapes(config: ml_collections.ConfigDict, n: int
                          ) -> dict[str, jax.ShapeDtypeStruct]:
    """Two views of n images and their labels."""
    size = config.data.image_size
    view = jax.ShapeDtypeStruct((n, size, size, 3), jnp.float32)
    return {"view1": view, "view2": view, "label": jax.ShapeDtypeStruct((n,), jnp.int32)}


def encoder_features(model: nn.Module) -> Callable[[dict, Array], Array]:
    """`(variables, images) -> encoder features` in inference mode, for kNN / linear probes:
    the model's `encoder` alone (no heads computed), so every image method with one shares it."""

    def encode(variables, images):
        features = model.apply(variables, images, train=False,
                               method=lambda module, x, train: module.encoder(x, train=train))
        return features.astype(jnp.float32)

    return encode


def probe_loss_and_metrics(probe_logits: Array, labels: Array) -> tuple[Array, dict[str, Array]]:
    """Cross-entropy and top-1 of the online linear probe (on stop-gradient features)."""
    loss = optax.softmax_cross_entropy_with_integer_labels(
        probe_logits.astype(jnp.float32), labels).mean()
    return loss, {"probe_loss": loss,
                  "probe_top1": jnp.mean(jnp.argmax(probe_logits, -1) == labels)}


def probe_loss_both_views(probe_logits: Sequence[Array], labels: Array
                          ) -> tuple[Array, dict]:
    """The online probe's cross-entropy over the probe logits of every view."""
    return probe_loss_and_metrics(jnp.concatenate(probe_logits),
                                  jnp.concatenate([labels] * len(probe_logits)))


def two_view_parts(model: nn.Module,
                   contrastive_fn: Callable[[Array, Array, Array], tuple[Array, dict]],
                   multiplier: float = 1.0) -> grad_cache.LossParts:
    """Both views through a `ProjectionModel` as one batch (so BatchNorm sees all 2N views),
    then `contrastive_fn(z1, z2, labels)` of their projections times `multiplier` plus the
    online probe's cross-entropy. "contrastive_loss" in the metrics is the multiplied loss, the
    one optimised."""

    def embed(params, batch_stats, batch):
        n = batch["view1"].shape[0]
        images = jnp.concatenate([batch["view1"], batch["view2"]], axis=0)
        (_, projection, probe_logits), updates = model.apply(
            {"params": params, "batch_stats": batch_stats}, images, train=True,
            mutable=["batch_stats"])
        outputs = {"z1": projection[:n], "z2": projection[n:], "probe1": probe_logits[:n],
                   "probe2": probe_logits[n:]}
        return outputs, updates["batch_stats"]

    def loss_on(params, outputs, batch):
        del params
        contrastive, metrics = contrastive_fn(outputs["z1"], outputs["z2"], batch["label"])
        contrastive = multiplier * contrastive
        probe_loss, probe_metrics = probe_loss_and_metrics(
            jnp.concatenate([outputs["probe1"], outputs["probe2"]]),
            jnp.concatenate([batch["label"], batch["label"]]))
        return contrastive + probe_loss, {**metrics, **probe_metrics,
                                          "contrastive_loss": contrastive}

    return grad_cache.LossParts(embed, loss_on)


def apply_per_view(model: nn.Module, params, batch_stats, views: Sequence[Array],
                   method: Callable | None = None) -> tuple[list, dict]:
    """Each view through `model` in train mode with BatchNorm statistics of its own (vmapped
    over the views, so the step compiles the network once). Returns (the outputs of every view,
    the new batch_stats: the mean of the views' running-average updates)."""
    apply = lambda images: model.apply(  # noqa: E731
        {"params": params, "batch_stats": batch_stats}, images, train=True, method=method,
        mutable=["batch_stats"])
    outputs, updates = jax.vmap(apply)(jnp.stack(views))
    per_view = [jax.tree.map(operator.itemgetter(v), outputs) for v in range(len(views))]
    return per_view, jax.tree.map(lambda s: s.mean(0), updates["batch_stats"])


def output_std(z: Array) -> Array:
    """The std over the batch of the L2-normalised outputs, averaged over channels: about
    1/sqrt(d) for spread-out outputs and 0 for collapsed ones (Chen & He 2021, figure 2)."""
    return jnp.mean(jnp.std(losses.l2_normalize(z), axis=0))


def check_momentum(config: ml_collections.ConfigDict) -> None:
    """Refuses an EMA momentum outside [0, 1] or an unknown momentum schedule."""
    if not 0.0 <= config.loss.momentum <= 1.0:
        raise ValueError(f"config.loss.momentum must be in [0, 1], got {config.loss.momentum}")
    if config.loss.momentum_schedule not in MOMENTUM_SCHEDULES:
        raise ValueError(f"config.loss.momentum_schedule must be one of {MOMENTUM_SCHEDULES}, "
                         f"got {config.loss.momentum_schedule!r}")


def momentum_at(config: ml_collections.ConfigDict, step: Array) -> Array:
    """The EMA momentum at `step`: constant m, or 1 - (1 - m) (cos(pi t / T) + 1) / 2 (BYOL's
    and MoCo v3's schedule), m = `loss.momentum`, T = `total_steps`."""
    base = config.loss.momentum
    if config.loss.momentum_schedule == "constant":
        return jnp.asarray(base, jnp.float32)
    progress = jnp.minimum(step / config.total_steps, 1.0)
    return 1.0 - (1.0 - base) * (jnp.cos(math.pi * progress) + 1.0) / 2.0
