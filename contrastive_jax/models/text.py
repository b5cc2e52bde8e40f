"""CLIP's text transformer (Radford et al. 2021) as a text tower returning pooled features.

Tokens are embedded, learned position embeddings added, and the pre-LN encoder runs with a mask
that hides padding keys (token id `PAD_ID`) and, when `causal`, later positions, so padding
never changes the state of a real token. "last" pooling takes the state at each row's last real
token (CLIP pools at its end-of-text token, which the tokenizer puts last); "mean" averages the
real tokens. The projection into the joint space lives in methods/image_text.py, not here.

`dropout_rate` (default 0: none, CLIP's tower) drops the embeddings and, inside the encoder,
BERT's way, in training calls only; SimCSE (Gao et al. 2021) uses 0.1 to make two views of one
caption. The parameter tree does not depend on it.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from contrastive_jax.models.transformer import Encoder

Array = jax.Array

PAD_ID = 0
POOLS = ("last", "mean")


class TextTransformer(nn.Module):
    """A transformer mapping token ids [n, L] to features [n, width] (float32)."""

    vocab_size: int
    max_len: int
    width: int
    depth: int
    num_heads: int
    mlp_dim: int
    causal: bool = True
    pool: str = "last"
    dtype: Any = jnp.float32
    scan_layers: bool = False  # transformer.Encoder's: nn.scan over the blocks
    remat_policy: str = "none"  # transformer.Encoder's: what a block keeps for the backward
    dropout_rate: float = 0.0  # In training calls; draws from the "dropout" key.

    def __post_init__(self) -> None:
        if self.pool not in POOLS:
            raise ValueError(f"unknown pool {self.pool!r}; choose one of {POOLS}")
        super().__post_init__()

    @nn.compact
    def __call__(self, tokens: Array, train: bool) -> Array:
        length = tokens.shape[1]
        if length > self.max_len:
            raise ValueError(f"text length {length} exceeds max_len {self.max_len}")
        is_token = tokens != PAD_ID
        x = nn.Embed(self.vocab_size, self.width, dtype=self.dtype,
                     embedding_init=nn.initializers.normal(stddev=0.02),
                     name="token_embedding")(tokens)
        pos_embedding = self.param("pos_embedding", nn.initializers.normal(stddev=0.02),
                                   (self.max_len, self.width))
        x = x + pos_embedding[:length].astype(self.dtype)
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        x = Encoder(self.depth, self.num_heads, self.mlp_dim, dtype=self.dtype,
                    scan_layers=self.scan_layers, remat_policy=self.remat_policy,
                    dropout_rate=self.dropout_rate, name="encoder")(
                        x, attention_mask(is_token, self.causal), deterministic=not train)
        if self.pool == "last":
            features = _state_at_last_token(x, is_token)
        else:
            features = _mean_over_tokens(x, is_token)
        return features.astype(jnp.float32)


def attention_mask(is_token: Array, causal: bool) -> Array:
    """[n, 1, L, L]: query t may attend to key s if s is not padding (and s <= t if causal)."""
    length = is_token.shape[1]
    mask = jnp.broadcast_to(is_token[:, None, None, :], (is_token.shape[0], 1, length, length))
    if causal:
        mask = mask & jnp.tril(jnp.ones((length, length), dtype=bool))
    return mask


def _state_at_last_token(x: Array, is_token: Array) -> Array:
    """x[i, last real position of row i]; position 0 for a row of only padding."""
    positions = jnp.arange(x.shape[1])
    last = jnp.max(jnp.where(is_token, positions, 0), axis=1)
    return jnp.take_along_axis(x, last[:, None, None], axis=1)[:, 0]


def _mean_over_tokens(x: Array, is_token: Array) -> Array:
    """The mean of x over real tokens, in float32; zeros for a row of only padding."""
    weights = is_token.astype(jnp.float32)[..., None]
    total = jnp.sum(x.astype(jnp.float32) * weights, axis=1)
    return total / jnp.maximum(jnp.sum(weights, axis=1), 1.0)


def text_transformer(*, vocab_size: int, max_len: int, width: int, depth: int, num_heads: int,
                     mlp_dim: int | None = None, causal: bool = True, pool: str = "last",
                     dtype: Any = jnp.float32, scan_layers: bool = False,
                     remat_policy: str = "none", dropout_rate: float = 0.0) -> TextTransformer:
    """A TextTransformer; `mlp_dim` defaults to 4 * width as in CLIP."""
    return TextTransformer(vocab_size=vocab_size, max_len=max_len, width=width, depth=depth,
                           num_heads=num_heads, mlp_dim=mlp_dim or 4 * width, causal=causal,
                           pool=pool, dtype=dtype, scan_layers=scan_layers,
                           remat_policy=remat_policy, dropout_rate=dropout_rate)
