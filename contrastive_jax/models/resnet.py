"""ResNet-18/34/50/101/152 in flax.linen, with SimCLR's width multiplier and a CIFAR stem.

BatchNorm uses momentum 0.9 and epsilon 1e-5 like SimCLR's TensorFlow reference; given
`bn_axis_name="data"` it averages batch moments over every device (SimCLR's global BN), so the
statistics of a sharded batch equal those of the whole batch on one device.
"""

from __future__ import annotations

import functools
from typing import Any, ClassVar, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array

STAGE_SIZES = {
    "resnet18": (2, 2, 2, 2),
    "resnet34": (3, 4, 6, 3),
    "resnet50": (3, 4, 6, 3),
    "resnet101": (3, 4, 23, 3),
    "resnet152": (3, 8, 36, 3),
}
BOTTLENECK = {"resnet50", "resnet101", "resnet152"}
STEMS = ("imagenet", "cifar")


class _ResidualBlock(nn.Module):
    """What both blocks share: a branch (the subclass's `branch`) whose last BatchNorm may start
    at zero, a projection shortcut where the shape changes, and the ReLU of their sum."""

    filters: int
    strides: int
    norm: Any
    zero_init_residual: bool
    dtype: Any
    expansion: ClassVar[int] = 1  # Output channels per `filters`.

    def conv(self, features: int, kernel: tuple[int, int], strides: int = 1,
             **kwargs) -> nn.Module:
        return nn.Conv(features, kernel, strides, use_bias=False, dtype=self.dtype, **kwargs)

    @nn.compact
    def __call__(self, x: Array) -> Array:
        y = self.branch(x)
        y = self.norm(scale_init=nn.initializers.zeros if self.zero_init_residual
                      else nn.initializers.ones)(y)
        features = self.filters * self.expansion
        if x.shape[-1] != features or self.strides != 1:
            x = self.norm(name="shortcut_bn")(
                self.conv(features, (1, 1), self.strides, name="shortcut_conv")(x))
        return nn.relu(x + y)


class BasicBlock(_ResidualBlock):
    """Two 3x3 convolutions with a residual connection (ResNet-18/34)."""

    def branch(self, x: Array) -> Array:
        y = nn.relu(self.norm()(self.conv(self.filters, (3, 3), self.strides, padding=1)(x)))
        return self.conv(self.filters, (3, 3), padding=1)(y)


class BottleneckBlock(_ResidualBlock):
    """1x1 reduce, 3x3 (strided, as in torchvision's ResNet v1.5), 1x1 expand by 4."""

    expansion: ClassVar[int] = 4

    def branch(self, x: Array) -> Array:
        y = nn.relu(self.norm()(self.conv(self.filters, (1, 1))(x)))
        y = nn.relu(self.norm()(self.conv(self.filters, (3, 3), self.strides, padding=1)(y)))
        return self.conv(self.filters * 4, (1, 1))(y)


class ResNet(nn.Module):
    """A ResNet returning globally pooled features [N, C], or logits if `num_classes`."""

    stage_sizes: Sequence[int]
    bottleneck: bool
    width: int = 1
    base_width: int = 64
    stem: str = "imagenet"
    num_classes: int | None = None
    bn_axis_name: str | None = None
    zero_init_residual: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9,
                                 epsilon=1e-5, dtype=self.dtype, axis_name=self.bn_axis_name)
        block = BottleneckBlock if self.bottleneck else BasicBlock
        filters = self.base_width * self.width
        x = x.astype(self.dtype)
        if self.stem == "imagenet":
            x = nn.Conv(filters, (7, 7), 2, padding=3, use_bias=False, dtype=self.dtype,
                        name="stem_conv")(x)
            x = nn.relu(norm(name="stem_bn")(x))
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        else:
            x = nn.Conv(filters, (3, 3), 1, padding=1, use_bias=False, dtype=self.dtype,
                        name="stem_conv")(x)
            x = nn.relu(norm(name="stem_bn")(x))
        for stage, num_blocks in enumerate(self.stage_sizes):
            for index in range(num_blocks):
                strides = 2 if stage > 0 and index == 0 else 1
                x = block(filters * 2**stage, strides, norm, self.zero_init_residual,
                          self.dtype)(x)
        x = jnp.mean(x, axis=(1, 2))
        if self.num_classes is not None:
            x = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x)
        return x


def feature_dim(name: str, width: int = 1, base_width: int = 64) -> int:
    """Width of the pooled features: 512 * width for ResNet-18/34, 2048 * width for 50+."""
    expansion = 4 if name in BOTTLENECK else 1
    return base_width * width * 8 * expansion


def resnet(name: str, *, width: int = 1, base_width: int = 64, stem: str = "imagenet",
           num_classes: int | None = None, bn_axis_name: str | None = None,
           zero_init_residual: bool = False, dtype: Any = jnp.float32) -> ResNet:
    """The ResNet called `name` ("resnet18" ... "resnet152"); width multiplies every stage
    (SimCLR's 2x and 4x); base_width < 64 gives the small models of the CPU demo."""
    if name not in STAGE_SIZES:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(STAGE_SIZES)}")
    if stem not in STEMS:
        raise ValueError(f"unknown stem {stem!r}; choose one of {STEMS}")
    return ResNet(stage_sizes=STAGE_SIZES[name], bottleneck=name in BOTTLENECK, width=width,
                  base_width=base_width, stem=stem, num_classes=num_classes,
                  bn_axis_name=bn_axis_name, zero_init_residual=zero_init_residual, dtype=dtype)
