"""SigLIP (Zhai et al. 2023): the pairwise sigmoid loss over every image-text pair of the global
batch (`losses.siglip_loss`), with a learnable log scale t' (init log 10) and bias b (init -10).
`loss.siglip_impl = "ring"` passes text blocks around the devices so that no device holds more
than its own n x n block of logits; "all_gather" holds n x N."""

from __future__ import annotations

import math

import jax
import ml_collections

from contrastive_jax import losses
from contrastive_jax.methods import Method, image_text
from contrastive_jax.parallel import grad_cache

IMPLS = ("all_gather", "ring")


def validate(config: ml_collections.ConfigDict) -> None:
    image_text.validate_text_dropout(config)
    if config.loss.init_scale <= 0:
        raise ValueError(f"config.loss.init_scale must be > 0, got {config.loss.init_scale}")
    if config.loss.siglip_impl not in IMPLS:
        raise ValueError(f"config.loss.siglip_impl must be one of {IMPLS}, got "
                         f"{config.loss.siglip_impl!r}")


def build_model(config: ml_collections.ConfigDict, num_classes: int,
                axis_name: str | None) -> image_text.ImageTextModel:
    return image_text.build_model(config, num_classes, axis_name,
                                  init_log_scale=math.log(config.loss.init_scale),
                                  init_bias=config.loss.init_bias)


def loss_parts(model: image_text.ImageTextModel, config: ml_collections.ConfigDict,
               axis_name: str | None, dropout_rng: jax.Array | None = None
               ) -> grad_cache.LossParts:
    """SigLIP's loss over the global batch (and SimCSE's term, if on); metrics include the
    scale and bias. The text tower's dropout draws from `dropout_rng` (gradient caching and
    fsdp pass none: `image_text.validate_text_dropout` keeps dropout off there)."""
    return image_text.pair_parts(
        model, lambda img, txt, scale, bias: losses.siglip_loss(
            img, txt, scale, bias, axis_name=axis_name, impl=config.loss.siglip_impl,
            with_metrics=True), config, axis_name, dropout_rng)


def loss_fn(model: image_text.ImageTextModel, config: ml_collections.ConfigDict, params, state,
            batch: dict[str, jax.Array], rng: jax.Array, axis_name: str | None):
    """`loss_parts` in one pass, text dropout drawn from this device's fold of `rng`."""
    parts = loss_parts(model, config, axis_name, image_text.dropout_key(rng, axis_name))
    return grad_cache.one_pass(parts, params, state.batch_stats, batch)


METHOD = Method(name="siglip", build_model=build_model,
                init_variables=image_text.init_variables, batch_shapes=image_text.batch_shapes,
                loss_fn=loss_fn, encoder_features=image_text.encoder_features,
                validate=validate, loss_parts=loss_parts, image_text=True,
                embed_images=image_text.embed_images, embed_texts=image_text.embed_texts)
