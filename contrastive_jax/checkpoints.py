"""A workdir's checkpoints and config.json, apart from the training loop.

Training writes DIR/config.json and Orbax checkpoints in DIR/checkpoints/<step>/ (the
TrainState, saved whole). Two kinds of users read them:

- the Trainer, which resumes: `check_config` refuses another config's workdir, and
  `restore_newest` restores the newest checkpoint that restores into the training state's
  shapes and shardings, setting aside newer ones that do not (truncated or garbled files);
- commands that only read a workdir (export, linear_eval): `restore(workdir)` gives the config,
  step and variables as host arrays without reading data or building the training program, and
  writes nothing, so a read-only or archived workdir can be read.
"""

from __future__ import annotations

import contextlib
import json
import logging as python_logging
import os
import shutil
from typing import Any, Iterator, NamedTuple

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging as absl_logging

from contrastive_jax import config_checks, config_defaults, files, methods

# Config entries that decide the shapes and meaning of a checkpoint; a workdir whose
# config.json differs in any of them is refused rather than silently restored.
CHECKPOINT_DEFINING_KEYS = ("method", "model", "optimizer.name", "data.image_size")
SAVE_TIMEOUT_SECONDS = 600  # Orbax's background commit of one checkpoint (its default: 1200).
SET_ASIDE_DIR = "unrestorable_checkpoints"


class ConfigMismatchError(ValueError):
    """The workdir holds checkpoints of another config."""


class CheckpointError(ValueError):
    """No checkpoint in the workdir restores, or a checkpoint cannot be written."""


class NoCheckpointError(CheckpointError):
    """The workdir holds no checkpoint (or is not a training workdir)."""


def one_line(error: BaseException, limit: int = 300) -> str:
    """An exception's message on one line (Orbax and TensorStore write several), shortened in
    the middle: the start says what failed, the end why (TensorStore's OS error)."""
    text = " ".join(str(error).split()) or type(error).__name__
    half = limit // 2
    return text if len(text) <= limit else f"{text[:half]} ... {text[-half:]}"


# -- config.json ---------------------------------------------------------------------------------


def config_path(workdir: str) -> str:
    return os.path.join(workdir, "config.json")


def checkpoint_dir(workdir: str) -> str:
    return os.path.join(os.path.abspath(workdir), "checkpoints")


def has_checkpoints(workdir: str) -> bool:
    """Whether DIR/checkpoints holds a step directory (restorable or not)."""
    directory = checkpoint_dir(workdir)
    return os.path.isdir(directory) and any(name.isdigit() for name in os.listdir(directory))


def load_config(workdir: str) -> ml_collections.ConfigDict:
    """The config that trained `workdir`: DIR/config.json over the schema's defaults for its
    method (`config_defaults.base`), so that a workdir written before a field was added loads
    with that field at the default that kept old runs as they were."""
    saved = _read_config_json(workdir)
    merged = _overlay(config_defaults.base(saved.method).to_dict(), saved.to_dict())
    return ml_collections.ConfigDict(merged)


def _overlay(defaults: dict, saved: dict) -> dict:
    """`defaults` with every entry of `saved` put over it, nested dicts entry by entry."""
    merged = dict(defaults)
    for key, value in saved.items():
        if isinstance(value, dict) and isinstance(defaults.get(key), dict):
            value = _overlay(defaults[key], value)
        merged[key] = value
    return merged


def _read_config_json(workdir: str) -> ml_collections.ConfigDict:
    """DIR/config.json as written, or a clear error if it is missing or cannot be read."""
    path = config_path(workdir)
    if not os.path.exists(path):
        if has_checkpoints(workdir):
            raise ConfigMismatchError(
                f"workdir {workdir} holds checkpoints but no config.json: nothing tells which "
                f"config they come from; put back {path}, or use a new --workdir")
        raise NoCheckpointError(f"{path} does not exist: {workdir} is not a training workdir")
    try:
        with open(path, encoding="utf-8") as f:
            return ml_collections.ConfigDict(json.load(f))
    except (OSError, ValueError) as error:
        raise ConfigMismatchError(f"cannot read {path} ({error}); put back a whole "
                                  "config.json, or use a new --workdir") from error


def check_config(workdir: str, config: ml_collections.ConfigDict, write: bool
                 ) -> ml_collections.ConfigDict | None:
    """Refuses a workdir whose checkpoints came from another config (in any of
    CHECKPOINT_DEFINING_KEYS) or whose config.json is gone; with `write`, then writes
    `config` as DIR/config.json (process 0). Returns the saved config (None for a new
    workdir)."""
    saved = None
    if os.path.exists(config_path(workdir)) or has_checkpoints(workdir):
        saved = _read_config_json(workdir)
        for key in CHECKPOINT_DEFINING_KEYS:
            old, new = config_checks.lookup(saved, key), config_checks.lookup(config, key)
            if _differs(old, new):
                raise ConfigMismatchError(
                    f"workdir {workdir} holds checkpoints of another config: {key} was {old}, "
                    f"now {new}; use a new --workdir")
    if write and jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        with files.atomic_write(config_path(workdir)) as f:
            f.write(config.to_json(indent=2))
    return saved


def _differs(old, new) -> bool:
    """Whether a checkpoint-defining entry changed. Fields the saved config lacks were added to
    the code after the run began (at defaults that keep old runs as they were), so an upgrade
    still resumes its runs; a field that went away counts as a change."""
    if isinstance(old, dict) and isinstance(new, dict):
        return any(key not in new or _differs(value, new[key]) for key, value in old.items())
    return old != new


# -- Orbax ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def _without_read_only_notices() -> Iterator[None]:
    """Orbax warns that a read-only manager is read-only; a reading command asked for one."""
    def not_a_notice(record: python_logging.LogRecord) -> bool:
        message = record.getMessage()
        return "read only" not in message and "read_only=True" not in message

    absl_logger = python_logging.getLogger("absl")
    absl_logger.addFilter(not_a_notice)
    try:
        yield
    finally:
        absl_logger.removeFilter(not_a_notice)


def make_manager(workdir: str, keep: int = 3, read_only: bool = False
                 ) -> ocp.CheckpointManager:
    """The manager of DIR/checkpoints: for training, keeping the newest `keep` and saving in
    the background; `read_only` for commands that must not write the workdir."""
    if read_only:
        with _without_read_only_notices():
            return ocp.CheckpointManager(
                checkpoint_dir(workdir), item_handlers=ocp.StandardCheckpointHandler(),
                options=ocp.CheckpointManagerOptions(read_only=True, create=False))
    # Directories are made in the calling thread, so a full or read-only disk raises at the
    # save that meets it instead of leaving Orbax's writer threads waiting for a directory
    # signal that never comes; the background commit gets a bounded time.
    return ocp.CheckpointManager(
        checkpoint_dir(workdir),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=True,
            async_options=ocp.options.AsyncOptions(
                timeout_secs=SAVE_TIMEOUT_SECONDS, create_directories_asynchronously=False)))


def _restore_first(workdir: str, steps: list[int], target) -> tuple[int, Any, dict[int, str]]:
    """The first of `steps` that restores into `target` (a tree of ShapeDtypeStructs, or None
    for the saved shapes as host arrays): (step, state, {newer step: why it failed})."""
    failures: dict[int, str] = {}
    for step in steps:
        # A manager per try: a failed restore can leave the manager's idea of the layout behind
        # (a step directory without metadata makes it expect several items).
        manager = make_manager(workdir, read_only=True)
        try:
            if target is None:
                metadata = manager.item_metadata(step)
                item = jax.tree.map(lambda leaf: np.empty(leaf.shape, leaf.dtype),
                                    getattr(metadata, "tree", metadata))
            else:
                item = target
            return step, manager.restore(step, args=ocp.args.StandardRestore(item)), failures
        except Exception as error:  # Orbax and TensorStore raise many kinds.
            failures[step] = one_line(error, limit=200)
        finally:
            manager.close()
    raise CheckpointError(
        f"no checkpoint in {checkpoint_dir(workdir)} restores with this config ("
        + "; ".join(f"step {s}: {message}" for s, message in failures.items())
        + "); checkpoints of another model? use a new --workdir")


def all_steps(workdir: str) -> list[int]:
    """The steps saved in DIR/checkpoints, newest first (none if it does not exist)."""
    if not os.path.isdir(checkpoint_dir(workdir)):
        return []
    manager = make_manager(workdir, read_only=True)
    try:
        return sorted(manager.all_steps(), reverse=True)
    finally:
        manager.close()


def restore_newest(workdir: str, target) -> tuple[int, Any] | None:
    """(step, state) of the newest checkpoint that restores into `target` (ShapeDtypeStructs
    with the shardings to place it with), or None for a workdir without checkpoints.

    Newer checkpoints that do not restore are moved to DIR/unrestorable_checkpoints/ (process
    0) with a warning, so that the steps they held are trained and saved again; if none
    restores (another model's checkpoints), nothing is moved and CheckpointError says why.
    """
    steps = all_steps(workdir)
    if not steps:
        return None
    step, state, failures = _restore_first(workdir, steps, target)
    if failures:
        _set_aside(workdir, failures)
    return step, state


def _set_aside_path(workdir: str, step: int) -> str:
    """A new path under DIR/unrestorable_checkpoints/ for the checkpoint of `step`."""
    base = os.path.join(workdir, SET_ASIDE_DIR, str(step))
    path, n = base, 1
    while os.path.exists(path):
        path, n = f"{base}.{n}", n + 1
    return path


def _set_aside(workdir: str, failures: dict[int, str]) -> None:
    """Moves the checkpoints of these steps out of DIR/checkpoints (process 0), warning."""
    for step, message in failures.items():
        target = _set_aside_path(workdir, step)
        absl_logging.warning("checkpoint %d does not restore (%s); moved it to %s and "
                             "resuming from the previous one", step, message, target)
        if jax.process_index() == 0:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.move(os.path.join(checkpoint_dir(workdir), str(step)), target)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices("contrastive_jax: unrestorable checkpoints moved")


# -- reading a workdir ---------------------------------------------------------------------------


class Restored(NamedTuple):
    """A workdir's newest checkpoint: its config, step, inference model and host variables."""

    config: ml_collections.ConfigDict
    step: int
    model: nn.Module
    variables: dict  # {"params", "batch_stats"} as numpy arrays.


def probe_classes(params: dict) -> int:
    """The number of classes of the online linear probe among `params` (0 without one): what
    the training model was built with, read from the checkpoint instead of the data."""
    for name, subtree in params.items():
        if name == "probe":
            [bias] = [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(subtree)
                      if path[-1].key == "bias"]
            return int(bias.shape[-1])
        if isinstance(subtree, dict) and (found := probe_classes(subtree)):
            return found
    return 0


def restore(workdir: str) -> Restored:
    """The newest checkpoint of `workdir` that restores, with the config it was trained with
    (DIR/config.json), its variables {"params", "batch_stats"} as host arrays, and the model
    built for inference (BatchNorm with running statistics, no cross-device axis).

    Reads no data and writes nothing: a newer checkpoint that does not restore is skipped with
    a warning (training sets it aside), not moved.
    """
    config = load_config(workdir)
    steps = all_steps(workdir)
    if not steps:
        raise NoCheckpointError(f"no checkpoint in {checkpoint_dir(workdir)}")
    step, state, failures = _restore_first(workdir, steps, None)
    for failed, message in failures.items():
        absl_logging.warning("checkpoint %d does not restore (%s); reading step %d", failed,
                             message, step)
    variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
    model = methods.get(config.method).build_model(
        config, probe_classes(variables["params"]), None)
    return Restored(config, int(step), model, variables)
