"""The evaluations a training run makes, as small classes chosen by `config.eval.evaluators`.

As in big_vision's evaluators: each is a class built once per run, `__init__(config, method,
model, info, layout)` (the single-device evaluation `model`, `info` the dataset's
`data_sources.DatasetInfo`, `layout` the run's `parallel.layout.Layout`), which wraps its extraction functions
once so that they compile once, and `run(variables) -> {metric: value}` evaluates the given
parameters and BatchNorm statistics (replicated in the run's layout). The pure functions they
wrap (kNN, linear probe, zero-shot, retrieval) are in `contrastive_jax.evaluation.functions`.

An empty `config.eval.evaluators` runs the method's default: kNN and the linear probe for image
methods, zero-shot classification and retrieval for image-text ones (`Method.image_text`),
each only where the data allows it (labels, captions). A listed evaluator that cannot run
(unknown, or its data is missing) is refused before training.
"""

from __future__ import annotations

from typing import Any, Mapping, Protocol

import ml_collections

from contrastive_jax import methods
from contrastive_jax.evaluation import image_text, representation
from contrastive_jax.parallel.layout import Layout


class Evaluator(Protocol):
    """What the training loop calls; each class also has `unavailable(config, method, info)`,
    the reason it cannot run with this config (None when it can)."""

    def run(self, variables: Any) -> dict[str, float]:
        ...


REGISTRY = {
    "knn": representation.KnnEvaluator,
    "linear": representation.LinearProbeEvaluator,
    "zeroshot": image_text.ZeroShotEvaluator,
    "retrieval": image_text.RetrievalEvaluator,
}
IMAGE_DEFAULT = ("knn", "linear")
IMAGE_TEXT_DEFAULT = ("zeroshot", "retrieval")


def names(config: ml_collections.ConfigDict, method: methods.Method, info) -> tuple[str, ...]:
    """The evaluators a run makes: `eval.evaluators` if given (each must be able to run), else
    the method's default that the data allows. Raises ValueError naming the field."""
    listed = tuple(config.eval.evaluators)
    unknown = [name for name in listed if name not in REGISTRY]
    if unknown:
        raise ValueError(f"config.eval.evaluators: unknown evaluator {unknown[0]!r}; choose "
                         f"from {tuple(REGISTRY)}")
    for name in listed:
        reason = REGISTRY[name].unavailable(config, method, info)
        if reason:
            raise ValueError(f"config.eval.evaluators: {name!r} cannot run: {reason}")
    if listed:
        return listed
    default = IMAGE_TEXT_DEFAULT if method.image_text else IMAGE_DEFAULT
    return tuple(name for name in default
                 if REGISTRY[name].unavailable(config, method, info) is None)


def build(chosen: tuple[str, ...], config: ml_collections.ConfigDict, method: methods.Method,
          model, info, layout: Layout) -> dict[str, Evaluator]:
    """The `chosen` evaluators (see `names`), each built once for the run."""
    return {name: REGISTRY[name](config, method, model, info, layout) for name in chosen}


def run_all(evaluators: Mapping[str, Evaluator], variables: Any) -> dict[str, float]:
    """Every evaluator's metrics for `variables`; the features of a split are extracted once
    for all of them (kNN and the linear probe read the same)."""
    results: dict[str, float] = {}
    with representation.one_round():
        for evaluator in evaluators.values():
            results.update(evaluator.run(variables))
    return results
