"""Optimizers and schedules from optax: LARS (SimCLR), AdamW (CLIP/SigLIP), SGD.

SimCLR excludes biases and BatchNorm parameters from weight decay and from LARS's trust-ratio
adaptation; `weight_decay_mask` marks the parameters that get both (kernels, embeddings).
`optimizer.exclude_bias_and_norm = False` decays (and with LARS adapts) every parameter, as the
SGD of MoCo v2 and SupContrast and SwAV's LARC do. LARS takes its trust coefficient from
`optimizer.lars_trust_coefficient` and with `optimizer.lars_clip` caps each parameter's adapted
rate at the learning rate (LARC's clip mode, solo-learn's `clip_lr`).

AdamW's decay comes in two forms (`optimizer.weight_decay_mode`): "lr_scaled", optax.adamw's,
where a step shrinks a kernel by lr(t) * wd; and "decoupled", big_vision's (SigLIP), where it
shrinks by wd * s(t), s the schedule's multiplier (from 0 up to 1 and back), so `wd` is a
fraction per step, independent of the peak learning rate. At lr 1e-3 the two differ 1000-fold.
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

LR_SCALING = ("linear", "sqrt", "none")
OPTIMIZERS = ("lars", "adamw", "sgd")
WEIGHT_DECAY_MODES = ("lr_scaled", "decoupled")
NOT_DECAYED = ("bias", "scale")  # Leaf names: biases, BatchNorm / LayerNorm scales.


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
    """True for kernels and embeddings (arrays of rank > 1); False for scalars and for biases and
    norm scales of any rank (by name: attention biases are [heads, head_dim], and
    `model.scan_layers` stacks every block's leaves on a layer axis)."""
    return jax.tree_util.tree_map_with_path(
        lambda path, p: p.ndim > 1 and getattr(path[-1], "key", None) not in NOT_DECAYED, params)


def decay_mask(opt_config: ml_collections.ConfigDict) -> Callable[[object], object]:
    """`weight_decay_mask`, or where `exclude_bias_and_norm` is False every parameter."""
    if opt_config.exclude_bias_and_norm:
        return weight_decay_mask
    return lambda params: jax.tree.map(lambda _: True, params)


def clip_trust_ratio_by_lr(learning_rate: optax.Schedule,
                           trust_coefficient: float) -> optax.GradientTransformation:
    """LARC's clip mode: each update d times min(eta ||p|| / ||d|| / lr(t), 1), so that after
    the learning rate no parameter moves at more than its trust ratio or lr(t) (1 where a
    norm or lr(t) is 0). The step count is its state."""

    def init_fn(params):
        del params
        return optax.ScaleByScheduleState(count=jnp.zeros([], jnp.int32))

    def update_fn(updates, state, params):
        lr = learning_rate(state.count)

        def scale(update, param):
            param_norm, update_norm = jnp.linalg.norm(param), jnp.linalg.norm(update)
            ratio = trust_coefficient * param_norm / jnp.where(update_norm > 0, update_norm, 1)
            usable = (param_norm > 0) & (update_norm > 0) & (lr > 0)
            return update * jnp.where(usable, jnp.minimum(ratio / jnp.where(lr > 0, lr, 1), 1), 1)

        return (jax.tree.map(scale, updates, params),
                optax.ScaleByScheduleState(count=optax.safe_int32_increment(state.count)))

    return optax.GradientTransformation(init_fn, update_fn)


def _lars(opt_config: ml_collections.ConfigDict,
          schedule: optax.Schedule) -> optax.GradientTransformation:
    """optax.lars at `lars_trust_coefficient`, or with `lars_clip` LARC's clipped ratio."""
    mask, eta = decay_mask(opt_config), opt_config.lars_trust_coefficient
    if not opt_config.lars_clip:
        return optax.lars(schedule, weight_decay=opt_config.weight_decay,
                          weight_decay_mask=mask, trust_coefficient=eta, trust_ratio_mask=mask,
                          momentum=opt_config.momentum)
    return optax.chain(optax.add_decayed_weights(opt_config.weight_decay, mask),
                       optax.masked(clip_trust_ratio_by_lr(schedule, eta), mask),
                       optax.scale_by_learning_rate(schedule),
                       optax.trace(decay=opt_config.momentum))


def make_optimizer(opt_config: ml_collections.ConfigDict, *, total_steps: int,
                   batch_size: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The optimizer `opt_config` names, with its learning-rate schedule (for logging).

    Top-level parameter groups named in `opt_config.fixed_lr_params` (SimSiam's predictor, Chen
    & He 2021, 4.2) are updated at the peak learning rate throughout: no warmup, no decay.
    """
    peak = scale_learning_rate(opt_config.learning_rate, batch_size, opt_config.lr_scaling)
    multiplier = learning_rate_schedule(1.0, total_steps=total_steps,
                                        warmup_steps=opt_config.warmup_steps,
                                        schedule=opt_config.schedule)
    schedule = lambda step: peak * multiplier(step)  # noqa: E731
    tx = _scheduled_optimizer(opt_config, peak, multiplier)
    fixed = tuple(opt_config.get("fixed_lr_params", ()))
    if fixed:
        tx = optax.multi_transform(
            {"scheduled": tx,
             "fixed": _scheduled_optimizer(opt_config, peak, optax.constant_schedule(1.0))},
            functools.partial(_fixed_lr_labels, fixed))
    if opt_config.grad_clip_norm:
        tx = optax.chain(optax.clip_by_global_norm(opt_config.grad_clip_norm), tx)
    return tx, schedule


def _fixed_lr_labels(fixed: tuple[str, ...], params) -> dict:
    """"fixed" for every leaf of the top-level groups in `fixed`, else "scheduled"."""
    missing = set(fixed) - set(params)
    if missing:
        raise ValueError(f"config.optimizer.fixed_lr_params names {sorted(missing)}, which the "
                         f"model does not have; its parameter groups are {sorted(params)}")
    return {name: jax.tree.map(lambda _: "fixed" if name in fixed else "scheduled", group)
            for name, group in params.items()}


def _scheduled_optimizer(opt_config: ml_collections.ConfigDict, peak: float,
                         multiplier: optax.Schedule) -> optax.GradientTransformation:
    """The optimizer `opt_config` names at learning rate peak * multiplier(step)."""
    schedule = lambda step: peak * multiplier(step)  # noqa: E731
    name = opt_config.name
    mode = opt_config.weight_decay_mode
    if mode not in WEIGHT_DECAY_MODES:
        raise ValueError(f"unknown weight_decay_mode {mode!r}; choose one of "
                         f"{WEIGHT_DECAY_MODES}")
    if mode == "decoupled" and name != "adamw":
        raise ValueError(f"weight_decay_mode 'decoupled' is AdamW's (big_vision); optimizer "
                         f"{name!r} takes 'lr_scaled'")
    mask = decay_mask(opt_config)
    if name == "adamw" and mode == "decoupled":
        return optax.chain(
            optax.scale_by_adam(b1=opt_config.b1, b2=opt_config.b2, eps=opt_config.eps),
            optax.scale(peak),
            optax.add_decayed_weights(opt_config.weight_decay, mask),
            optax.scale_by_schedule(multiplier),
            optax.scale(-1.0))
    if name == "lars":
        return _lars(opt_config, schedule)
    if name == "adamw":
        return optax.adamw(schedule, b1=opt_config.b1, b2=opt_config.b2, eps=opt_config.eps,
                           weight_decay=opt_config.weight_decay, mask=mask)
    if name == "sgd":
        return optax.chain(optax.add_decayed_weights(opt_config.weight_decay, mask),
                           optax.sgd(schedule, momentum=opt_config.momentum))
    raise ValueError(f"unknown optimizer {name!r}; choose one of {OPTIMIZERS}")


def freeze(tx: optax.GradientTransformation,
           is_frozen: Callable[[object], object]) -> optax.GradientTransformation:
    """`tx` for the parameters `is_frozen(params)` marks False; a zero update (no step, no
    weight decay, no optimizer state) for those it marks True, such as MoCo v3's fixed random
    patch projection."""
    labels = lambda params: jax.tree.map(  # noqa: E731
        lambda frozen: "frozen" if frozen else "trained", is_frozen(params))
    return optax.multi_transform({"trained": tx, "frozen": optax.set_to_zero()}, labels)


def apply_gradients(state, grads, tx: optax.GradientTransformation, changes: dict,
                    after_update: Callable):
    """The update every layout's step ends with: `tx`'s step on the (already averaged)
    gradients, the other state fields the loss changed (`changes`: BatchNorm statistics,
    MoCo's queue), then the method's `after_update(state)`, which sees the new parameters
    (a momentum encoder, a clamped scale), and the step count advanced by one."""
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    new_state = state.replace(params=optax.apply_updates(state.params, updates),
                              opt_state=opt_state, **changes)
    return after_update(new_state).replace(step=state.step + 1)
