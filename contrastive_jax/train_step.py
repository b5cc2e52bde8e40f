"""The train state, the one per-device train step, and the program a run compiles.

`build_program(config, num_classes, layout)` is everything a run compiles, made from the config
alone: the method's model, the optimizer, the state's shapes and layout, and the wrapped step,
the per-device `make_train_step` under pmap or jit + shard_map, or `fsdp.make_step` with the
state split. Both end in `apply_gradients`, so an update means the same under every layout.
The Trainer (train.py) runs it; `aot` compiles it for a TPU slice.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from contrastive_jax import config_checks, methods, optim, parallel
from contrastive_jax.augment import spec
from contrastive_jax.parallel import fsdp, grad_cache
from contrastive_jax.parallel.layout import PARALLEL, Layout


@flax.struct.dataclass
class TrainState:
    """Everything a step reads and writes. `extra` is the method's own state, updated by the
    step but not by the optimizer: MoCo's key encoder and queue; empty for the other methods."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    extra: Any


def validate(config: ml_collections.ConfigDict, num_devices: int | None = None) -> None:
    """Refuses configs that cannot run on `num_devices` (default: every device), with a
    message naming the field."""
    num_devices = num_devices or jax.device_count()
    config_checks.check_ranges(config)
    if config.parallel not in PARALLEL:
        raise ValueError(f"config.parallel must be one of {PARALLEL}, got {config.parallel!r}")
    if config.total_steps <= 0:
        raise ValueError(f"config.total_steps must be > 0, got {config.total_steps}")
    if config.profile_steps < 0:
        raise ValueError(f"config.profile_steps must be >= 0, got {config.profile_steps}")
    parallel.per_device_batch_size(config.batch_size, num_devices)
    method = methods.get(config.method)
    if config.data.augment_on not in spec.AUGMENT_ON:
        raise ValueError(f"config.data.augment_on must be one of {spec.AUGMENT_ON}, got "
                         f"{config.data.augment_on!r}")
    if config.data.augment_on == "device" and method.image_text:
        raise ValueError(f"config.data.augment_on='device' makes two-view image batches; "
                         f"method {config.method!r} reads image-text pairs: use 'host'")
    method.validate(config)
    grad_cache.validate(config, method, num_devices)
    fsdp.validate(config, method, num_devices)


def create_train_state(method, model, config: ml_collections.ConfigDict,
                       tx: optax.GradientTransformation, rng: jax.Array) -> TrainState:
    """Freshly initialised parameters, BatchNorm statistics, optimizer and method state."""
    init_rng, extra_rng = jax.random.split(rng)
    variables = method.init_variables(model, config, init_rng)
    params = variables["params"]
    extra = method.init_extra(config, variables, extra_rng)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params),
                      extra=extra)


def make_optimizer(method, config: ml_collections.ConfigDict
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """`config.optimizer`'s optimizer and schedule; the parameters that the method's optional
    `frozen_params(config, params)` marks get no update at all (MoCo v3's patch projection)."""
    tx, schedule = optim.make_optimizer(config.optimizer, total_steps=config.total_steps,
                                        batch_size=config.batch_size)
    if method.frozen_params is not None:
        tx = optim.freeze(tx, lambda params: method.frozen_params(config, params))
    return tx, schedule


def make_train_step(method, model, config, tx, schedule) -> Callable:
    """The per-device step `(state, batch, rng) -> (state, metrics)` for either wrapper.

    The method's loss returns the state fields it changes besides the parameters (BatchNorm
    statistics, MoCo's queue); its optional `after_update(config, state)` then sees the updated
    parameters (MoCo's momentum encoder, CLIP's clamped scale). Gradients and metrics are
    `pmean`-ed over the `data` axis; BatchNorm statistics are already identical on every device
    because BatchNorm averages its batch moments over the axis. The loss gets the step's key,
    the same on every device; a method that wants per-device randomness folds in the axis index.
    With `grad_cache_chunks` > 1 the gradient comes from `grad_cache.value_and_grad` over the
    method's `loss_parts`, chunk by chunk.
    """
    axis = parallel.AXIS
    num_chunks = config.grad_cache_chunks

    def step(state: TrainState, batch, rng):
        rng = jax.random.fold_in(rng, state.step)
        if num_chunks > 1:
            (loss, (changes, metrics)), grads = grad_cache.value_and_grad(
                method.loss_parts(model, config, axis), state.params, state.batch_stats, batch,
                num_chunks)
        else:
            grad_fn = jax.value_and_grad(
                lambda p: method.loss_fn(model, config, p, state, batch, rng, axis),
                has_aux=True)
            (loss, (changes, metrics)), grads = grad_fn(state.params)
        new_state = optim.apply_gradients(state, jax.lax.pmean(grads, axis), tx, changes,
                                          lambda new: method.after_update(config, new))
        metrics = jax.lax.pmean({**metrics, "loss": loss}, axis)
        metrics["learning_rate"] = schedule(state.step)
        return new_state, metrics

    return step


def make_step(method, model, config: ml_collections.ConfigDict,
              tx: optax.GradientTransformation, schedule: optax.Schedule, state_shapes,
              layout: Layout) -> tuple[Any, Callable]:
    """(the state's shardings, the wrapped step) in `layout`: the per-device step under pmap or
    shard_map with the state replicated, or fsdp.make_step with it split."""
    shardings = layout.state_shardings(state_shapes)
    if layout.is_fsdp:
        return shardings, fsdp.make_step(method, model, config, tx, schedule,
                                         layout.fsdp_mesh(), shardings)
    step = make_train_step(method, model, config, tx, schedule)
    return shardings, parallel.wrap_step(step, layout.kind, layout.mesh)


class Program(NamedTuple):
    """What a run compiles, made from the config alone: no data read, no parameters made."""

    method: methods.Method
    model: nn.Module
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    init_state: Callable[[], TrainState]  # The fresh state of `config.seed`.
    state_shapes: Any  # `jax.ShapeDtypeStruct`s of the TrainState.
    state_shardings: Any
    step: Callable  # The wrapped `(state, batch, rng) -> (state, metrics)`.


def build_program(config: ml_collections.ConfigDict, num_classes: int, layout: Layout
                  ) -> Program:
    """The model, optimizer, state layout and wrapped step of `config` in `layout`, as the
    Trainer runs them and `aot` compiles them for a TPU slice."""
    method = methods.get(config.method)
    model = method.build_model(config, num_classes, layout.bn_axis)
    tx, schedule = make_optimizer(method, config)

    def init_state() -> TrainState:
        return create_train_state(method, model, config, tx, jax.random.PRNGKey(config.seed))

    state_shapes = jax.eval_shape(init_state)
    shardings, step = make_step(method, model, config, tx, schedule, state_shapes, layout)
    return Program(method, model, tx, schedule, init_state, state_shapes, shardings, step)
