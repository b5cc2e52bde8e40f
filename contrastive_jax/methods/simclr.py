"""SimCLR: two views of each image, one encoder + projection head, NT-Xent over all devices.

Both views go through the network as one batch, so BatchNorm (synchronised over the `data`
axis: SimCLR's global BN) sees all 2N views. An online linear probe on stop-gradient features
tracks representation quality during training without shaping the encoder.
"""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from contrastive_jax import losses
from contrastive_jax.methods import Method
from contrastive_jax.parallel import grad_cache
from contrastive_jax.models import heads, resnet

Array = jax.Array
DECOUPLED = ("none", "dcl", "dclw")  # loss.decoupled: NT-Xent, DCL, DCLW (Yeh et al. 2022)


class SimCLRModel(nn.Module):
    """Encoder -> (features, projection, probe logits)."""

    encoder: nn.Module
    projection: nn.Module
    num_classes: int

    @nn.compact
    def __call__(self, images: Array, train: bool) -> tuple[Array, Array, Array]:
        features = self.encoder(images, train=train)
        projection = self.projection(features, train=train)
        probe_logits = heads.LinearProbe(self.num_classes, name="probe")(features)
        return features, projection, probe_logits


def build_model(config: ml_collections.ConfigDict, num_classes: int,
                axis_name: str | None) -> SimCLRModel:
    """The ResNet encoder and projection head that `config.model` describes."""
    model_config = config.model
    projection = heads.ProjectionHead(
        num_layers=model_config.head_layers, hidden_dim=model_config.get("head_hidden_dim"),
        out_dim=model_config.head_out_dim, use_bn=model_config.get("head_bn", True),
        bn_axis_name=axis_name, dtype=model_dtype(config))
    return SimCLRModel(encoder=build_encoder(config, axis_name), projection=projection,
                       num_classes=num_classes)


def model_dtype(config: ml_collections.ConfigDict) -> jnp.dtype:
    """The compute dtype of `config.model` (float32 unless set)."""
    return jnp.dtype(config.model.get("dtype", "float32"))


def build_encoder(config: ml_collections.ConfigDict, axis_name: str | None) -> nn.Module:
    """The ResNet of `config.model`, BatchNorm synchronised over `axis_name`."""
    model_config = config.model
    return resnet.resnet(
        model_config.name, width=model_config.width, stem=model_config.stem,
        base_width=model_config.get("base_width", 64), bn_axis_name=axis_name,
        zero_init_residual=model_config.get("zero_init_residual", False),
        dtype=model_dtype(config))


def init_variables(model: SimCLRModel, config: ml_collections.ConfigDict, rng: Array) -> dict:
    size = config.data.image_size
    return model.init(rng, jnp.zeros((1, size, size, 3), jnp.float32), train=False)


def batch_shapes(config: ml_collections.ConfigDict, n: int) -> dict[str, jax.ShapeDtypeStruct]:
    size = config.data.image_size
    view = jax.ShapeDtypeStruct((n, size, size, 3), jnp.float32)
    return {"view1": view, "view2": view, "label": jax.ShapeDtypeStruct((n,), jnp.int32)}


def probe_loss_and_metrics(probe_logits: Array, labels: Array) -> tuple[Array, dict[str, Array]]:
    """Cross-entropy and top-1 of the online linear probe (on stop-gradient features)."""
    loss = optax.softmax_cross_entropy_with_integer_labels(
        probe_logits.astype(jnp.float32), labels).mean()
    return loss, {"probe_loss": loss,
                  "probe_top1": jnp.mean(jnp.argmax(probe_logits, -1) == labels)}


def two_view_parts(model: nn.Module,
                   contrastive_fn: Callable[[Array, Array, Array], tuple[Array, dict]],
                   multiplier: float = 1.0) -> grad_cache.LossParts:
    """Both views through the network as one batch (so BatchNorm sees all 2N views), then
    `contrastive_fn(z1, z2, labels)` of their projections times `multiplier` plus the online
    probe's cross-entropy. "contrastive_loss" in the metrics is the multiplied loss, the one
    optimised."""

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


def validate(config: ml_collections.ConfigDict) -> None:
    """Refuses a `loss.decoupled` that is not a loss, or a DCLW sigma <= 0."""
    decoupled = config.loss.get("decoupled", "none")
    if decoupled not in DECOUPLED:
        raise ValueError(f"config.loss.decoupled must be one of {DECOUPLED}, got {decoupled!r}")
    if decoupled == "dclw" and config.loss.dclw_sigma <= 0:
        raise ValueError(f"config.loss.dclw_sigma must be > 0, got {config.loss.dclw_sigma}")


def contrastive_loss(config: ml_collections.ConfigDict, axis_name: str | None
                     ) -> Callable[[Array, Array, Array], tuple[Array, dict]]:
    """`(z1, z2, labels) -> (loss, metrics)`: NT-Xent, or with `loss.decoupled` DCL / DCLW."""
    temperature = config.loss.temperature
    decoupled = config.loss.get("decoupled", "none")
    if decoupled == "none":
        return lambda z1, z2, labels: losses.nt_xent(z1, z2, temperature, axis_name=axis_name,
                                                     with_metrics=True)
    sigma = config.loss.dclw_sigma if decoupled == "dclw" else None
    detach = config.loss.get("dclw_detach_weight", True)
    return lambda z1, z2, labels: losses.dcl(z1, z2, temperature, weight_sigma=sigma,
                                             detach_weight=detach, axis_name=axis_name,
                                             with_metrics=True)


def loss_parts(model: SimCLRModel, config: ml_collections.ConfigDict,
               axis_name: str | None) -> grad_cache.LossParts:
    """NT-Xent (or DCL / DCLW, `loss.decoupled`) of the two views' projections over all devices
    (times `loss.multiplier`: 2.0 is the reference's sum of both directions), plus the online
    probe."""
    return two_view_parts(model, contrastive_loss(config, axis_name),
                          multiplier=config.loss.get("multiplier", 1.0))


def loss_fn(model: SimCLRModel, config: ml_collections.ConfigDict, params, state,
            batch: dict[str, Array], rng: Array, axis_name: str | None):
    """`loss_parts` in one pass; metrics are this device's."""
    del rng
    return grad_cache.one_pass(loss_parts(model, config, axis_name), params, state.batch_stats,
                               batch)


def encoder_features(model: nn.Module) -> Callable[[dict, Array], Array]:
    """`(variables, images) -> encoder features` in inference mode, for kNN / linear probes:
    the model's `encoder` alone (no heads computed), so every image method with one shares it."""

    def encode(variables, images):
        features = model.apply(variables, images, train=False,
                               method=lambda module, x, train: module.encoder(x, train=train))
        return features.astype(jnp.float32)

    return encode


METHOD = Method(name="simclr", build_model=build_model, init_variables=init_variables,
                batch_shapes=batch_shapes, loss_fn=loss_fn, encoder_features=encoder_features,
                validate=validate, loss_parts=loss_parts)
