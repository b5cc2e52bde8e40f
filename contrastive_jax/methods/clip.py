"""CLIP (Radford et al. 2021): symmetric InfoNCE between image and text embeddings of the global
batch (`losses.clip_loss`), a learnable log scale initialised at log(1 / 0.07) and clamped at
`loss.max_scale` (100) after every step, as OpenAI's training does."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections

from contrastive_jax import losses
from contrastive_jax.methods import Method, image_text
from contrastive_jax.parallel import grad_cache


def build_model(config: ml_collections.ConfigDict, num_classes: int,
                axis_name: str | None) -> image_text.ImageTextModel:
    return image_text.build_model(config, num_classes, axis_name,
                                  init_log_scale=math.log(config.loss.init_scale))


def loss_parts(model: image_text.ImageTextModel, config: ml_collections.ConfigDict,
               axis_name: str | None, dropout_rng: jax.Array | None = None
               ) -> grad_cache.LossParts:
    """CLIP's loss over the global batch (and SimCSE's term, if on); metrics include the
    scale. The text tower's dropout draws from `dropout_rng` (gradient caching and fsdp pass
    none: `image_text.validate_text_dropout` keeps dropout off there)."""
    return image_text.pair_parts(
        model, lambda img, txt, scale, bias: losses.clip_loss(img, txt, scale,
                                                              axis_name=axis_name,
                                                              with_metrics=True),
        config, axis_name, dropout_rng)


def loss_fn(model: image_text.ImageTextModel, config: ml_collections.ConfigDict, params, state,
            batch: dict[str, jax.Array], rng: jax.Array, axis_name: str | None):
    """`loss_parts` in one pass, text dropout drawn from this device's fold of `rng`."""
    parts = loss_parts(model, config, axis_name, image_text.dropout_key(rng, axis_name))
    return grad_cache.one_pass(parts, params, state.batch_stats, batch)


def after_update(config: ml_collections.ConfigDict, state):
    """Clamps the log scale at log(loss.max_scale)."""
    params = dict(state.params)
    params["log_scale"] = jnp.minimum(params["log_scale"], math.log(config.loss.max_scale))
    return state.replace(params=params)


def validate(config: ml_collections.ConfigDict) -> None:
    image_text.validate_text_dropout(config)
    if not 0 < config.loss.init_scale <= config.loss.max_scale:
        raise ValueError(f"config.loss.init_scale ({config.loss.init_scale}) must be in "
                         f"(0, loss.max_scale = {config.loss.max_scale}]")


METHOD = Method(name="clip", build_model=build_model,
                init_variables=image_text.init_variables, batch_shapes=image_text.batch_shapes,
                loss_fn=loss_fn, encoder_features=image_text.encoder_features,
                validate=validate, after_update=after_update, loss_parts=loss_parts,
                image_text=True, embed_images=image_text.embed_images,
                embed_texts=image_text.embed_texts)
