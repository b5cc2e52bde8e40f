"""Projection heads (SimCLR v1 / v2 MLPs) and the online linear probe."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array


class ProjectionHead(nn.Module):
    """An MLP of `num_layers` Dense layers mapping features to the contrastive space.

    SimCLR v1 uses 2 layers (hidden = feature width, out 128); v2 uses 3. With `use_bn`, each
    hidden layer is Dense -> BatchNorm -> ReLU and the output layer is Dense -> BatchNorm with a
    learned scale but no bias, as in the SimCLR reference (its last BN has center=False); BN is
    synchronised over `bn_axis_name` like the encoder's. `output_bn=False` ends in a Dense with
    a bias instead (SwAV's projector: BN in the hidden layers only).
    """

    num_layers: int = 2
    hidden_dim: int | None = None
    out_dim: int = 128
    use_bn: bool = True
    output_bn: bool = True
    bn_axis_name: str | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        hidden = self.hidden_dim or x.shape[-1]
        for layer in range(self.num_layers):
            is_last = layer == self.num_layers - 1
            has_bn = self.use_bn and (self.output_bn or not is_last)
            x = nn.Dense(self.out_dim if is_last else hidden, use_bias=not has_bn,
                         dtype=self.dtype)(x)
            if has_bn:
                x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                                 use_bias=not is_last, dtype=self.dtype,
                                 axis_name=self.bn_axis_name)(x)
            if not is_last:
                x = nn.relu(x)
        return x


class LinearProbe(nn.Module):
    """A linear classifier on stop-gradient features: it learns from labels during
    pretraining (an online estimate of linear accuracy) without shaping the encoder."""

    num_classes: int

    @nn.compact
    def __call__(self, features: Array) -> Array:
        return nn.Dense(self.num_classes)(jax.lax.stop_gradient(features).astype(jnp.float32))


class BatchNormMLP(nn.Module):
    """The MLPs of BYOL and SimSiam: `num_layers` Dense layers, each hidden one Dense ->
    BatchNorm -> ReLU; the output Dense has a bias (`output_bias`), or with `output_bn` is
    followed by a BatchNorm without scale or bias (SimSiam's projector, MoCo v3's ViT heads).
    `hidden_bias` gives the hidden Dense layers a bias before their BatchNorm (BYOL's haiku MLP:
    with_bias on the hidden Linear, none on the output one).

    BYOL's projector and predictor (Grill et al. 2020, 3.3) are 2 layers 4096 -> 256; SimSiam's
    projector (Chen & He 2021, 4) has BN on every layer, its predictor is the 2-layer 512-wide
    bottleneck. ProjectionHead cannot express these: its last BatchNorm learns a scale and its
    output Dense has no bias. BatchNorm is synchronised over `bn_axis_name`.
    """

    num_layers: int = 2
    hidden_dim: int = 4096
    out_dim: int = 256
    output_bn: bool = False
    hidden_bias: bool = False
    output_bias: bool = True
    bn_axis_name: str | None = None
    dtype: Any = jnp.float32

    def _batch_norm(self, train: bool, affine: bool) -> nn.BatchNorm:
        return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                            use_scale=affine, use_bias=affine, dtype=self.dtype,
                            axis_name=self.bn_axis_name)

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        for _ in range(self.num_layers - 1):
            x = nn.Dense(self.hidden_dim, use_bias=self.hidden_bias, dtype=self.dtype)(x)
            x = nn.relu(self._batch_norm(train, affine=True)(x))
        x = nn.Dense(self.out_dim, use_bias=self.output_bias and not self.output_bn,
                     dtype=self.dtype)(x)
        if self.output_bn:
            x = self._batch_norm(train, affine=False)(x)
        return x
