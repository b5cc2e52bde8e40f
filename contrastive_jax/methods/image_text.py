"""What CLIP and SigLIP share: an image tower and a text tower, each with a linear projection
into one embedding space, and a learnable log scale (and, for SigLIP, a bias) on the cosines.

The image tower is a ViT (`model.name = "vit"`, `model.variant` such as "B/16") or a ResNet
(`model.name = "resnet50"` ...; its BatchNorm is synchronised over the `data` axis); the text
tower is a transformer over the tokenizer's ids (`models/text.py`). The methods differ only in
the loss, the initial scale / bias and what `after_update` does, so `clip.py` and `siglip.py`
are a few lines on top of this module.

SimCSE (Gao et al. 2021, unsupervised) is an option of both: with `model.text_dropout` > 0 (the
paper's 0.1) and `loss.simcse_weight` > 0, each caption goes through the text tower twice with
different dropout masks, and the weight times the InfoNCE of the two views (each caption's
second view its positive, the other captions' of all devices its negatives, one direction as
the paper's, temperature `loss.simcse_temperature`, the paper's 0.05) is added to the
image-text loss. The masks are drawn from the step key folded with the device index.
"""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from contrastive_jax import losses
from contrastive_jax.methods import common
from contrastive_jax.models import text
from contrastive_jax.parallel import grad_cache

Array = jax.Array
BYTE_VOCAB_SIZE = 259  # tokenizer.ByteTokenizer's, kept here so the model builds without TF.


class ImageTextModel(nn.Module):
    """Two towers, two projections, a log scale and an optional bias."""

    image_encoder: nn.Module
    text_encoder: nn.Module
    embed_dim: int
    init_log_scale: float
    init_bias: float | None = None
    dtype: jnp.dtype = jnp.float32

    def setup(self):
        self.image_projection = nn.Dense(self.embed_dim, use_bias=False, dtype=self.dtype)
        self.text_projection = nn.Dense(self.embed_dim, use_bias=False, dtype=self.dtype)
        self.log_scale = self.param("log_scale", nn.initializers.constant(self.init_log_scale),
                                    ())
        if self.init_bias is not None:
            self.bias = self.param("bias", nn.initializers.constant(self.init_bias), ())

    def embed_images(self, images: Array, train: bool = False) -> Array:
        return self.image_projection(self.image_encoder(images, train=train))

    def embed_texts(self, tokens: Array, train: bool = False) -> Array:
        return self.text_projection(self.text_encoder(tokens, train=train))

    def __call__(self, images: Array, tokens: Array, train: bool):
        """(image embeddings, text embeddings, scale, bias or None); embeddings unnormalised."""
        bias = self.bias if self.init_bias is not None else None
        return (self.embed_images(images, train), self.embed_texts(tokens, train),
                jnp.exp(self.log_scale), bias)


def vocab_size(data_config: ml_collections.ConfigDict) -> int:
    """The text tower's vocabulary: the byte tokenizer's, or the SentencePiece model's + 1."""
    if data_config.tokenizer == "bytes":
        return BYTE_VOCAB_SIZE
    from contrastive_jax.data import tokenizer  # Reads the SentencePiece model file.
    return tokenizer.get_tokenizer(data_config).vocab_size


def build_model(config: ml_collections.ConfigDict, num_classes: int, axis_name: str | None,
                init_log_scale: float, init_bias: float | None = None) -> ImageTextModel:
    """The towers that `config.model` describes, projecting into `model.embed_dim`."""
    del num_classes
    model_config = config.model
    dtype = jnp.dtype(model_config.dtype)
    text_encoder = text.text_transformer(
        vocab_size=vocab_size(config.data), max_len=config.data.max_text_len,
        width=model_config.text_width, depth=model_config.text_depth,
        num_heads=model_config.text_heads, mlp_dim=model_config.text_mlp_dim,
        causal=model_config.text_causal, pool=model_config.text_pool, dtype=dtype,
        dropout_rate=model_config.get("text_dropout", 0.0), **common.layer_options(model_config))
    return ImageTextModel(image_encoder=common.build_image_encoder(config, axis_name),
                          text_encoder=text_encoder, embed_dim=model_config.embed_dim,
                          init_log_scale=init_log_scale, init_bias=init_bias, dtype=dtype)


def batch_shapes(config: ml_collections.ConfigDict, n: int) -> dict[str, jax.ShapeDtypeStruct]:
    size = config.data.image_size
    return {"image": jax.ShapeDtypeStruct((n, size, size, 3), jnp.float32),
            "text": jax.ShapeDtypeStruct((n, config.data.max_text_len), jnp.int32)}


def init_variables(model: ImageTextModel, config: ml_collections.ConfigDict, rng: Array) -> dict:
    shapes = batch_shapes(config, 1)
    return model.init(rng, jnp.zeros(shapes["image"].shape), jnp.ones(shapes["text"].shape,
                                                                        jnp.int32), train=False)


def _variables(variables: dict) -> dict:
    """Drops an empty BatchNorm collection (ViT towers have none)."""
    return {name: value for name, value in variables.items() if name == "params" or value}


def validate_text_dropout(config: ml_collections.ConfigDict) -> None:
    """Refuses text dropout and SimCSE settings that cannot run or would mean nothing."""
    dropout = config.model.get("text_dropout", 0.0)
    weight = config.loss.get("simcse_weight", 0.0)
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"config.model.text_dropout must be in [0, 1), got {dropout}")
    if weight < 0:
        raise ValueError(f"config.loss.simcse_weight must be >= 0, got {weight}")
    if weight > 0 and dropout == 0:
        raise ValueError("config.loss.simcse_weight > 0 needs config.model.text_dropout > 0 "
                         "(SimCSE: 0.1); without dropout the two text views are identical")
    if weight > 0 and config.loss.simcse_temperature <= 0:
        raise ValueError("config.loss.simcse_temperature must be > 0, got "
                         f"{config.loss.simcse_temperature}")
    if dropout > 0 and (config.grad_cache_chunks > 1 or config.parallel == "fsdp"):
        raise ValueError("config.model.text_dropout > 0 draws dropout masks from the step key, "
                         "which gradient caching (grad_cache_chunks > 1) and parallel='fsdp' do "
                         "not pass to the towers; use pmap or shard_map without chunks")


def dropout_key(rng: Array, axis_name: str | None) -> Array:
    """This device's dropout key: the step key, the same on every device, folded with the
    device's index on `axis_name`, so that each device draws its own masks."""
    if axis_name is None:
        return rng
    return jax.random.fold_in(rng, jax.lax.axis_index(axis_name))


def pair_parts(model: ImageTextModel,
               loss: Callable[[Array, Array, Array, Array | None], tuple[Array, dict]],
               config: ml_collections.ConfigDict, axis_name: str | None,
               dropout_rng: Array | None = None) -> grad_cache.LossParts:
    """Both towers on this device's pairs, then `loss(image, text, scale, bias)` (which gathers
    from the other devices) with the scale and bias read from the parameters, plus SimCSE's
    term when `loss.simcse_weight` > 0. Dropout draws from `dropout_rng`; None (gradient
    caching, fsdp) passes no key, which `validate_text_dropout` allows only without dropout."""
    simcse_weight = config.loss.get("simcse_weight", 0.0)
    rngs = {} if dropout_rng is None else {"dropout": dropout_rng}

    def embed(params, batch_stats, batch):
        def towers(module, images, tokens):
            return module.embed_images(images, train=True), module.embed_texts(tokens, train=True)

        tokens = batch["text"]
        n = tokens.shape[0]
        if simcse_weight:  # Both views in one pass: every row draws its own dropout mask.
            tokens = jnp.concatenate([tokens, tokens])
        (images, texts), updates = model.apply(
            _variables({"params": params, "batch_stats": batch_stats}), batch["image"],
            tokens, method=towers, mutable=["batch_stats"], rngs=rngs)
        outputs = {"image": images, "text": texts[:n]}
        if simcse_weight:
            outputs["text_view2"] = texts[n:]
        return outputs, updates.get("batch_stats", batch_stats)

    def loss_on(params, outputs, batch):
        del batch
        scale = jnp.exp(params["log_scale"])
        bias = params.get("bias")
        value, metrics = loss(outputs["image"], outputs["text"], scale, bias)
        metrics = {**metrics, "scale": scale}
        if bias is not None:
            metrics["bias"] = bias
        if simcse_weight:
            simcse = losses.info_nce(outputs["text"], outputs["text_view2"],
                                     config.loss.simcse_temperature, axis_name=axis_name)
            value = value + simcse_weight * simcse
            metrics["simcse_loss"] = simcse
        return value, metrics

    return grad_cache.LossParts(embed, loss_on)


def embed_images(model: ImageTextModel) -> Callable[[dict, Array], Array]:
    """`(variables, images) -> image embeddings` (float32, unnormalised), inference mode."""
    return lambda variables, images: model.apply(
        _variables(variables), images, method=ImageTextModel.embed_images).astype(jnp.float32)


def embed_texts(model: ImageTextModel) -> Callable[[dict, Array], Array]:
    """`(variables, tokens) -> text embeddings` (float32, unnormalised), inference mode."""
    return lambda variables, tokens: model.apply(
        _variables(variables), tokens, method=ImageTextModel.embed_texts).astype(jnp.float32)


def encoder_features(model: ImageTextModel) -> Callable[[dict, Array], Array]:
    """The image tower's features before the projection, for kNN / linear probes."""
    return lambda variables, images: model.apply(
        _variables(variables), images, method=lambda m, x: m.image_encoder(x, train=False)
    ).astype(jnp.float32)
