"""Vision Transformer (Dosovitskiy et al. 2021) as an image tower returning pooled features.

Variants follow big_vision's naming, "SIZE/PATCH" such as "B/16" or "Ti/4"; size "mu" is a
one-block model for tests and laptops. Images are cut into non-overlapping patches by a strided
convolution, a learned class token is prepended when pooling with "cls", learned position
embeddings are added (to the class token too, as in the original ViT), and the pre-LN encoder
runs over the tokens. The output is the class token's final state or the mean of the patch tokens.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from contrastive_jax.models.transformer import Encoder

Array = jax.Array

VARIANTS = {
    "mu": {"width": 32, "depth": 1, "num_heads": 2, "mlp_dim": 128},
    "Ti": {"width": 192, "depth": 12, "num_heads": 3, "mlp_dim": 768},
    "S": {"width": 384, "depth": 12, "num_heads": 6, "mlp_dim": 1536},
    "M": {"width": 512, "depth": 12, "num_heads": 8, "mlp_dim": 2048},
    "B": {"width": 768, "depth": 12, "num_heads": 12, "mlp_dim": 3072},
    "L": {"width": 1024, "depth": 24, "num_heads": 16, "mlp_dim": 4096},
}
POOLS = ("cls", "gap")


class ViT(nn.Module):
    """A ViT mapping images [n, H, W, 3] to features [n, width] (float32)."""

    width: int
    depth: int
    num_heads: int
    mlp_dim: int
    patch_size: int
    pool: str = "cls"
    dtype: Any = jnp.float32
    scan_layers: bool = False  # transformer.Encoder's: nn.scan over the blocks
    remat_policy: str = "none"  # transformer.Encoder's: what a block keeps for the backward

    def __post_init__(self) -> None:
        if self.pool not in POOLS:
            raise ValueError(f"unknown pool {self.pool!r}; choose one of {POOLS}")
        super().__post_init__()

    @nn.compact
    def __call__(self, images: Array, train: bool) -> Array:
        del train  # no dropout; accepted so that every image tower has the same interface
        height, width = images.shape[1:3]
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(f"image size {height}x{width} is not a multiple of the patch size "
                             f"{self.patch_size}")
        x = nn.Conv(self.width, (self.patch_size, self.patch_size), strides=self.patch_size,
                    padding="VALID", dtype=self.dtype, name="patch_embedding")(
                        images.astype(self.dtype))
        x = x.reshape(x.shape[0], -1, self.width)
        if self.pool == "cls":
            cls_token = self.param("cls_token", nn.initializers.zeros, (1, 1, self.width))
            cls_token = jnp.broadcast_to(cls_token, (x.shape[0], 1, self.width))
            x = jnp.concatenate([cls_token.astype(self.dtype), x], axis=1)
        pos_embedding = self.param("pos_embedding", nn.initializers.normal(stddev=0.02),
                                   (1, x.shape[1], self.width))
        x = x + pos_embedding.astype(self.dtype)
        x = Encoder(self.depth, self.num_heads, self.mlp_dim, dtype=self.dtype,
                    scan_layers=self.scan_layers, remat_policy=self.remat_policy,
                    name="encoder")(x)
        features = x[:, 0] if self.pool == "cls" else jnp.mean(x, axis=1)
        return features.astype(jnp.float32)


def parse_variant(variant: str) -> dict:
    """The hyperparameters of a "SIZE/PATCH" variant: width, depth, num_heads, mlp_dim and
    patch_size."""
    size, _, patch = variant.partition("/")
    if size not in VARIANTS or not patch.isdigit() or int(patch) < 1:
        raise ValueError(f"unknown ViT variant {variant!r}; expected 'SIZE/PATCH' such as "
                         f"'B/16', with SIZE one of {list(VARIANTS)}")
    return {**VARIANTS[size], "patch_size": int(patch)}


def vit(variant: str, *, pool: str = "cls", depth: int | None = None,
        dtype: Any = jnp.float32, scan_layers: bool = False, remat_policy: str = "none") -> ViT:
    """The ViT called `variant` ("B/16", "Ti/4" ...); `depth` overrides the variant's depth."""
    config = parse_variant(variant)
    if depth is not None:
        config["depth"] = depth
    return ViT(**config, pool=pool, dtype=dtype, scan_layers=scan_layers,
               remat_policy=remat_policy)
