"""The ranges of the config's numeric fields, checked before JAX starts or data is read, and the
step counts derived from epochs.

A value outside its range is refused with one message naming the field, the value and the range
(`config.optimizer.learning_rate must be >= 0, got -0.1`; `config.loss.temperature must be a
finite number, got inf`), instead of training on
it (a negative learning rate ascends the loss, an infinite temperature makes every logit 0, a
crop area above 1 cannot be drawn) or failing later in a way that names something else (a
temperature of NaN reported as "loss is nan"). A field that names one of a few choices is
refused when it names none of them (`config.data.brightness_mode must be one of ('multiply',
'add'), got 'mul'`). Fields a config does not have are skipped.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import ml_collections

from contrastive_jax.augment import spec


class Range(NamedTuple):
    low: float
    high: float = math.inf
    low_open: bool = False  # `low` itself refused
    high_open: bool = False

    def problem(self, value) -> str | None:
        """What is wrong with `value` ("must be > 0"), or None."""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return "must be a number"
        if not math.isfinite(value):
            return "must be a finite number"
        low = value > self.low if self.low_open else value >= self.low
        high = value < self.high if self.high_open else value <= self.high
        if low and high:
            return None
        text = f"must be {'>' if self.low_open else '>='} {self.low:g}"
        if math.isfinite(self.high):
            text += f" and {'<' if self.high_open else '<='} {self.high:g}"
        return text


AT_LEAST_ONE = Range(1)
POSITIVE = Range(0, low_open=True)
NON_NEGATIVE = Range(0)
FRACTION = Range(0, 1)  # A probability.
AREA = Range(0, 1, low_open=True)  # A share of an image's area or side.
BETA = Range(0, 1, high_open=True)  # A moving-average decay.

RANGES = {
    "batch_size": AT_LEAST_ONE,
    "log_every": AT_LEAST_ONE,
    "checkpoint_every": AT_LEAST_ONE,
    # 0 would make Orbax delete every checkpoint it writes.
    "keep_checkpoints": AT_LEAST_ONE,
    "num_epochs": POSITIVE,
    "grad_cache_chunks": AT_LEAST_ONE,
    "data.image_size": AT_LEAST_ONE,
    "data.shard_window": AT_LEAST_ONE,
    "data.shuffle_buffer": AT_LEAST_ONE,
    "data.crop_area_min": AREA,
    "data.color_strength": NON_NEGATIVE,
    "data.grayscale_prob": FRACTION,
    "data.blur_prob": FRACTION,
    "data.solarize_prob": FRACTION,
    "data.eval_crop_fraction": AREA,
    "data.small_crop_area_min": AREA,
    "data.small_crop_area_max": AREA,
    "optimizer.learning_rate": NON_NEGATIVE,
    "optimizer.weight_decay": NON_NEGATIVE,
    "optimizer.momentum": BETA,
    "optimizer.b1": BETA,
    "optimizer.b2": BETA,
    "optimizer.eps": POSITIVE,
    "optimizer.warmup_epochs": NON_NEGATIVE,
    "optimizer.grad_clip_norm": NON_NEGATIVE,
    "loss.temperature": POSITIVE,
    "eval.batch_size": AT_LEAST_ONE,
    "eval.knn_k": AT_LEAST_ONE,
    "eval.knn_temperature": POSITIVE,
    "eval.linear_learning_rate": NON_NEGATIVE,
    "eval.linear_eval_crop_area_min": AREA,
}


CHOICES = {
    "data.brightness_mode": spec.BRIGHTNESS_MODES,
}


def lookup(config: ml_collections.ConfigDict, dotted: str):
    """The value at a dotted path, None where a part is missing."""
    value = config
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, (dict, ml_collections.ConfigDict)) else None
    return value.to_dict() if isinstance(value, ml_collections.ConfigDict) else value


def check_ranges(config: ml_collections.ConfigDict) -> None:
    """Refuses the first numeric field outside its range, or the first field that names none
    of its choices, naming it."""
    for key, allowed in RANGES.items():
        value = lookup(config, key)
        values = value if isinstance(value, (tuple, list)) else [value]  # Per-view settings.
        problem = next((allowed.problem(v) for v in values
                        if v is not None and allowed.problem(v)), None)
        if problem:
            raise ValueError(f"config.{key} {problem}, got {value}")
    for key, allowed in CHOICES.items():
        value = lookup(config, key)
        if value is not None and value not in allowed:
            raise ValueError(f"config.{key} must be one of {allowed}, got {value!r}")


def resolve_steps(config: ml_collections.ConfigDict, num_train_examples: int
                  ) -> ml_collections.ConfigDict:
    """A copy of `config` with `total_steps` and `optimizer.warmup_steps` made concrete from
    `num_epochs` / `optimizer.warmup_epochs` where those are given instead."""
    config = ml_collections.ConfigDict(config.to_dict())
    steps_per_epoch = max(num_train_examples // config.batch_size, 1)
    if config.total_steps <= 0:
        config.total_steps = int(round(config.num_epochs * steps_per_epoch))
        if config.total_steps <= 0:
            raise ValueError(
                f"config.num_epochs={config.num_epochs} gives no training step: an epoch of "
                f"{num_train_examples} examples is {steps_per_epoch} steps of batch "
                f"{config.batch_size}; raise num_epochs or set total_steps")
    if config.optimizer.warmup_steps < 0:
        config.optimizer.warmup_steps = int(round(
            config.optimizer.warmup_epochs * steps_per_epoch))
    return config
