"""The pre-LayerNorm Transformer encoder shared by the image (ViT) and text towers.

Each block is LN -> self-attention -> residual, LN -> MLP -> residual, and the stack ends with a
LayerNorm, as in ViT and CLIP. Attention and MLP layers carry biases so that parameter counts
match the published models. `dtype` is the compute dtype; parameters stay float32 and the
attention softmax is computed in float32 even under bfloat16.

`dropout_rate` (default 0: off, and no dropout key needed) drops BERT's way: the attention
probabilities and each residual branch's output before it is added (Devlin et al. 2019), when
the call is not `deterministic`. Dropout has no parameters, so the parameter tree is the same
at any rate.

For deep towers the blocks can run under `nn.scan` (one compiled block, parameters stacked on a
leading layer axis: compile time stops growing with depth) and `nn.remat` (activations inside a
block recomputed in the backward pass, as `REMAT_POLICIES` says, to trade FLOPs for memory).
Outputs and gradients do not change; the parameter layout does (`stack_block_params` converts).
"""

from __future__ import annotations

import functools
from typing import Any, Mapping

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
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x: Array, mask: Array | None = None, deterministic: bool = True) -> Array:
        dropout = nn.Dropout(self.dropout_rate, deterministic=deterministic)
        y = nn.LayerNorm(dtype=self.dtype, name="attention_norm")(x)
        y = nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads, dtype=self.dtype, use_bias=True,
            kernel_init=nn.initializers.xavier_uniform(), force_fp32_for_softmax=True,
            dropout_rate=self.dropout_rate, name="attention")(
                y, mask=mask, deterministic=deterministic)
        x = x + dropout(y)
        y = nn.LayerNorm(dtype=self.dtype, name="mlp_norm")(x)
        return x + dropout(MlpBlock(self.mlp_dim, dtype=self.dtype, name="mlp")(y))


# What a rematerialised block keeps from its forward pass: "none" turns remat off; the others
# name jax.checkpoint_policies ("nothing_saveable" recomputes everything; the "dots" policies keep
# matrix-multiply outputs and recompute the cheap element-wise ops around them).
REMAT_POLICIES = ("none", "nothing_saveable", "dots_saveable", "dots_with_no_batch_dims_saveable")
SCANNED_BLOCKS = "blocks"  # The scanned stack's name; its one block is `SCANNED_BLOCKS/block`.


def _block_type(remat_policy: str) -> type[nn.Module]:
    """EncoderBlock, or its rematerialised form (`deterministic`, argument 3 counting `self`,
    stays a Python bool)."""
    if remat_policy not in REMAT_POLICIES:
        raise ValueError(f"unknown remat_policy {remat_policy!r}; choose one of {REMAT_POLICIES}")
    if remat_policy == "none":
        return EncoderBlock
    return nn.remat(EncoderBlock, policy=getattr(jax.checkpoint_policies, remat_policy),
                    static_argnums=(3,))


class _ScanStep(nn.Module):
    """One block as `nn.scan` wants it: (carry, broadcast mask) -> (carry, no output)."""

    num_heads: int
    mlp_dim: int
    remat_policy: str
    dtype: Any
    dropout_rate: float = 0.0
    deterministic: bool = True  # A field, not an argument: scan would trace it.

    @nn.compact
    def __call__(self, x: Array, mask: Array | None) -> tuple[Array, None]:
        block = _block_type(self.remat_policy)(self.num_heads, self.mlp_dim, dtype=self.dtype,
                                               dropout_rate=self.dropout_rate, name="block")
        return block(x, mask, self.deterministic), None


class Encoder(nn.Module):
    """`depth` EncoderBlocks and a final LayerNorm over tokens x [n, T, D].

    `mask` is boolean, True where query t may attend to key s: [n, T, T] (shared by all heads)
    or [n, 1, T, T]; None lets every token attend to every token. `scan_layers`,
    `remat_policy` and `dropout_rate` (active unless `deterministic`; draws from the "dropout"
    key, a different one per layer): see the module docstring.
    """

    depth: int
    num_heads: int
    mlp_dim: int
    dtype: Any = jnp.float32
    scan_layers: bool = False
    remat_policy: str = "none"
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x: Array, mask: Array | None = None, deterministic: bool = True) -> Array:
        if mask is not None:
            mask = _per_head_mask(mask, x.shape[1])
        x = x.astype(self.dtype)
        if self.scan_layers:
            stack = nn.scan(_ScanStep, variable_axes={"params": 0},
                            split_rngs={"params": True, "dropout": True},
                            in_axes=nn.broadcast, length=self.depth)
            x, _ = stack(self.num_heads, self.mlp_dim, self.remat_policy, self.dtype,
                         self.dropout_rate, deterministic, name=SCANNED_BLOCKS)(x, mask)
        else:
            block_type = _block_type(self.remat_policy)
            for index in range(self.depth):
                x = block_type(self.num_heads, self.mlp_dim, dtype=self.dtype,
                               dropout_rate=self.dropout_rate,
                               name=f"block_{index}")(x, mask, deterministic)
        return nn.LayerNorm(dtype=self.dtype, name="final_norm")(x)


def stack_block_params(encoder_params: Mapping[str, Any], depth: int) -> dict[str, Any]:
    """An Encoder's parameters with blocks `block_0` .. `block_{depth-1}` in the layout of
    `scan_layers=True` (each leaf stacked on a leading layer axis), e.g. to load a checkpoint
    trained without scan into a scanned tower."""
    blocks = [encoder_params[f"block_{index}"] for index in range(depth)]
    rest = {name: value for name, value in encoder_params.items()
            if not name.startswith("block_")}
    stacked = jax.tree.map(lambda *layers: jnp.stack(layers), *blocks)
    return {**rest, SCANNED_BLOCKS: {"block": stacked}}


def _per_head_mask(mask: Array, num_tokens: int) -> Array:
    """Checks an attention mask's shape and gives it the head axis: [n, 1, T, T]."""
    per_head = mask[:, None] if mask.ndim == 3 else mask
    if per_head.ndim != 4 or per_head.shape[1:] != (1, num_tokens, num_tokens):
        raise ValueError(f"attention mask of shape {mask.shape} does not fit {num_tokens} "
                         f"tokens; expected [n, {num_tokens}, {num_tokens}] or "
                         f"[n, 1, {num_tokens}, {num_tokens}]")
    return per_head.astype(bool)
