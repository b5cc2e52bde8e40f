"""kNN against a brute-force numpy reference, with the bank split over 8 devices."""

import numpy as np
import pytest

from contrastive_jax import parallel
from contrastive_jax.evaluation import functions as evaluate
from contrastive_jax.parallel.layout import Layout


def _numpy_knn(bank, bank_labels, queries, num_classes, k, temperature):
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    similarity = unit(queries) @ unit(bank).T
    nearest = np.argsort(-similarity, axis=1)[:, :k]
    weights = np.exp(np.take_along_axis(similarity, nearest, axis=1) / temperature)
    votes = np.zeros((len(queries), num_classes))
    for row in range(len(queries)):
        np.add.at(votes[row], bank_labels[nearest[row]], weights[row])
    return votes.argmax(axis=1)


@pytest.mark.parametrize("kind", ["pmap", "shard_map"])
@pytest.mark.parametrize("temperature", [0.07, 0.5])
def test_sharded_knn_equals_numpy(kind, temperature):
    # 61 bank rows over 8 devices: 8 rows per device, 3 of them padding; k = 20 > 8, so the
    # k best come from several devices' candidates.
    rng = np.random.default_rng(0)
    bank, queries = rng.normal(size=(61, 6)), rng.normal(size=(50, 6))
    labels = rng.integers(0, 4, 61)
    expected = _numpy_knn(bank, labels, queries, 4, 20, temperature)
    got = evaluate.knn_predict(bank, labels, queries, 4, k=20, temperature=temperature,
                               chunk_size=16, layout=Layout(kind, parallel.make_mesh()))
    np.testing.assert_array_equal(got, expected)
    assert evaluate.knn_top1(bank, labels, queries, expected, 4, k=20, temperature=temperature,
                             layout=Layout(kind, parallel.make_mesh())) == 1.0


def test_knn_with_k_larger_than_the_bank_uses_every_row():
    rng = np.random.default_rng(1)
    bank, queries = rng.normal(size=(5, 3)), rng.normal(size=(7, 3))
    labels = np.array([0, 1, 1, 2, 2])
    expected = _numpy_knn(bank, labels, queries, 3, 5, 0.1)
    np.testing.assert_array_equal(evaluate.knn_predict(bank, labels, queries, 3, k=200),
                                  expected)
