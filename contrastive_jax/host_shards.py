"""Which examples each host reads, in which order: shards of a split, epoch orders, host batches.

Hosts agree on a fixed permutation of a split's indices and take even parts of it
(`train_shard`); in epoch e a host visits its part in an order fixed by (seed, e)
(`epoch_order`), so the example at any absolute position can be found again without reading
the ones before it, which is what makes resuming exact. Evaluation gives each host a contiguous
share padded to whole batches (`eval_layout`).
"""

from __future__ import annotations

import math

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



def resolve_process(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    """(process_index, process_count), asking jax for the ones given as None."""
    if process_index is None or process_count is None:
        import jax  # Only to ask which host this is.

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    return int(process_index), int(process_count)


def host_batch_size(global_batch_size: int, process_count: int) -> int:
    """global_batch_size // process_count; ValueError if it does not divide or is empty."""
    if global_batch_size <= 0 or global_batch_size % process_count:
        raise ValueError(f"global batch size {global_batch_size} does not divide evenly over "
                         f"{process_count} processes")
    return global_batch_size // process_count


def eval_layout(num_examples: int, process_index: int, process_count: int, n: int):
    """(first index, count, padded count) of this host's contiguous share of an eval split."""
    bounds = [num_examples * p // process_count for p in range(process_count + 1)]
    first, count = bounds[process_index], bounds[process_index + 1] - bounds[process_index]
    most = math.ceil(num_examples / process_count)
    return first, count, max(1, math.ceil(most / n)) * n


