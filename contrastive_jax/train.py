"""The training loop: the Trainer runs train_step's program, evaluates, and saves Orbax checkpoints.

The loop is the same for every method and layout: `train_step.build_program` supplies the
model, the optimizer and the wrapped step. A run is a pure function of its
config: batches, augmentation and step keys derive from (seed, step), so a resumed run ends with
the same parameters as one that was never stopped.
"""

from __future__ import annotations

import signal
import time
from typing import Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging as absl_logging
from clu import parameter_overview

from contrastive_jax import checkpoints, config_checks, train_step
from contrastive_jax.data import availability
from contrastive_jax import workdir as workdir_lib
from contrastive_jax.evaluation import evaluators, linear_protocol
from contrastive_jax.parallel.layout import Layout
from contrastive_jax.logging import MetricWriter, NoProgressReport

# The data modules and clu's writers (TensorFlow) are imported where data is read and metrics are
# written, not at module level, so the state and the step run where TensorFlow is absent:
# bench.train_step on an accelerator machine.


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
        config_checks.check_ranges(config)
        self.info = availability.dataset_info(config.data)
        self.config = config = config_checks.resolve_steps(config, self.info.num_train_examples)
        train_step.validate(config)
        workdir_lib.check_writable(workdir)
        if config.eval.linear_eval:
            linear_protocol.validate(config, self.info.num_classes)
        self.workdir = workdir
        self.layout = Layout.from_config(config)
        program = train_step.build_program(config, self.info.num_classes, self.layout)
        self.method, self.model, self.tx, self.schedule = (
            program.method, program.model, program.tx, program.schedule)
        self.state_shardings, self.train_step = program.state_shardings, program.step
        self._fresh_state, self.state_shapes = program.init_state, program.state_shapes
        self.is_image_text = self.method.image_text
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
                                                        config.keep_checkpoints)
        except BaseException:
            self.release_workdir()
            raise

    def release_workdir(self) -> None:
        """Gives up the workdir (process 0 owns it for the job)."""
        if self.owner_file is not None:
            workdir_lib.release(self.owner_file)
            self.owner_file = None

    # -- state in host / device / checkpoint form ------------------------------------------------

    def initial_state(self) -> train_step.TrainState:
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
        if found is None and self.layout.is_fsdp:  # Made split: the whole state need not fit.
            return jax.jit(self._fresh_state, out_shardings=self.state_shardings)()
        if found is None:
            return self.layout.replicate(jax.device_get(jax.jit(self._fresh_state)()))
        step, restored = found
        self.checkpoints.reload()  # Newer checkpoints that did not restore were set aside.
        self._warn_if_batch_size_changed(step)
        absl_logging.info("Restored checkpoint at step %d", step)
        return self.layout.from_checkpoint(restored)

    def _warn_if_batch_size_changed(self, step: int) -> None:
        old = self.saved_config.get("batch_size") if self.saved_config else None
        if old is not None and old != self.config.batch_size:
            absl_logging.warning(
                "resuming from step %d with global batch %d; the workdir's run used %d: the "
                "learning-rate schedule and the batches differ from a run that was never "
                "stopped", step, self.config.batch_size, old)

    def save(self, state: train_step.TrainState, step: int) -> None:
        """Saves a checkpoint (atomically, in the background) of the replicated state."""
        try:
            self.checkpoints.save(step, args=ocp.args.StandardSave(
                self.layout.for_checkpoint(state)))
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
                                self.info, self.layout)

    def evaluate(self, state: train_step.TrainState) -> dict[str, float]:
        """The metrics of the evaluators that `config.eval.evaluators` names, for this state."""
        if self.evaluators is None:
            self.evaluators = self._build_evaluators()
        return evaluators.run_all(self.evaluators, self.evaluation_variables(state))

    def evaluation_variables(self, state: train_step.TrainState) -> dict:
        """The model's variables as the evaluation functions take them: in this run's layout,
        whole on every device (gathered from fsdp's split state)."""
        return self.layout.whole({"params": state.params, "batch_stats": state.batch_stats})

    def linear_eval(self, state: train_step.TrainState) -> dict[str, float]:
        """SimCLR's linear evaluation protocol on this state's frozen encoder."""
        encoder_model = self.method.build_model(self.config, self.info.num_classes, None)
        return linear_protocol.linear_eval(self.config, self.evaluation_variables(state),
                                           self.method.encoder_features(encoder_model),
                                           self.layout)

    # -- the loop --------------------------------------------------------------------------------

    def _train_batches(self, start_step: int) -> Iterator:
        """Training batches on the devices from `start_step` on: augmented by tf.data on the
        host and sent two steps ahead, or made on the devices (`data.augment_on`)."""
        config = self.config
        kwargs = dict(global_batch_size=config.batch_size, seed=config.seed,
                      start_step=start_step)
        if config.data.augment_on == "device":
            from contrastive_jax.data import device_input
            return device_input.train_batches(config.data, layout=self.layout, **kwargs)
        if self.is_image_text:
            from contrastive_jax.data import image_text_pipeline as pipeline
        else:
            from contrastive_jax.data import input_pipeline as pipeline
        return self.layout.prefetch(pipeline.train_iterator(config.data, **kwargs))

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
        steps = self.config.profile_steps
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
        start = int(self.layout.unreplicate(state.step))
        writer = MetricWriter(self.workdir, start_step=start)
        self._log_start(writer)
        report, profile = self._periodic_actions(writer, start)
        evaluating = config.eval_every >= 0
        if start == 0 and evaluating and config.eval_at_start:
            writer.write(0, self.evaluate(state))
        batches = self._train_batches(start)
        rng = self.layout.replicate(jax.random.PRNGKey(config.seed + 1))
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
                    last = _finite_metrics(self.layout.unreplicate(metrics), step)
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
                    _finite_metrics(self.layout.unreplicate(metrics), step)
                    _check_finite_state(state, step)
                    self.save(state, step)
                if preempted and not is_last:
                    absl_logging.warning("SIGTERM: saved a checkpoint at step %d, exiting", step)
                    last["preempted_at"] = step
                    break
            finished_here = start < config.total_steps and "preempted_at" not in last
            if config.eval.linear_eval and finished_here:
                results = self.linear_eval(state)
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


def _check_finite_state(state: train_step.TrainState, step: int) -> None:
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
