"""Which examples each host reads, in which order: shards of a split, epoch orders, host batches.

Hosts agree on a fixed permutation of a split's indices and take even parts of it
(`train_shard`); in epoch e a host visits its part in an order fixed by (seed, e)
(`epoch_order`), so the example at any absolute position can be found again without reading
the ones before it, which is what makes resuming exact. Evaluation gives each host a contiguous
share padded to whole batches (`numpy_data.eval_layout`, with the hosts' batch sizes: the
arithmetic the path without TensorFlow shares).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

ORDER_SALT = 0x0D3E  # Keeps the example-order streams apart from the augmentation stream.
_SHARD_SEED = 0  # Fixed permutation of a split's files before they are shared out to hosts.


def epoch_order(num_examples: int, seed: int, epoch) -> tf.Tensor:
    """The order (a permutation of range(num_examples), int64) of one host's shard in `epoch`."""
    base = tf.constant([seed, ORDER_SALT], tf.int64)
    order_seed = tf.random.experimental.stateless_fold_in(base, tf.cast(epoch, tf.int64))
    return tf.random.experimental.stateless_shuffle(tf.range(num_examples, dtype=tf.int64),
                                                    order_seed)


def train_shard(num_examples: int, process_index: int, process_count: int,
                shuffle_files: bool = True) -> np.ndarray:
    """The split indices this host trains on: an even split of a fixed permutation (or of 0..N-1).

    The permutation does not depend on the run seed, so hosts agree on it, and it mixes classes
    so that no host sees only some of them when files are stored by class.
    """
    indices = np.arange(num_examples, dtype=np.int64)
    if shuffle_files:
        indices = np.random.default_rng(_SHARD_SEED).permutation(indices)
    return np.array_split(indices, process_count)[process_index]


def position_stream(shard: np.ndarray, seed: int, start: int) -> tf.data.Dataset:
    """(epoch, split index) of every example this host reads from position `start` on, forever."""
    num = len(shard)
    shard_t = tf.constant(shard, tf.int64)
    start_epoch, skip = divmod(start, num)

    def epoch_items(epoch, first):
        order = epoch_order(num, seed, epoch)[first:]
        return tf.data.Dataset.from_tensor_slices(
            (tf.fill(tf.shape(order), epoch), tf.gather(shard_t, order)))

    first = epoch_items(tf.constant(start_epoch, tf.int64), skip)
    rest = tf.data.Dataset.range(start_epoch + 1, 2**62).flat_map(lambda e: epoch_items(e, 0))
    return first.concatenate(rest)


def positions_to_indices(shard: np.ndarray, seed: int, positions: range) -> list[int]:
    """The split indices at absolute host positions (eagerly; used to name a bad file)."""
    out, cache = [], {}
    for p in positions:
        epoch, k = divmod(p, len(shard))
        if epoch not in cache:
            cache[epoch] = epoch_order(len(shard), seed, epoch).numpy()
        out.append(int(shard[cache[epoch][k]]))
    return out
