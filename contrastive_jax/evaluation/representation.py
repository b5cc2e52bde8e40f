"""kNN and linear-probe evaluators of the frozen encoder's features (`encoder_features`)."""

from __future__ import annotations

import contextlib
import contextvars
from typing import Any, Iterator

import ml_collections
import numpy as np

from contrastive_jax import methods
from contrastive_jax.evaluation import functions as evaluate
from contrastive_jax.parallel.layout import Layout

Features = tuple[np.ndarray, np.ndarray]  # [n, F] features, [n] labels

# The features extracted in the current evaluation round, by split; None outside a round.
_ROUND: contextvars.ContextVar[dict[str, Features] | None] = contextvars.ContextVar(
    "features_of_this_round", default=None)


@contextlib.contextmanager
def one_round() -> Iterator[None]:
    """Within it, each split's features are extracted once and shared by the evaluators of one
    set of variables; they are dropped at its end (an ImageNet bank is 10 GB of host memory)."""
    token = _ROUND.set({})
    try:
        yield
    finally:
        _ROUND.reset(token)


def unavailable(config: ml_collections.ConfigDict, method: methods.Method, info) -> str | None:
    """Why the encoder's features cannot be evaluated by class (None when they can)."""
    del method  # Every method has encoder_features.
    if info.num_classes <= 0:
        return f"{config.data.source!r} has no labels"
    return None


class SplitFeatures:
    """The encoder's features and labels of the training and evaluation splits, gathered from
    every device and host; the extractor is wrapped (and so compiled) once."""

    def __init__(self, config: ml_collections.ConfigDict, method: methods.Method, model,
                 layout: Layout):
        self._extractor = evaluate.feature_extractor(method.encoder_features(model), layout)
        self._data = config.data
        self._batch_size = config.eval.batch_size
        self._layout = layout
        self.splits = (config.data.train_split, config.data.eval_split)

    def __call__(self, variables: Any, split: str) -> Features:
        cache = _ROUND.get()
        if cache is not None and split in cache:
            return cache[split]
        from contrastive_jax.data import numpy_data
        if numpy_data.tensorflow_available():
            from contrastive_jax.data import input_pipeline
            batches = input_pipeline.eval_iterator(self._data, split,
                                                   global_batch_size=self._batch_size)
        else:
            batches = numpy_data.eval_batches(self._data, split,
                                              global_batch_size=self._batch_size)
        out = evaluate.extract(self._extractor, variables, batches, self._layout)
        if not np.all(np.isfinite(out["features"])):
            raise FloatingPointError(
                f"the encoder's features of split {split!r} are not all finite "
                f"({int(np.sum(~np.isfinite(out['features'])))} of {out['features'].size}); "
                "the kNN and linear evaluations would be meaningless")
        features = out["features"], out["label"]
        if cache is not None:
            cache[split] = features
        return features

    def train_and_test(self, variables: Any) -> tuple[Features, Features]:
        train_split, test_split = self.splits
        return self(variables, train_split), self(variables, test_split)


class KnnEvaluator:
    """`knn_top1`: weighted kNN of the test features against the training features
    (`evaluate.knn_top1`, the bank split over the mesh; `eval.knn_k`, `eval.knn_temperature`)."""

    unavailable = staticmethod(unavailable)

    def __init__(self, config: ml_collections.ConfigDict, method: methods.Method, model, info,
                 layout: Layout):
        self._features = SplitFeatures(config, method, model, layout)
        self._num_classes = info.num_classes
        self._k, self._temperature = config.eval.knn_k, config.eval.knn_temperature
        self._layout = layout

    def run(self, variables: Any) -> dict[str, float]:
        (train_x, train_y), (test_x, test_y) = self._features.train_and_test(variables)
        return {"knn_top1": evaluate.knn_top1(
            train_x, train_y, test_x, test_y, self._num_classes, k=self._k,
            temperature=self._temperature, layout=self._layout)}


class LinearProbeEvaluator:
    """`linear_top1`: a linear classifier fit on the frozen training features
    (`evaluate.linear_probe_top1`; `eval.linear_steps`, `_batch_size`, `_learning_rate`,
    `_weight_decay`)."""

    unavailable = staticmethod(unavailable)

    def __init__(self, config: ml_collections.ConfigDict, method: methods.Method, model, info,
                 layout: Layout):
        self._features = SplitFeatures(config, method, model, layout)
        self._num_classes = info.num_classes
        eval_config = config.eval
        self._options = dict(steps=eval_config.linear_steps,
                             batch_size=eval_config.linear_batch_size,
                             learning_rate=eval_config.linear_learning_rate,
                             weight_decay=eval_config.linear_weight_decay)

    def run(self, variables: Any) -> dict[str, float]:
        (train_x, train_y), (test_x, test_y) = self._features.train_and_test(variables)
        return {"linear_top1": evaluate.linear_probe_top1(
            train_x, train_y, test_x, test_y, self._num_classes, **self._options)}
