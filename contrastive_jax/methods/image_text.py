"""What CLIP and SigLIP share: an image tower and a text tower, each with a linear projection
into one embedding space, and a learnable log scale (and, for SigLIP, a bias) on the cosines.

The image tower is a ViT (`model.name = "vit"`, `model.variant` such as "B/16") or a ResNet
(`model.name = "resnet50"` ...; its BatchNorm is synchronised over the `data` axis); the text
tower is a transformer over the tokenizer's ids (`models/text.py`). The methods differ only in
the loss, the initial scale / bias and what `after_update` does, so `clip.py` and `siglip.py`
are a few lines on top of this module.
"""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from contrastive_jax import grad_cache
from contrastive_jax.models import resnet, text, vit

Array = jax.Array
IMAGE_TEXT = True
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
    from contrastive_jax import tokenizer  # Reads the SentencePiece model file.
    return tokenizer.get_tokenizer(data_config).vocab_size


def _layer_options(model_config: ml_collections.ConfigDict) -> dict:
    """How the transformer towers run their blocks (`model.scan_layers`, `model.remat_policy`)."""
    return {"scan_layers": model_config.get("scan_layers", False),
            "remat_policy": model_config.get("remat_policy", "none")}


def build_image_encoder(config: ml_collections.ConfigDict, axis_name: str | None) -> nn.Module:
    model_config = config.model
    dtype = jnp.dtype(model_config.dtype)
    if model_config.name == "vit":
        return vit.vit(model_config.variant, pool=model_config.pool, depth=model_config.depth,
                       dtype=dtype, **_layer_options(model_config))
    return resnet.resnet(model_config.name, width=model_config.width, stem=model_config.stem,
                         base_width=model_config.base_width, bn_axis_name=axis_name, dtype=dtype)


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
        **_layer_options(model_config))
    return ImageTextModel(image_encoder=build_image_encoder(config, axis_name),
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


def pair_parts(model: ImageTextModel,
               loss: Callable[[Array, Array, Array, Array | None], tuple[Array, dict]]
               ) -> grad_cache.LossParts:
    """Both towers on this device's pairs, then `loss(image, text, scale, bias)` (which gathers
    from the other devices) with the scale and bias read from the parameters."""

    def embed(params, batch_stats, batch):
        def towers(module, images, tokens):
            return module.embed_images(images, train=True), module.embed_texts(tokens, train=True)

        embeddings, updates = model.apply(
            _variables({"params": params, "batch_stats": batch_stats}), batch["image"],
            batch["text"], method=towers, mutable=["batch_stats"])
        return embeddings, updates.get("batch_stats", batch_stats)

    def loss_on(params, embeddings, batch):
        del batch
        scale = jnp.exp(params["log_scale"])
        bias = params.get("bias")
        value, metrics = loss(*embeddings, scale, bias)
        metrics = {**metrics, "scale": scale}
        if bias is not None:
            metrics["bias"] = bias
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
