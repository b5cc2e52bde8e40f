"""The train state, the one per-device train step, and the loop with Orbax checkpoints.

The loop is the same for every method: `methods.get(config.method)` supplies the model and the
loss; `parallel` wraps the step as pmap or jit + shard_map. A run is a pure function of its
config: batches, augmentation and step keys derive from (seed, step), so a resumed run ends with
the same parameters as one that was never stopped.
"""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging as absl_logging
from jax.sharding import NamedSharding, PartitionSpec

from contrastive_jax import evaluate, methods, optim, parallel
from contrastive_jax.logging import MetricWriter

# input_pipeline (TensorFlow) is imported where data is read, not at module level, so the state
# and the step run where TensorFlow is absent: bench.train_step on an accelerator machine.

# Config entries that decide the shapes and meaning of a checkpoint; a workdir whose
# config.json differs in any of them is refused rather than silently restored.
CHECKPOINT_DEFINING_KEYS = ("method", "model", "optimizer.name", "data.image_size")


class ConfigMismatchError(ValueError):
    """The workdir holds checkpoints of another config."""


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any


def resolve_steps(config: ml_collections.ConfigDict, num_train_examples: int
                  ) -> ml_collections.ConfigDict:
    """A copy of `config` with `total_steps` and `optimizer.warmup_steps` made concrete from
    `num_epochs` / `optimizer.warmup_epochs` where those are given instead."""
    config = ml_collections.ConfigDict(config.to_dict())
    steps_per_epoch = max(num_train_examples // config.batch_size, 1)
    if config.get("total_steps", -1) <= 0:
        config.total_steps = int(round(config.num_epochs * steps_per_epoch))
    if config.optimizer.get("warmup_steps", -1) < 0:
        config.optimizer.warmup_steps = int(round(
            config.optimizer.get("warmup_epochs", 0.0) * steps_per_epoch))
    return config


def validate(config: ml_collections.ConfigDict) -> None:
    """Refuses configs that cannot run, with a message naming the field."""
    if config.parallel not in parallel.KINDS:
        raise ValueError(f"config.parallel must be one of {parallel.KINDS}, got "
                         f"{config.parallel!r}")
    if "temperature" in config.loss and config.loss.temperature <= 0:
        raise ValueError(f"config.loss.temperature must be > 0, got {config.loss.temperature}")
    if config.total_steps <= 0:
        raise ValueError(f"config.total_steps must be > 0, got {config.total_steps}")
    parallel.per_device_batch_size(config.batch_size)
    methods.get(config.method)


def create_train_state(model, tx: optax.GradientTransformation, rng: jax.Array,
                       input_shape: tuple[int, ...]) -> TrainState:
    """Freshly initialised parameters, BatchNorm statistics and optimizer state."""
    variables = model.init(rng, jnp.zeros(input_shape, jnp.float32), train=False)
    params = variables["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params))


def make_train_step(method, model, config, tx, schedule) -> Callable:
    """The per-device step `(state, batch, rng) -> (state, metrics)` for either wrapper.

    Gradients and metrics are `pmean`-ed over the `data` axis; BatchNorm statistics are already
    identical on every device because BatchNorm averages its batch moments over the axis.
    """
    axis = parallel.AXIS

    def step(state: TrainState, batch, rng):
        rng = jax.random.fold_in(jax.random.fold_in(rng, state.step), jax.lax.axis_index(axis))
        grad_fn = jax.value_and_grad(
            lambda p: method.loss_fn(model, config, p, state.batch_stats, batch, rng, axis),
            has_aux=True)
        (loss, (batch_stats, metrics)), grads = grad_fn(state.params)
        grads = jax.lax.pmean(grads, axis)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        new_state = TrainState(step=state.step + 1,
                               params=optax.apply_updates(state.params, updates),
                               batch_stats=batch_stats, opt_state=opt_state)
        metrics = jax.lax.pmean({**metrics, "loss": loss}, axis)
        metrics["learning_rate"] = schedule(state.step)
        return new_state, metrics

    return step


def _check_workdir_config(workdir: str, config: ml_collections.ConfigDict) -> None:
    """Writes DIR/config.json, or refuses a workdir whose checkpoints came from another config."""
    path = os.path.join(workdir, "config.json")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            saved = ml_collections.ConfigDict(json.load(f))
        for key in CHECKPOINT_DEFINING_KEYS:
            old, new = _lookup(saved, key), _lookup(config, key)
            if old != new:
                raise ConfigMismatchError(
                    f"workdir {workdir} holds checkpoints of another config: {key} was {old}, "
                    f"now {new}; use a new --workdir")
    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            f.write(config.to_json(indent=2))
        os.replace(path + ".tmp", path)


def _lookup(config: ml_collections.ConfigDict, dotted: str):
    value = config
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, (dict, ml_collections.ConfigDict)) else None
    return value.to_dict() if isinstance(value, ml_collections.ConfigDict) else value


class _Preemption:
    """Records SIGTERM so the loop can save at the current step and exit cleanly."""

    def __init__(self):
        self.requested = False
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        del signum, frame
        self.requested = True

    def reached(self, step: int) -> bool:
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            return self.requested or multihost_utils.reached_preemption_sync_point(step)
        return self.requested

    def restore(self) -> None:
        signal.signal(signal.SIGTERM, self._previous)


class Trainer:
    """Holds what one run needs: the model, the wrapped step, the checkpoint manager."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str):
        from contrastive_jax import input_pipeline
        self.info = input_pipeline.dataset_info(config.data)
        self.config = config = resolve_steps(config, self.info.num_train_examples)
        validate(config)
        self.workdir = workdir
        self.kind = config.parallel
        self.mesh = parallel.make_mesh()
        self.method = methods.get(config.method)
        self.model = self.method.build_model(config, self.info.num_classes, parallel.AXIS)
        self.tx, self.schedule = optim.make_optimizer(
            config.optimizer, total_steps=config.total_steps, batch_size=config.batch_size)
        self.train_step = parallel.wrap_step(
            make_train_step(self.method, self.model, config, self.tx, self.schedule),
            self.kind, self.mesh)
        self.encode = self.method.encoder_features(
            self.method.build_model(config, self.info.num_classes, None))
        _check_workdir_config(workdir, config)
        self.checkpoints = ocp.CheckpointManager(
            os.path.join(os.path.abspath(workdir), "checkpoints"),
            options=ocp.CheckpointManagerOptions(
                max_to_keep=config.get("keep_checkpoints", 3), create=True,
                enable_async_checkpointing=True))

    # -- state in host / device / checkpoint form ------------------------------------------------

    def initial_state(self) -> TrainState:
        """The newest checkpoint's state if there is one, else a fresh one; on the devices."""
        init = lambda: create_train_state(self.model, self.tx,
                                          jax.random.PRNGKey(self.config.seed),
                                          self.method.input_shape(self.config))
        latest = self.checkpoints.latest_step()
        if latest is None:
            return parallel.replicate(jax.device_get(jax.jit(init)()), self.kind, self.mesh)
        replicated = NamedSharding(self.mesh, PartitionSpec())
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                               sharding=replicated),
                                jax.eval_shape(init))
        try:
            restored = self.checkpoints.restore(latest, args=ocp.args.StandardRestore(abstract))
        except (ValueError, KeyError) as error:
            raise ConfigMismatchError(
                f"checkpoint {latest} in {self.workdir} does not fit this config: {error}"
            ) from error
        absl_logging.info("Restored checkpoint at step %d", latest)
        if self.kind == "shard_map":
            return restored
        return parallel.replicate(parallel.unreplicate(restored, "shard_map"), "pmap", self.mesh)

    def save(self, state: TrainState, step: int) -> None:
        """Saves a checkpoint (atomically, in the background) of the replicated state."""
        if self.kind == "pmap":
            state = parallel.replicate(parallel.unreplicate(state, "pmap"), "shard_map",
                                       self.mesh)
        self.checkpoints.save(step, args=ocp.args.StandardSave(state))

    # -- evaluation ------------------------------------------------------------------------------

    def evaluate(self, state: TrainState) -> dict[str, float]:
        """kNN and linear-probe accuracy of the encoder's features on the evaluation split."""
        from contrastive_jax import input_pipeline
        variables = {"params": state.params, "batch_stats": state.batch_stats}
        data, eval_config = self.config.data, self.config.eval

        def features(split):
            batches = input_pipeline.eval_iterator(data, split,
                                                   global_batch_size=eval_config.batch_size)
            return evaluate.extract_features(self.encode, variables, batches, self.kind,
                                             self.mesh)

        return evaluate.evaluate_representation(
            features(data.get("train_split", "train")), features(data.get("eval_split", "test")),
            self.info.num_classes, eval_config)

    # -- the loop --------------------------------------------------------------------------------

    def run(self) -> dict[str, float]:
        """Trains from the newest checkpoint to `total_steps`; returns the last metrics."""
        from contrastive_jax import input_pipeline
        config = self.config
        state = self.initial_state()
        start = int(parallel.unreplicate(state.step, self.kind))
        writer = MetricWriter(self.workdir)
        evaluating = config.eval_every >= 0
        if start == 0 and evaluating and config.eval_at_start:
            writer.write(0, self.evaluate(state))
        batches = input_pipeline.train_iterator(config.data, global_batch_size=config.batch_size,
                                                seed=config.seed, start_step=start)
        rng = parallel.replicate(jax.random.PRNGKey(config.seed + 1), self.kind, self.mesh)
        preemption = _Preemption()
        last: dict[str, float] = {}
        timer = time.perf_counter()
        timed_steps = 0
        try:
            for step in range(start + 1, config.total_steps + 1):
                batch = parallel.host_batch_to_devices(next(batches), self.kind, self.mesh)
                state, metrics = self.train_step(state, batch, rng)
                timed_steps += 1
                is_last = step == config.total_steps
                if step % config.log_every == 0 or is_last:
                    last = _finite_metrics(parallel.unreplicate(metrics, self.kind), step)
                    elapsed = time.perf_counter() - timer
                    last["examples_per_sec"] = timed_steps * config.batch_size / elapsed
                    seconds_left = elapsed / timed_steps * (config.total_steps - step)
                    writer.write(step, last)
                    writer.log_progress(step, config.total_steps, last, seconds_left)
                    timer, timed_steps = time.perf_counter(), 0
                if evaluating and (config.eval_every and step % config.eval_every == 0
                                   or is_last):
                    results = self.evaluate(state)
                    writer.write(step, results)
                    last.update(results)
                    timer, timed_steps = time.perf_counter(), 0
                preempted = preemption.reached(step)
                if step % config.checkpoint_every == 0 or is_last or preempted:
                    _finite_metrics(parallel.unreplicate(metrics, self.kind), step)
                    self.save(state, step)
                if preempted and not is_last:
                    absl_logging.warning("SIGTERM: saved a checkpoint at step %d, exiting", step)
                    last["preempted_at"] = step
                    break
        finally:
            self.checkpoints.wait_until_finished()
            preemption.restore()
            writer.close()
        return last


def _finite_metrics(metrics: dict, step: int) -> dict[str, float]:
    """Host floats of the metrics; a non-finite loss stops the run before it is checkpointed."""
    values = {k: float(np.asarray(v)) for k, v in metrics.items()}
    if not np.isfinite(values["loss"]):
        raise FloatingPointError(f"loss is {values['loss']} at step {step}; stopping before "
                                 "the diverged state is checkpointed (lower the learning rate?)")
    return values


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Runs (or resumes) the training that `config` describes in `workdir`."""
    return Trainer(config, workdir).run()
