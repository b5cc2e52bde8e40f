"""Evaluation of frozen representations: weighted kNN and a linear probe.

Features and embeddings come from every device and every host (`wrap_extractor` + `extract`);
the classifiers and retrieval metrics then run on the gathered arrays, identically on every
process, so all processes report the same numbers. For image-text models: zero-shot
classification with prompt ensembles (CLIP) and image <-> text retrieval recall@k. The training
run calls them through `contrastive_jax.evaluation.evaluators`, which holds the data and the compiled
extractors.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import PartitionSpec as P

from contrastive_jax import parallel
from contrastive_jax.parallel.layout import Layout


def wrap_extractor(per_example_fn: Callable[[Any, Mapping[str, jax.Array]], dict],
                   layout: Layout) -> Callable:
    """Wraps `per_example_fn(variables, batch) -> {name: [n, ...]}` to run on every device's
    slice of an evaluation batch (variables replicated); the batch's `mask` rides along.

    Wrap once per run and reuse it: each wrapping compiles anew."""

    def per_device(variables, batch):
        return {**per_example_fn(variables, batch), "mask": batch["mask"]}

    return layout.wrap(per_device, in_specs=(P(), P(parallel.AXIS)), out_specs=P(parallel.AXIS))


def extract(run: Callable, variables, batches: Iterable[Mapping[str, np.ndarray]],
            layout: Layout) -> dict[str, np.ndarray]:
    """Runs a `wrap_extractor` function over every batch of an evaluation iterator; returns its
    outputs for the whole split, gathered from every device and host, padding removed."""
    outputs: dict[str, list[np.ndarray]] = {}
    for batch in batches:
        out = layout.per_device_values(run(variables, layout.to_devices(batch)))
        mask = out.pop("mask")
        keep = mask.reshape(-1)
        for name, value in out.items():
            outputs.setdefault(name, []).append(
                value.reshape(-1, *value.shape[mask.ndim:])[keep])
    return {name: np.concatenate(values) for name, values in outputs.items()}


def feature_extractor(encode: Callable, layout: Layout) -> Callable:
    """`wrap_extractor` of `encode(variables, images) -> [n, F]` features with their labels."""
    return wrap_extractor(
        lambda variables, batch: {"features": encode(variables, batch["image"]).astype(
            jnp.float32), "label": batch["label"]}, layout)


def _knn_votes_per_device(queries, bank, bank_labels, bank_valid, temperature, *, k: int,
                          num_classes: int):
    """Per device: class votes [q, C] of the k nearest neighbours over the whole bank.

    Each device ranks the queries against its rows of the bank, keeps its own k best, and the
    k best of all devices' candidates vote: the bank is never held by one device.
    """
    similarity = jnp.where(bank_valid[None, :], queries @ bank.T, -jnp.inf)
    local_similarity, local_index = jax.lax.top_k(similarity, min(k, bank.shape[0]))
    candidates = jax.lax.all_gather(local_similarity, parallel.AXIS, axis=1, tiled=True)
    candidate_labels = jax.lax.all_gather(bank_labels[local_index], parallel.AXIS, axis=1,
                                          tiled=True)
    top_similarity, top = jax.lax.top_k(candidates, k)
    labels = jnp.take_along_axis(candidate_labels, top, axis=1)
    weights = jnp.exp(top_similarity / temperature)
    return jnp.einsum("qk,qkc->qc", weights, jax.nn.one_hot(labels, num_classes))


@functools.lru_cache(maxsize=None)
def _knn_votes(layout: Layout, k: int, num_classes: int) -> Callable:
    """The wrapped `_knn_votes_per_device`, built once per (layout, k, classes) so that every
    evaluation of a run reuses one compiled function."""
    fn = functools.partial(_knn_votes_per_device, k=k, num_classes=num_classes)
    return layout.wrap(fn, in_specs=(P(), P(parallel.AXIS), P(parallel.AXIS), P(parallel.AXIS),
                                     P()), out_specs=P())


def knn_predict(train_features: np.ndarray, train_labels: np.ndarray,
                test_features: np.ndarray, num_classes: int, *, k: int = 200,
                temperature: float = 0.1, chunk_size: int = 1024,
                layout: Layout | None = None) -> np.ndarray:
    """Weighted kNN (Wu et al. 2018): the k most cosine-similar training features vote for
    their class with weight exp(similarity / temperature) (0.1 as the PyTorch SSL libraries'
    tables; InstDisc used 0.07). Returns each test feature's predicted class.

    The bank of training features is split over the devices of `layout` (default: shard_map
    over all of them), so an
    ImageNet bank (1.28M x 2048 floats, 10 GB) needs 1/D of it per device.
    """
    layout = layout if layout is not None else Layout("shard_map", parallel.make_mesh())
    normalize = lambda x: x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    bank, _ = layout.shard_rows(
        {"features": normalize(train_features).astype(np.float32),
         "labels": np.asarray(train_labels, np.int32),
         "valid": np.ones(len(train_labels), bool)})
    votes_fn = _knn_votes(layout, min(k, len(train_labels)), num_classes)
    queries = normalize(test_features).astype(np.float32)
    temperature = layout.replicate(np.float32(temperature))
    predictions = []
    for start in range(0, len(queries), chunk_size):
        chunk = layout.replicate(queries[start:start + chunk_size])
        votes = layout.unreplicate(votes_fn(chunk, bank["features"], bank["labels"],
                                            bank["valid"], temperature))
        predictions.append(np.argmax(votes, axis=1))
    return np.concatenate(predictions)


def knn_top1(train_features: np.ndarray, train_labels: np.ndarray, test_features: np.ndarray,
             test_labels: np.ndarray, num_classes: int, **kwargs) -> float:
    """Top-1 accuracy of `knn_predict` (same keywords)."""
    predictions = knn_predict(train_features, train_labels, test_features, num_classes,
                              **kwargs)
    return float(np.mean(predictions == np.asarray(test_labels)))


@functools.partial(jax.jit, static_argnames=("num_classes", "steps", "batch_size"))
def _fit_linear(x_train, y_train, key, *, num_classes: int, steps: int, batch_size: int,
                learning_rate, weight_decay):
    """AdamW with cosine decay on the cross-entropy of a linear layer; compiled once per shape."""
    params = {"w": jnp.zeros((x_train.shape[1], num_classes)), "b": jnp.zeros((num_classes,))}
    tx = optax.adamw(optax.cosine_decay_schedule(learning_rate, steps), weight_decay=weight_decay)

    def loss_fn(params, x, y):
        logits = x @ params["w"] + params["b"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    def train_step(carry, key):
        params, opt_state = carry
        index = jax.random.choice(key, x_train.shape[0], (batch_size,), replace=False)
        grads = jax.grad(loss_fn)(params, x_train[index], y_train[index])
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), None

    (params, _), _ = jax.lax.scan(train_step, (params, tx.init(params)),
                                  jax.random.split(key, steps))
    return params


def linear_probe_top1(train_features: np.ndarray, train_labels: np.ndarray,
                      test_features: np.ndarray, test_labels: np.ndarray, num_classes: int, *,
                      steps: int = 1000, batch_size: int = 1024, learning_rate: float = 0.01,
                      weight_decay: float = 1e-4, seed: int = 0) -> float:
    """Accuracy of a linear classifier trained (AdamW, cosine decay, cross-entropy) on frozen
    features computed once and standardised with the training set's mean and std: a fast probe
    for tracking a run, not the papers' protocol (that is `linear_eval`, `linear_eval_top1`)."""
    mean = train_features.mean(0)
    std = train_features.std(0) + 1e-6
    x_train = jnp.asarray((train_features - mean) / std)
    x_test = (test_features - mean) / std
    params = _fit_linear(x_train, jnp.asarray(train_labels), jax.random.PRNGKey(seed),
                         num_classes=num_classes, steps=steps,
                         batch_size=min(batch_size, len(x_train)),
                         learning_rate=learning_rate, weight_decay=weight_decay)
    predictions = np.argmax(x_test @ np.asarray(params["w"]) + np.asarray(params["b"]), axis=1)
    return float(np.mean(predictions == test_labels))


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def zero_shot_classifier(class_prompt_embeddings: np.ndarray) -> np.ndarray:
    """[classes, templates, d] text embeddings of every class's prompts -> [classes, d] unit
    class vectors: each prompt's embedding normalised, averaged over the templates, normalised
    again (CLIP's prompt ensembling)."""
    return _unit(_unit(class_prompt_embeddings).mean(axis=1))


def zero_shot_top1(image_embeddings: np.ndarray, labels: np.ndarray,
                   classifier: np.ndarray) -> float:
    """Fraction of images whose most cosine-similar class vector is their label's."""
    scores = _unit(image_embeddings) @ classifier.T
    return float(np.mean(np.argmax(scores, axis=1) == labels))


@jax.jit
def _ranks_of_positives(queries, query_ids, candidates, candidate_ids):
    """For each query, how many candidates score strictly higher than its best positive (a
    candidate with the query's id), all scores from the same product."""
    scores = queries @ candidates.T
    positive = query_ids[:, None] == candidate_ids[None, :]
    best = jnp.max(jnp.where(positive, scores, -jnp.inf), axis=1)
    return jnp.sum(scores > best[:, None], axis=1)


def retrieval_recall(image_embeddings: np.ndarray, text_embeddings: np.ndarray,
                     text_to_image: np.ndarray, ks: tuple[int, ...] = (1, 5, 10),
                     chunk_size: int = 1024) -> dict[str, float]:
    """Image -> text and text -> image recall@k by cosine similarity.

    Text j describes image `text_to_image[j]`; an image may have several texts. Image -> text
    recall@k is the fraction of images (with a text) that have one of their texts among the k
    most similar texts; text -> image recall@k the fraction of texts whose image is among the k
    most similar images. Ties count in the query's favour.
    """
    images, texts = _unit(image_embeddings), _unit(text_embeddings)
    text_to_image = np.asarray(text_to_image)
    image_ids = np.arange(len(images))

    def ranks(queries, query_ids, candidates, candidate_ids):
        return np.concatenate([
            np.asarray(_ranks_of_positives(queries[i:i + chunk_size],
                                           query_ids[i:i + chunk_size], candidates,
                                           candidate_ids))
            for i in range(0, len(queries), chunk_size)])

    has_text = np.isin(image_ids, text_to_image)
    image_ranks = ranks(images[has_text], image_ids[has_text], texts, text_to_image)
    text_ranks = ranks(texts, text_to_image, images, image_ids)
    results = {}
    for k in ks:
        results[f"i2t_recall@{k}"] = float(np.mean(image_ranks < k))
        results[f"t2i_recall@{k}"] = float(np.mean(text_ranks < k))
    return results
