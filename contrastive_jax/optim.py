"""Optimizers and schedules from optax: LARS (SimCLR), AdamW (CLIP/SigLIP), SGD.

SimCLR excludes biases and BatchNorm parameters from weight decay and from LARS's trust-ratio
adaptation; `weight_decay_mask` marks the parameters that get both (the kernels).
"""

from __future__ import annotations

import math

import jax
import ml_collections
import optax

LR_SCALING = ("linear", "sqrt", "none")
OPTIMIZERS = ("lars", "adamw", "sgd")


def scale_learning_rate(base_lr: float, batch_size: int, rule: str) -> float:
    """The peak learning rate: base * B / 256 ("linear"), base * sqrt(B) ("sqrt"), or base."""
    if rule == "linear":
        return base_lr * batch_size / 256
    if rule == "sqrt":
        return base_lr * math.sqrt(batch_size)
    if rule == "none":
        return base_lr
    raise ValueError(f"unknown lr_scaling {rule!r}; choose one of {LR_SCALING}")


def learning_rate_schedule(peak_lr: float, *, total_steps: int, warmup_steps: int,
                           schedule: str = "cosine") -> optax.Schedule:
    """Linear warmup from 0 to `peak_lr`, then cosine decay to 0 (or constant) at total_steps."""
    warmup_steps = min(warmup_steps, total_steps)
    if schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            0.0, peak_lr, warmup_steps=warmup_steps, decay_steps=max(total_steps, warmup_steps + 1),
            end_value=0.0)
    if schedule == "constant":
        return optax.join_schedules(
            [optax.linear_schedule(0.0, peak_lr, warmup_steps), optax.constant_schedule(peak_lr)],
            [warmup_steps])
    raise ValueError(f"unknown schedule {schedule!r}; choose 'cosine' or 'constant'")


def weight_decay_mask(params) -> object:
    """True for kernels (arrays of rank > 1), False for biases and BatchNorm scales/offsets."""
    return jax.tree.map(lambda p: p.ndim > 1, params)


def make_optimizer(opt_config: ml_collections.ConfigDict, *, total_steps: int,
                   batch_size: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The optimizer `opt_config` names, with its learning-rate schedule (for logging)."""
    peak = scale_learning_rate(opt_config.learning_rate, batch_size, opt_config.lr_scaling)
    schedule = learning_rate_schedule(peak, total_steps=total_steps,
                                      warmup_steps=opt_config.warmup_steps,
                                      schedule=opt_config.get("schedule", "cosine"))
    name = opt_config.name
    if name == "lars":
        tx = optax.lars(schedule, weight_decay=opt_config.weight_decay,
                        weight_decay_mask=weight_decay_mask, trust_coefficient=0.001,
                        trust_ratio_mask=weight_decay_mask, momentum=opt_config.momentum)
    elif name == "adamw":
        tx = optax.adamw(schedule, b1=opt_config.b1, b2=opt_config.b2, eps=opt_config.eps,
                         weight_decay=opt_config.weight_decay, mask=weight_decay_mask)
    elif name == "sgd":
        tx = optax.chain(optax.add_decayed_weights(opt_config.weight_decay, weight_decay_mask),
                         optax.sgd(schedule, momentum=opt_config.momentum))
    else:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {OPTIMIZERS}")
    if opt_config.get("grad_clip_norm"):
        tx = optax.chain(optax.clip_by_global_norm(opt_config.grad_clip_norm), tx)
    return tx, schedule
