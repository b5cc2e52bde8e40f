"""Contrastive methods: each a module of plain functions (model, loss, features) that declares
what it has in one `Method` at its end, `METHOD = Method(name=..., build_model=..., ...)`.

The train step, the loop, the evaluators and the compile report call a method's fields without
probing for them: the optional hooks default to doing nothing (see `Method`). What several
methods share (the ResNet and its heads, the two-view batch, the online probe, the EMA momentum,
per-view BatchNorm) is in `common.py`, and `image_text.py` is what CLIP and SigLIP share; a
method module imports those, never another method.

Adding a method: its module (its functions and its `METHOD`), its config (`configs/NAME.py`,
and in `config_defaults.base` the fields only it reads), and its line in `METHODS`.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable

import ml_collections

# config.method -> the module that declares its METHOD (imported when first asked for).
METHODS = {
    "simclr": "contrastive_jax.methods.simclr",
    "moco": "contrastive_jax.methods.moco",
    "supcon": "contrastive_jax.methods.supcon",
    "clip": "contrastive_jax.methods.clip",
    "siglip": "contrastive_jax.methods.siglip",
    "byol": "contrastive_jax.methods.byol",
    "simsiam": "contrastive_jax.methods.simsiam",
    "moco_v3": "contrastive_jax.methods.moco_v3",
    "nnclr": "contrastive_jax.methods.nnclr",
    "swav": "contrastive_jax.methods.swav",
}


def accept_every_config(config: ml_collections.ConfigDict) -> None:
    """`Method.validate` of a method with no settings of its own to refuse."""
    del config


def no_extra(config: ml_collections.ConfigDict, variables: dict, rng: Any) -> dict:
    """`Method.init_extra` of a method with no state beside its parameters."""
    del config, variables, rng
    return {}


def unchanged(config: ml_collections.ConfigDict, state: Any) -> Any:
    """`Method.after_update` of a method with nothing to do after the optimizer step."""
    del config
    return state


@dataclasses.dataclass(frozen=True)
class Method:
    """What the train step, the loop, the evaluators and the commands know of a method: the
    required functions, then the optional hooks, whose defaults mean "nothing"."""

    name: str
    """`config.method`, the method's key in `METHODS`."""

    build_model: Callable[..., Any]
    """`(config, num_classes, axis_name) -> nn.Module`: `axis_name` is the axis that BatchNorm
    averages over (None for the single-device evaluation copy, and under fsdp, whose model runs
    on global arrays). train_step.build_program, the Trainer's evaluation copies and
    checkpoints.restore build with it."""

    init_variables: Callable[..., dict]
    """`(model, config, rng) -> variables` ("params", and "batch_stats" where the model has
    BatchNorm): train_step.create_train_state."""

    batch_shapes: Callable[..., dict]
    """`(config, n) -> {name: jax.ShapeDtypeStruct}`: a per-host batch of n examples as the
    input pipeline yields it; benchmarks and the compile report feed arrays of these shapes."""

    loss_fn: Callable[..., Any]
    """`(model, config, params, state, batch, rng, axis_name) -> (loss, (changes, metrics))`:
    `changes` are the TrainState fields the step replaces besides params and opt_state
    (`batch_stats`, `extra`); metrics are this device's, averaged by the step
    (train_step.make_train_step)."""

    encoder_features: Callable[..., Callable]
    """`(model) -> (variables, images) -> features`: the frozen representation that kNN and
    linear probes (evaluation/representation.py), linear_eval and export read."""

    validate: Callable[[ml_collections.ConfigDict], None] = accept_every_config
    """`(config) -> None`: refuses settings the method cannot run, naming the field
    (train_step.validate, before anything is built). Default: accepts every config."""

    init_extra: Callable[..., dict] = no_extra
    """`(config, variables, rng) -> dict`: state beside the parameters, kept in
    `TrainState.extra` and checkpointed with them (MoCo's key encoder and queue);
    train_step.create_train_state. Default: none, {}."""

    after_update: Callable[..., Any] = unchanged
    """`(config, state) -> state`: runs after the optimizer step and sees the updated parameters
    (momentum encoders, CLIP's clamped scale, SwAV's unit prototypes); train_step.make_train_step
    and fsdp.make_step. Default: the state as it is."""

    frozen_params: Callable[..., Any] | None = None
    """`(config, params) -> tree of bool`: parameters the optimizer leaves as they are (MoCo v3's
    patch projection); train_step.make_optimizer. None: nothing is frozen."""

    loss_parts: Callable[..., Any] | None = None
    """`(model, config, axis_name) -> grad_cache.LossParts`: the loss split at the embeddings,
    which gradient caching (`grad_cache_chunks` > 1) and `parallel = "fsdp"` run, refusing a
    method without it (grad_cache.validate, fsdp.validate; the compile report suggests them only
    with it). None: the loss is not split (its method keeps state the split cannot pass)."""

    image_text: bool = False
    """Batches are image-text pairs ({"image", "text"}), not two views: zero-shot and retrieval
    are the default evaluators (evaluation/evaluators.py) and device augmentation is refused
    (train_step.validate). True needs `embed_images` and `embed_texts`."""

    embed_images: Callable[..., Callable] | None = None
    """`(model) -> (variables, images) -> embeddings`: the image tower and its projection, for
    zero-shot classification and retrieval (evaluation/image_text.py). None: no such tower."""

    embed_texts: Callable[..., Callable] | None = None
    """`(model) -> (variables, tokens) -> embeddings`: the text tower and its projection, as
    `embed_images`. None: no text tower."""

    def __post_init__(self) -> None:
        if self.image_text and (self.embed_images is None or self.embed_texts is None):
            raise ValueError(f"image-text method {self.name!r} needs embed_images and "
                             "embed_texts")


def get(name: str) -> Method:
    """The method named by `config.method`."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {tuple(METHODS)}")
    return importlib.import_module(METHODS[name]).METHOD
