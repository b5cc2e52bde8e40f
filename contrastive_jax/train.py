"""The train state, the one per-device train step, and the loop with Orbax checkpoints.

The loop is the same for every method: `methods.get(config.method)` supplies the model and the
loss; `parallel` wraps the step as pmap or jit + shard_map. A run is a pure function of its
config: batches, augmentation and step keys derive from (seed, step), so a resumed run ends with
the same parameters as one that was never stopped.
"""

from __future__ import annotations

import os
import signal
import tempfile
import time
from types import ModuleType
from typing import Any, Callable, Iterator, NamedTuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging as absl_logging
from clu import parameter_overview
from jax.sharding import NamedSharding, PartitionSpec

from contrastive_jax import checkpoints, config_checks, methods, optim, parallel
from contrastive_jax.evaluation import evaluators
from contrastive_jax.parallel import fsdp, grad_cache
from contrastive_jax import workdir as workdir_lib
from contrastive_jax.logging import MetricWriter, NoProgressReport

# The data modules and clu's writers (TensorFlow) are imported where data is read and metrics are
# written, not at module level, so the state and the step run where TensorFlow is absent:
# bench.train_step on an accelerator machine.

AUGMENT_ON = ("host", "device")  # Where training views are drawn: tf.data, or the accelerators.
# How the step runs: one per-device function (parallel.py), or the state split over the devices.
PARALLEL = (*parallel.KINDS, "fsdp")


@flax.struct.dataclass
class TrainState:
    """Everything a step reads and writes. `extra` is the method's own state, updated by the
    step but not by the optimizer: MoCo's key encoder and queue; empty for the other methods."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    extra: Any


def resolve_steps(config: ml_collections.ConfigDict, num_train_examples: int
                  ) -> ml_collections.ConfigDict:
    """A copy of `config` with `total_steps` and `optimizer.warmup_steps` made concrete from
    `num_epochs` / `optimizer.warmup_epochs` where those are given instead."""
    config = ml_collections.ConfigDict(config.to_dict())
    steps_per_epoch = max(num_train_examples // config.batch_size, 1)
    if config.get("total_steps", -1) <= 0:
        config.total_steps = int(round(config.num_epochs * steps_per_epoch))
        if config.total_steps <= 0:
            raise ValueError(
                f"config.num_epochs={config.num_epochs} gives no training step: an epoch of "
                f"{num_train_examples} examples is {steps_per_epoch} steps of batch "
                f"{config.batch_size}; raise num_epochs or set total_steps")
    if config.optimizer.get("warmup_steps", -1) < 0:
        config.optimizer.warmup_steps = int(round(
            config.optimizer.get("warmup_epochs", 0.0) * steps_per_epoch))
    return config


def dataset_info(data_config: ml_collections.ConfigDict):
    """The training split's size and classes: from data_sources (tf.data), or where TensorFlow
    is absent from numpy_data (folder and synthetic sources)."""
    from contrastive_jax.data import numpy_data
    if not numpy_data.tensorflow_available():
        return numpy_data.dataset_info(data_config)
    from contrastive_jax.data import sources as data_sources
    return data_sources.dataset_info(data_config)


def check_fields(config: ml_collections.ConfigDict) -> None:
    """The checks of `validate` that need neither the devices nor the data (every numeric
    field's range), so the command line can make them before it starts JAX or reads
    anything."""
    config_checks.check_ranges(config)


def check_workdir(workdir: str) -> None:
    """Creates DIR and DIR/checkpoints, or refuses a path that is a file or cannot be written,
    before any work is done that could not be saved."""
    for path in (workdir, os.path.join(workdir, "checkpoints")):
        if os.path.exists(path) and not os.path.isdir(path):
            raise ValueError(f"{path} is a file, not a directory; use another --workdir")
        try:
            os.makedirs(path, exist_ok=True)
            with tempfile.TemporaryFile(dir=path):
                pass
        except OSError as error:
            raise ValueError(f"cannot write to {path}: {error.strerror or error}") from error


def validate(config: ml_collections.ConfigDict, num_devices: int | None = None) -> None:
    """Refuses configs that cannot run on `num_devices` (default: every device), with a
    message naming the field."""
    num_devices = num_devices or jax.device_count()
    check_fields(config)
    if config.parallel not in PARALLEL:
        raise ValueError(f"config.parallel must be one of {PARALLEL}, got {config.parallel!r}")
    if config.total_steps <= 0:
        raise ValueError(f"config.total_steps must be > 0, got {config.total_steps}")
    if config.get("profile_steps", 0) < 0:
        raise ValueError(f"config.profile_steps must be >= 0, got {config.profile_steps}")
    parallel.per_device_batch_size(config.batch_size, num_devices)
    method = methods.get(config.method)
    if config.data.augment_on not in AUGMENT_ON:
        raise ValueError(f"config.data.augment_on must be one of {AUGMENT_ON}, got "
                         f"{config.data.augment_on!r}")
    if config.data.augment_on == "device" and getattr(method, "IMAGE_TEXT", False):
        raise ValueError(f"config.data.augment_on='device' makes two-view image batches; "
                         f"method {config.method!r} reads image-text pairs: use 'host'")
    if hasattr(method, "validate"):
        method.validate(config)
    grad_cache.validate(config, method, num_devices)
    fsdp.validate(config, method, num_devices)


def create_train_state(method, model, config: ml_collections.ConfigDict,
                       tx: optax.GradientTransformation, rng: jax.Array) -> TrainState:
    """Freshly initialised parameters, BatchNorm statistics, optimizer and method state."""
    init_rng, extra_rng = jax.random.split(rng)
    variables = method.init_variables(model, config, init_rng)
    params = variables["params"]
    init_extra = getattr(method, "init_extra", None)
    extra = init_extra(config, variables, extra_rng) if init_extra else {}
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params),
                      extra=extra)


def make_optimizer(method, config: ml_collections.ConfigDict
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """`config.optimizer`'s optimizer and schedule; the parameters that the method's optional
    `frozen_params(config, params)` marks get no update at all (MoCo v3's patch projection)."""
    tx, schedule = optim.make_optimizer(config.optimizer, total_steps=config.total_steps,
                                        batch_size=config.batch_size)
    frozen_params = getattr(method, "frozen_params", None)
    if frozen_params is not None:
        tx = optim.freeze(tx, lambda params: frozen_params(config, params))
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
    after_update = getattr(method, "after_update", lambda config, state: state)
    num_chunks = config.get("grad_cache_chunks", 1)

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
        grads = jax.lax.pmean(grads, axis)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        new_state = state.replace(params=optax.apply_updates(state.params, updates),
                                  opt_state=opt_state, **changes)
        new_state = after_update(config, new_state).replace(step=state.step + 1)
        metrics = jax.lax.pmean({**metrics, "loss": loss}, axis)
        metrics["learning_rate"] = schedule(state.step)
        return new_state, metrics

    return step


def layout_kind(config: ml_collections.ConfigDict) -> parallel.Kind:
    """How batches, keys and metrics are laid out: fsdp uses shard_map's global arrays."""
    return "shard_map" if config.parallel == "fsdp" else config.parallel


def model_axis(config: ml_collections.ConfigDict) -> str | None:
    """The BatchNorm axis the training model is built with: none under fsdp, whose model runs
    on global arrays and so sees the whole batch."""
    return None if config.parallel == "fsdp" else parallel.AXIS


def make_step(method, model, config: ml_collections.ConfigDict,
              tx: optax.GradientTransformation, schedule: optax.Schedule, state_shapes,
              mesh) -> tuple[Any, Callable]:
    """(the state's shardings, the wrapped step) for `config.parallel`: the per-device step
    under pmap or shard_map with the state replicated, or fsdp.make_step with it split."""
    if config.parallel == "fsdp":
        fsdp_mesh = fsdp.make_mesh(config.get("fsdp_size", 0), list(mesh.devices.flat))
        shardings = fsdp.state_shardings(state_shapes, fsdp_mesh)
        return shardings, fsdp.make_step(method, model, config, tx, schedule, fsdp_mesh,
                                         shardings)
    replicated = NamedSharding(mesh, PartitionSpec())
    return (jax.tree.map(lambda _: replicated, state_shapes),
            parallel.wrap_step(make_train_step(method, model, config, tx, schedule),
                               config.parallel, mesh))


class Program(NamedTuple):
    """What a run compiles, made from the config alone: no data read, no parameters made."""

    method: ModuleType
    model: nn.Module
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    init_state: Callable[[], TrainState]  # The fresh state of `config.seed`.
    state_shapes: Any  # `jax.ShapeDtypeStruct`s of the TrainState.
    state_shardings: Any
    step: Callable  # The wrapped `(state, batch, rng) -> (state, metrics)`.


def build_program(config: ml_collections.ConfigDict, num_classes: int, mesh) -> Program:
    """The model, optimizer, state layout and wrapped step of `config` on `mesh`'s devices,
    as the Trainer runs them and `aot` compiles them for a TPU slice."""
    method = methods.get(config.method)
    model = method.build_model(config, num_classes, model_axis(config))
    tx, schedule = make_optimizer(method, config)

    def init_state() -> TrainState:
        return create_train_state(method, model, config, tx, jax.random.PRNGKey(config.seed))

    state_shapes = jax.eval_shape(init_state)
    shardings, step = make_step(method, model, config, tx, schedule, state_shapes, mesh)
    return Program(method, model, tx, schedule, init_state, state_shapes, shardings, step)


def place_state(host_state, shardings, config: ml_collections.ConfigDict, mesh):
    """A host state on the devices as `make_step`'s step takes it."""
    if config.parallel == "fsdp":
        return fsdp.shard_state(host_state, shardings)
    return parallel.replicate(host_state, config.parallel, mesh)


class _Preemption:
    """Says at which step to save and stop after a SIGTERM; every process gets the same answer.

    One process: a handler records the signal, and the loop stops after the current step.
    Several: jax.distributed.initialize installed JAX's own SIGTERM handler, which tells the
    coordination service; `reached_preemption_sync_point(step)` is then True at the same step
    (the largest step any process had reached, plus one) on every process. A Python handler
    there would hide the signal from JAX: the signalled process would stop alone and the others
    would wait for it in the next collective forever.
    """

    def __init__(self):
        self.requested = False
        self._multi_process = jax.process_count() > 1
        if not self._multi_process:  # Ctrl-C (SIGINT) as SIGTERM: save, then stop.
            self._previous = {sig: signal.signal(sig, self._handle)
                              for sig in (signal.SIGTERM, signal.SIGINT)}

    def _handle(self, signum, frame):
        del signum, frame
        self.requested = True

    def reached(self, step: int) -> bool:
        """Whether to save and stop after `step`; call it at every step, on every process."""
        if self._multi_process:
            from jax.experimental import multihost_utils
            return multihost_utils.reached_preemption_sync_point(step)
        return self.requested

    def restore(self) -> None:
        if not self._multi_process:
            for sig, previous in self._previous.items():
                signal.signal(sig, previous)


class Trainer:
    """Holds what one run needs: the model, the wrapped step, the checkpoint manager."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str):
        """Claims `workdir` for this run (`workdir_lib`), refuses it if it holds another
        config's checkpoints, and writes its config.json."""
        check_fields(config)
        self.info = dataset_info(config.data)
        self.config = config = resolve_steps(config, self.info.num_train_examples)
        validate(config)
        check_workdir(workdir)
        if config.eval.linear_eval:
            from contrastive_jax import linear_eval
            linear_eval.validate(config, self.info.num_classes)
        self.workdir = workdir
        self.is_fsdp = config.parallel == "fsdp"
        self.kind = layout_kind(config)
        self.mesh = parallel.make_mesh()
        program = build_program(config, self.info.num_classes, self.mesh)
        self.method, self.model, self.tx, self.schedule = (
            program.method, program.model, program.tx, program.schedule)
        self.state_shardings, self.train_step = program.state_shardings, program.step
        self._fresh_state, self.state_shapes = program.init_state, program.state_shapes
        self.is_image_text = getattr(self.method, "IMAGE_TEXT", False)
        # Built (and their data looked up) now if the run evaluates, else at the first call
        # of `evaluate`; the names are checked either way.
        self.evaluator_names = evaluators.names(config, self.method, self.info)
        self.evaluators = self._build_evaluators() if config.eval_every >= 0 else None
        if config.batch_size > self.info.num_train_examples > 0:
            absl_logging.warning(
                "the global batch (%d) is larger than the training set (%d examples): every "
                "batch repeats examples", config.batch_size, self.info.num_train_examples)
        # Process 0 claims for the job, without waiting in a collective: one this early opens
        # gloo's connections, whose reads time out (30 s) when the processes' first compiles
        # finish far apart; a refused process 0 exits and the others stop at their first
        # collective.
        self.owner_file = workdir_lib.claim(workdir) if jax.process_index() == 0 else None
        try:
            self.saved_config = checkpoints.check_config(workdir, config, write=True)
            self.checkpoints = checkpoints.make_manager(workdir,
                                                        config.get("keep_checkpoints", 3))
        except BaseException:
            self.release_workdir()
            raise

    def release_workdir(self) -> None:
        """Gives up the workdir (process 0 owns it for the job)."""
        if self.owner_file is not None:
            workdir_lib.release(self.owner_file)
            self.owner_file = None

    # -- state in host / device / checkpoint form ------------------------------------------------

    def initial_state(self) -> TrainState:
        """The newest checkpoint that restores, else a fresh state; on the devices.

        Newer checkpoints that do not restore (truncated or garbled files) are moved to
        DIR/unrestorable_checkpoints/ with a warning, so that the steps they held are trained
        and saved again. If none restores (another model's checkpoints), nothing is moved and
        the run is refused.
        """
        abstract = jax.tree.map(
            lambda x, sharding: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
            self.state_shapes, self.state_shardings)
        found = checkpoints.restore_newest(self.workdir, abstract)
        if found is None and self.is_fsdp:  # Made split: the whole state need not fit a device.
            return jax.jit(self._fresh_state, out_shardings=self.state_shardings)()
        if found is None:
            return parallel.replicate(jax.device_get(jax.jit(self._fresh_state)()), self.kind,
                                      self.mesh)
        step, restored = found
        self.checkpoints.reload()  # Newer checkpoints that did not restore were set aside.
        self._warn_if_batch_size_changed(step)
        absl_logging.info("Restored checkpoint at step %d", step)
        if self.kind == "shard_map":
            return restored
        return parallel.replicate(parallel.unreplicate(restored, "shard_map"), "pmap", self.mesh)

    def _warn_if_batch_size_changed(self, step: int) -> None:
        old = self.saved_config.get("batch_size") if self.saved_config else None
        if old is not None and old != self.config.batch_size:
            absl_logging.warning(
                "resuming from step %d with global batch %d; the workdir's run used %d: the "
                "learning-rate schedule and the batches differ from a run that was never "
                "stopped", step, self.config.batch_size, old)

    def save(self, state: TrainState, step: int) -> None:
        """Saves a checkpoint (atomically, in the background) of the replicated state."""
        if self.kind == "pmap":
            state = parallel.replicate(parallel.unreplicate(state, "pmap"), "shard_map",
                                       self.mesh)
        try:
            self.checkpoints.save(step, args=ocp.args.StandardSave(state))
        except Exception as error:  # Also a failure of the previous save, surfaced here.
            raise self._save_error(error) from error

    def wait_for_saves(self) -> None:
        """Blocks until the background saves are on disk; raises CheckpointError if one
        failed."""
        try:
            self.checkpoints.wait_until_finished()
        except Exception as error:
            raise self._save_error(error) from error

    def _save_error(self, error: Exception) -> checkpoints.CheckpointError:
        return checkpoints.CheckpointError(
            f"cannot write a checkpoint in {self.checkpoints.directory} (disk full or "
            f"read-only?): {checkpoints.one_line(error)}")

    # -- evaluation ------------------------------------------------------------------------------

    def _build_evaluators(self) -> dict[str, evaluators.Evaluator]:
        eval_model = self.method.build_model(self.config, self.info.num_classes, None)
        return evaluators.build(self.evaluator_names, self.config, self.method, eval_model,
                                self.info, self.kind, self.mesh)

    def evaluate(self, state: TrainState) -> dict[str, float]:
        """The metrics of the evaluators that `config.eval.evaluators` names, for this state."""
        if self.evaluators is None:
            self.evaluators = self._build_evaluators()
        return evaluators.run_all(self.evaluators, self.evaluation_variables(state))

    def evaluation_variables(self, state: TrainState) -> dict:
        """The model's variables as the evaluation functions take them: in the layout of
        `self.kind`, whole on every device (gathered from fsdp's split state)."""
        variables = {"params": state.params, "batch_stats": state.batch_stats}
        if self.is_fsdp:
            variables = jax.jit(lambda tree: tree, out_shardings=NamedSharding(
                self.mesh, PartitionSpec()))(variables)
        return variables

    # -- the loop --------------------------------------------------------------------------------

    def _train_batches(self, start_step: int) -> Iterator:
        """Training batches on the devices from `start_step` on: augmented by tf.data on the
        host and sent two steps ahead, or made on the devices (`data.augment_on`)."""
        config = self.config
        kwargs = dict(global_batch_size=config.batch_size, seed=config.seed,
                      start_step=start_step)
        if config.data.augment_on == "device":
            from contrastive_jax.data import device_input
            return device_input.train_batches(config.data, kind=self.kind, mesh=self.mesh,
                                              **kwargs)
        if self.is_image_text:
            from contrastive_jax.data import image_text_pipeline as pipeline
        else:
            from contrastive_jax.data import input_pipeline as pipeline
        return parallel.prefetch_to_devices(pipeline.train_iterator(config.data, **kwargs),
                                            self.kind, self.mesh)

    def _log_start(self, writer: MetricWriter) -> None:
        """The config as TensorBoard hyperparameters, and a table of the parameters' names,
        shapes and sizes in the log (clu's parameter overview; from shapes, so any layout)."""
        writer.write_hparams(self.config.to_dict())
        parameter_overview.log_parameter_overview(
            self.state_shapes.params, include_stats=False,
            msg=f"Parameters of {self.config.method}:", jax_logging_process=0)

    def _periodic_actions(self, writer: MetricWriter, start: int):
        """clu's progress report (steps/s, ETA, the share of time in evaluation), and with
        `profile_steps` > 0 its profiler for that many steps after this run's first (compiling)
        step, into the workdir (else None). Neither where clu's periodic actions cannot be
        imported (without TensorFlow): `profile_steps` is then refused."""
        steps = self.config.get("profile_steps", 0)
        try:
            from contrastive_jax import hooks
        except ImportError as error:
            if steps > 0:
                raise ValueError(f"config.profile_steps={steps} needs clu's profiler, which "
                                 f"cannot be imported here ({error})") from error
            return NoProgressReport(), None
        report = hooks.report_progress(self.config.total_steps, writer.clu_writer)
        return report, hooks.Profile(self.workdir, steps, start + 1) if steps > 0 else None

    def run(self) -> dict[str, float]:
        """Trains from the newest checkpoint to `total_steps`; returns the last metrics."""
        config = self.config
        state = self.initial_state()
        start = int(parallel.unreplicate(state.step, self.kind))
        writer = MetricWriter(self.workdir, start_step=start)
        self._log_start(writer)
        report, profile = self._periodic_actions(writer, start)
        evaluating = config.eval_every >= 0
        if start == 0 and evaluating and config.eval_at_start:
            writer.write(0, self.evaluate(state))
        batches = self._train_batches(start)
        rng = parallel.replicate(jax.random.PRNGKey(config.seed + 1), self.kind, self.mesh)
        preemption = _Preemption()
        last: dict[str, float] = {}
        timer = time.perf_counter()
        timed_steps = 0
        try:
            for step in range(start + 1, config.total_steps + 1):
                batch = next(batches)
                state, metrics = self.train_step(state, batch, rng)
                timed_steps += 1
                report(step)
                if profile is not None:
                    profile(step)
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
                    with report.timed("eval"):
                        results = self.evaluate(state)
                    writer.write(step, results)
                    last.update(results)
                    timer, timed_steps = time.perf_counter(), 0
                preempted = preemption.reached(step)
                if step % config.checkpoint_every == 0 or is_last or preempted:
                    _finite_metrics(parallel.unreplicate(metrics, self.kind), step)
                    _check_finite_state(state, step)
                    self.save(state, step)
                if preempted and not is_last:
                    absl_logging.warning("SIGTERM: saved a checkpoint at step %d, exiting", step)
                    last["preempted_at"] = step
                    break
            finished_here = start < config.total_steps and "preempted_at" not in last
            if config.eval.linear_eval and finished_here:
                from contrastive_jax import linear_eval
                results = linear_eval.trainer_linear_eval(self, state)
                writer.write(config.total_steps, results)
                last.update(results)
        finally:
            try:
                self.wait_for_saves()
            finally:
                preemption.restore()
                if profile is not None:
                    profile.close()
                writer.close()
                self.release_workdir()
        return last


@jax.jit
def _all_finite(tree) -> jax.Array:
    return jnp.all(jnp.asarray([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
                                if jnp.issubdtype(x.dtype, jnp.inexact)] or [True]))


def _check_finite_state(state: TrainState, step: int) -> None:
    """No checkpoint holds non-finite parameters or statistics: an update can make them so while
    the loss that preceded it was finite (a learning rate of 1e40), and every resume would then
    fail at once."""
    if not bool(_all_finite((state.params, state.batch_stats, state.extra))):
        raise FloatingPointError(
            f"the parameters are not all finite after step {step} (the update diverged: "
            "learning rate too high?); stopping before the state is checkpointed")


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
