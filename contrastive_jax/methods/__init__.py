"""Contrastive methods: each a module of plain functions (model, loss, features), not a class.

A method module provides

- `build_model(config, num_classes, axis_name) -> nn.Module`: `axis_name` is the axis that
  BatchNorm averages over (None for the single-device evaluation copy);
- `init_variables(model, config, rng) -> variables` and `batch_shapes(config, n)`: the shapes and
  dtypes of a per-host batch of n examples, as the input pipeline yields it (benchmarks feed
  random arrays of these shapes);
- `loss_fn(model, config, params, state, batch, rng, axis_name) -> (loss, (changes, metrics))`:
  `changes` are the TrainState fields the step replaces besides params and opt_state
  (`batch_stats`, `extra`); metrics are this device's, averaged by the step;
- `encoder_features(model) -> (variables, images) -> features`: the frozen representation that
  kNN and linear probes evaluate;

and optionally `validate(config)` (refuses settings the method cannot run), `init_extra(config,
variables, rng)` (state beside the parameters, such as MoCo's key encoder and queue),
`after_update(config, state) -> state` (runs after the optimizer step), `frozen_params(config,
params) -> tree of bool` (parameters the optimizer leaves as they are: MoCo v3's patch
projection) and `loss_parts(model, config, axis_name) -> grad_cache.LossParts` (the loss split
at the embeddings, which gradient caching and `parallel = "fsdp"` need; SimCLR, SupCon, CLIP,
SigLIP and SimSiam have it).
Image-text methods set `IMAGE_TEXT = True` and add `embed_images(model)` /
`embed_texts(model)` for zero-shot classification and retrieval.
"""

from __future__ import annotations

import importlib
from types import ModuleType

METHODS = ("simclr", "moco", "supcon", "clip", "siglip", "byol", "simsiam", "moco_v3",
           "nnclr", "swav")


def get(name: str) -> ModuleType:
    """The method module named by `config.method`."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {METHODS}")
    return importlib.import_module(f"contrastive_jax.methods.{name}")
