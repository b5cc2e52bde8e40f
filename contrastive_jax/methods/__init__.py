"""Contrastive methods: each a module of plain functions (model, loss, feature extractor).

A method module provides `build_model(config, num_classes, axis_name)`, `input_shape(config)`,
`loss_fn(model, config, params, batch_stats, batch, rng, axis_name) -> (loss, (batch_stats,
metrics))` and `encoder_features(model) -> (variables, images) -> features`.
"""

from __future__ import annotations

import importlib
from types import ModuleType

METHODS = ("simclr",)


def get(name: str) -> ModuleType:
    """The method module named by `config.method`."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {METHODS}")
    return importlib.import_module(f"contrastive_jax.methods.{name}")
