"""Evaluation of frozen representations: weighted kNN and a linear probe.

Features come from every device and every host (`extract_features`); the classifiers then run
on the gathered arrays, identically on every process, so all processes report the same numbers.
"""

from __future__ import annotations

import functools
from typing import Callable, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import PartitionSpec as P

from contrastive_jax import parallel


def extract_features(encode: Callable, variables, batches: Iterable[Mapping[str, np.ndarray]],
                     kind: parallel.Kind, mesh) -> tuple[np.ndarray, np.ndarray]:
    """Runs `encode(variables, images) -> [n, F]` per device over every batch of an evaluation
    iterator; returns the global (features, labels) with padding examples removed."""

    def per_device(variables, batch):
        return encode(variables, batch["image"]), batch["label"], batch["mask"]

    run = parallel.wrap(per_device, kind, mesh, in_specs=(P(), P(parallel.AXIS)),
                        out_specs=(P(parallel.AXIS),) * 3)
    features, labels = [], []
    for batch in batches:
        out = parallel.per_device_values(run(variables, parallel.host_batch_to_devices(
            batch, kind, mesh)), kind)
        feats, labs, mask = out[0].reshape(-1, out[0].shape[-1]), out[1].reshape(-1), \
            out[2].reshape(-1)
        features.append(feats[mask])
        labels.append(labs[mask])
    return np.concatenate(features).astype(np.float32), np.concatenate(labels)


@functools.partial(jax.jit, static_argnames="k")
def _knn_votes(queries, bank, bank_one_hot, k: int, temperature):
    similarity = queries @ bank.T
    top_similarity, top_index = jax.lax.top_k(similarity, k)
    weights = jnp.exp(top_similarity / temperature)
    return jnp.einsum("qk,qkc->qc", weights, bank_one_hot[top_index])


def knn_top1(train_features: np.ndarray, train_labels: np.ndarray, test_features: np.ndarray,
             test_labels: np.ndarray, num_classes: int, *, k: int = 200,
             temperature: float = 0.1, chunk_size: int = 1024) -> float:
    """Weighted kNN accuracy (Wu et al. 2018): the k most cosine-similar training features vote
    for their class with weight exp(similarity / temperature)."""
    normalize = lambda x: x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    bank = jnp.asarray(normalize(train_features))
    one_hot = jax.nn.one_hot(train_labels, num_classes)
    queries = normalize(test_features)
    k = min(k, len(bank))
    correct = 0
    for start in range(0, len(queries), chunk_size):
        votes = _knn_votes(jnp.asarray(queries[start:start + chunk_size]), bank, one_hot, k,
                           temperature)
        correct += int(np.sum(np.argmax(votes, 1) == test_labels[start:start + chunk_size]))
    return correct / len(queries)


def linear_probe_top1(train_features: np.ndarray, train_labels: np.ndarray,
                      test_features: np.ndarray, test_labels: np.ndarray, num_classes: int, *,
                      steps: int = 1000, batch_size: int = 1024, learning_rate: float = 0.01,
                      weight_decay: float = 1e-4, seed: int = 0) -> float:
    """Accuracy of a linear classifier trained (AdamW, cosine decay, cross-entropy) on frozen
    features standardised with the training set's mean and std, as a BatchNorm without affine
    parameters would (SimCLR's linear evaluation)."""
    mean = train_features.mean(0)
    std = train_features.std(0) + 1e-6
    x_train = jnp.asarray((train_features - mean) / std)
    x_test = jnp.asarray((test_features - mean) / std)
    y_train = jnp.asarray(train_labels)
    dim = x_train.shape[1]
    params = {"w": jnp.zeros((dim, num_classes)), "b": jnp.zeros((num_classes,))}
    tx = optax.adamw(optax.cosine_decay_schedule(learning_rate, steps), weight_decay=weight_decay)
    batch_size = min(batch_size, len(x_train))

    def loss_fn(params, x, y):
        logits = x @ params["w"] + params["b"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    def train_step(carry, key):
        params, opt_state = carry
        index = jax.random.choice(key, len(x_train), (batch_size,), replace=False)
        grads = jax.grad(loss_fn)(params, x_train[index], y_train[index])
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), None

    @jax.jit
    def train(params, key):
        (params, _), _ = jax.lax.scan(train_step, (params, tx.init(params)),
                                      jax.random.split(key, steps))
        return params

    params = train(params, jax.random.PRNGKey(seed))
    predictions = np.argmax(np.asarray(x_test @ params["w"] + params["b"]), axis=1)
    return float(np.mean(predictions == test_labels))


def evaluate_representation(train: tuple[np.ndarray, np.ndarray],
                            test: tuple[np.ndarray, np.ndarray], num_classes: int,
                            eval_config) -> dict[str, float]:
    """kNN and linear-probe top-1 of features extracted from the train and test splits."""
    (train_x, train_y), (test_x, test_y) = train, test
    return {
        "knn_top1": knn_top1(train_x, train_y, test_x, test_y, num_classes,
                             k=eval_config.knn_k, temperature=eval_config.knn_temperature),
        "linear_top1": linear_probe_top1(
            train_x, train_y, test_x, test_y, num_classes, steps=eval_config.linear_steps,
            batch_size=eval_config.linear_batch_size,
            learning_rate=eval_config.linear_learning_rate,
            weight_decay=eval_config.linear_weight_decay),
    }
