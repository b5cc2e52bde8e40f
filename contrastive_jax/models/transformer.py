"""The pre-LayerNorm Transformer encoder shared by the image (ViT) and text towers.

Each block is LN -> self-attention -> residual, LN -> MLP -> residual, and the stack ends with a
LayerNorm, as in ViT and CLIP. Attention and MLP layers carry biases so that parameter counts
match the published models. `dtype` is the compute dtype; parameters stay float32 and the
attention softmax is computed in float32 even under bfloat16.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array


class MlpBlock(nn.Module):
    """Dense(mlp_dim) -> GELU -> Dense(back to the input width)."""

    mlp_dim: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        dense = functools.partial(nn.Dense, dtype=self.dtype,
                                  kernel_init=nn.initializers.xavier_uniform())
        y = nn.gelu(dense(self.mlp_dim, name="hidden")(x))
        return dense(x.shape[-1], name="output")(y)


class EncoderBlock(nn.Module):
    """One pre-LN block: x + attention(LN(x)), then x + MLP(LN(x))."""

    num_heads: int
    mlp_dim: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, mask: Array | None = None) -> Array:
        y = nn.LayerNorm(dtype=self.dtype, name="attention_norm")(x)
        y = nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads, dtype=self.dtype, use_bias=True,
            kernel_init=nn.initializers.xavier_uniform(), force_fp32_for_softmax=True,
            name="attention")(y, mask=mask)
        x = x + y
        y = nn.LayerNorm(dtype=self.dtype, name="mlp_norm")(x)
        return x + MlpBlock(self.mlp_dim, dtype=self.dtype, name="mlp")(y)


class Encoder(nn.Module):
    """`depth` EncoderBlocks and a final LayerNorm over tokens x [n, T, D].

    `mask` is boolean, True where query t may attend to key s: [n, T, T] (shared by all heads)
    or [n, 1, T, T]; None lets every token attend to every token.
    """

    depth: int
    num_heads: int
    mlp_dim: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, mask: Array | None = None) -> Array:
        if mask is not None:
            mask = _per_head_mask(mask, x.shape[1])
        x = x.astype(self.dtype)
        for index in range(self.depth):
            x = EncoderBlock(self.num_heads, self.mlp_dim, dtype=self.dtype,
                             name=f"block_{index}")(x, mask)
        return nn.LayerNorm(dtype=self.dtype, name="final_norm")(x)


def _per_head_mask(mask: Array, num_tokens: int) -> Array:
    """Checks an attention mask's shape and gives it the head axis: [n, 1, T, T]."""
    per_head = mask[:, None] if mask.ndim == 3 else mask
    if per_head.ndim != 4 or per_head.shape[1:] != (1, num_tokens, num_tokens):
        raise ValueError(f"attention mask of shape {mask.shape} does not fit {num_tokens} "
                         f"tokens; expected [n, {num_tokens}, {num_tokens}] or "
                         f"[n, 1, {num_tokens}, {num_tokens}]")
    return per_head.astype(bool)
