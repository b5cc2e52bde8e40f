"""Analytic FLOPs of a training example, for model FLOPs utilisation (MFU).

Counted as 2 FLOPs per multiply-add of the matrix products (the element-wise ops, softmax and
normalisation are left out, as MFU conventionally does); a training step costs three forward
passes (forward, and a backward twice as long). XLA's own cost analysis is not used: it misses
cuDNN's convolutions on GPUs and counts rematerialised work twice.
"""

from __future__ import annotations

import ml_collections

from contrastive_jax.models import vit

TRAIN_PASSES = 3  # Forward + backward (gradients with respect to activations and weights).


def encoder_macs(tokens: int, width: int, depth: int, mlp_dim: int) -> int:
    """Multiply-adds of a transformer encoder over `tokens` tokens: per block the four attention
    projections, the scores and their weighted sum, and the MLP."""
    projections = 4 * tokens * width * width
    attention = 2 * tokens * tokens * width
    mlp = 2 * tokens * width * mlp_dim
    return depth * (projections + attention + mlp)


def vit_macs(variant: str, image_size: int, depth: int | None = None, pool: str = "cls") -> int:
    """Multiply-adds of one image through a ViT: patch embedding and encoder."""
    config = vit.parse_variant(variant)
    patches = (image_size // config["patch_size"]) ** 2
    tokens = patches + (pool == "cls")
    embedding = patches * config["patch_size"] ** 2 * 3 * config["width"]
    return embedding + encoder_macs(tokens, config["width"], depth or config["depth"],
                                    config["mlp_dim"])


def image_text_train_flops(config: ml_collections.ConfigDict) -> float:
    """Training FLOPs per image-text pair of a ViT config: both towers, their projections and
    the pair logits against the global batch."""
    model = config.model
    if model.name != "vit":
        raise ValueError(f"analytic FLOPs cover ViT image towers, got {model.name!r}")
    image_width = vit.parse_variant(model.variant)["width"]
    text_width = model.text_width
    text_tokens = config.data.max_text_len
    macs = (vit_macs(model.variant, config.data.image_size, model.depth, model.pool)
            + encoder_macs(text_tokens, text_width, model.text_depth,
                           model.text_mlp_dim or 4 * text_width)
            + (image_width + text_width) * model.embed_dim
            + config.batch_size * model.embed_dim)
    return 2.0 * TRAIN_PASSES * macs
