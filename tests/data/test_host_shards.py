"""host_shards: which examples each host reads, checked against the identities its docstrings
promise (shards partition the split, an epoch is a permutation of the shard, a stream resumed at
position s is the stream from 0 without its first s items)."""

import itertools

import numpy as np
import pytest
import tensorflow as tf

from contrastive_jax.data import host_shards


def _stream(shard, seed, start, count):
    """The first `count` (epoch, split index) pairs of the stream from `start`, as numpy."""
    items = host_shards.position_stream(shard, seed, start).take(count)
    return np.array([(int(e), int(i)) for e, i in items.as_numpy_iterator()]).reshape(-1, 2)


@pytest.mark.parametrize("num_examples,process_count", [(10, 1), (10, 3), (7, 7), (100, 8),
                                                        (3, 4)])
@pytest.mark.parametrize("shuffle_files", [True, False])
def test_train_shards_cover_the_split_once_in_even_parts(num_examples, process_count,
                                                         shuffle_files):
    shards = [host_shards.train_shard(num_examples, p, process_count, shuffle_files)
              for p in range(process_count)]
    together = np.concatenate(shards)
    assert together.dtype == np.int64
    np.testing.assert_array_equal(np.sort(together), np.arange(num_examples))  # Disjoint, all.
    sizes = [len(shard) for shard in shards]
    assert set(sizes) <= {num_examples // process_count, -(-num_examples // process_count)}
    if not shuffle_files:  # Contiguous parts of 0..N-1, in process order.
        np.testing.assert_array_equal(together, np.arange(num_examples))


def test_hosts_agree_on_the_shards_and_each_sees_every_class():
    """1,000 files stored by class (100 per class, in order): the fixed permutation is the same
    on every call (host) and gives each of 4 hosts all 10 classes; unshuffled it would not."""
    labels = np.arange(1000) // 100
    for p in range(4):
        shard = host_shards.train_shard(1000, p, 4)
        np.testing.assert_array_equal(shard, host_shards.train_shard(1000, p, 4))
        assert set(labels[shard].tolist()) == set(range(10))
        assert len(set(labels[host_shards.train_shard(1000, p, 4, False)].tolist())) < 10


@pytest.mark.parametrize("num_examples", [1, 2, 17, 256])
def test_epoch_order_is_a_permutation_fixed_by_seed_and_epoch(num_examples):
    order = host_shards.epoch_order(num_examples, 5, 3)
    assert order.dtype == tf.int64
    np.testing.assert_array_equal(np.sort(order.numpy()), np.arange(num_examples))
    np.testing.assert_array_equal(order, host_shards.epoch_order(num_examples, 5, 3))
    np.testing.assert_array_equal(order, host_shards.epoch_order(num_examples, 5,
                                                                 tf.constant(3, tf.int64)))


def test_epoch_order_changes_with_the_epoch_and_the_seed():
    orders = [host_shards.epoch_order(50, seed, epoch).numpy()
              for seed, epoch in [(0, 0), (0, 1), (1, 0), (1, 1)]]
    for a, b in itertools.combinations(orders, 2):
        assert not np.array_equal(a, b)


def test_position_stream_visits_the_shard_once_per_epoch_in_epoch_order():
    shard = host_shards.train_shard(23, 1, 3)  # 8 split indices.
    stream = _stream(shard, seed=4, start=0, count=3 * len(shard))
    for epoch in range(3):
        block = stream[epoch * len(shard):(epoch + 1) * len(shard)]
        np.testing.assert_array_equal(block[:, 0], epoch)
        want = shard[host_shards.epoch_order(len(shard), 4, epoch).numpy()]
        np.testing.assert_array_equal(block[:, 1], want)
        np.testing.assert_array_equal(np.sort(block[:, 1]), np.sort(shard))
    assert not np.array_equal(stream[:len(shard), 1], stream[len(shard):2 * len(shard), 1])


@pytest.mark.parametrize("start", [1, 7, 8, 13, 30])
def test_a_resumed_stream_equals_the_uninterrupted_one(start):
    shard = host_shards.train_shard(23, 1, 3)
    whole = _stream(shard, seed=4, start=0, count=start + 12)
    np.testing.assert_array_equal(_stream(shard, seed=4, start=start, count=12), whole[start:])


def test_positions_to_indices_names_what_the_stream_reads_there():
    shard = host_shards.train_shard(23, 2, 3)
    stream = _stream(shard, seed=9, start=0, count=40)
    for positions in (range(0, 40), range(5, 6), range(17, 33)):
        got = host_shards.positions_to_indices(shard, 9, positions)
        assert got == stream[positions.start:positions.stop, 1].tolist()
