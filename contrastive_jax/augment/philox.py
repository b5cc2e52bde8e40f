"""What TensorFlow's stateless random ops draw, for a whole tensor of seeds at once.

tf.random.stateless_* take one seed, so drawing a batch's per-example numbers one example at a
time costs a few ops per example (tf.map_fn or tf.vectorized_map over them is slower still). On
the CPU those ops run Philox-4x32-10 (Salmon et al. 2011), a counter-based generator made of
32-bit multiplies and xors; written here with element-wise uint64 ops, it gives, for every seed of
a tensor, bit for bit the numbers the stateless ops give for that seed (tests hold them equal).
"""

from __future__ import annotations

import tensorflow as tf

_MASK32 = 0xFFFFFFFF
_PHILOX_MULTIPLIERS = (0xD2511F53, 0xCD9E8D57)
_PHILOX_KEY_STEP = (0x9E3779B9, 0xBB67AE85)
_PHILOX_ROUNDS = 10
_SEED_SCRAMBLE_KEY = (0x3EC8F720, 0x02461E29)  # TF's key for turning a seed into (key, counter).


def _u64(value) -> tf.Tensor:
    return tf.constant(value, tf.uint64)


def _philox_rounds(c0, c1, c2, c3, k0, k1) -> tuple[tf.Tensor, ...]:
    """Philox-4x32-10 of the counter (c0, c1, c2, c3) under the key (k0, k1).

    Each argument is a uint64 tensor of 32-bit words (the four counter words of one shape, the
    key words of that shape or scalars); returns the four output words.
    """
    mask = _u64(_MASK32)
    for round_index in range(_PHILOX_ROUNDS):
        if round_index:
            k0 = (k0 + _u64(_PHILOX_KEY_STEP[0])) & mask
            k1 = (k1 + _u64(_PHILOX_KEY_STEP[1])) & mask
        product0 = c0 * _u64(_PHILOX_MULTIPLIERS[0])
        product1 = c2 * _u64(_PHILOX_MULTIPLIERS[1])
        high0 = tf.bitwise.right_shift(product0, _u64(32))
        high1 = tf.bitwise.right_shift(product1, _u64(32))
        c0, c1, c2, c3 = high1 ^ c1 ^ k0, product1 & mask, high0 ^ c3 ^ k1, product0 & mask
    return c0, c1, c2, c3


# The rounds are traced once and called, not inlined: a pipeline holds a dozen Philox
# evaluations, and inlined they make its graph slow to build and optimise.
_WORDS = tf.TensorSpec(None, tf.uint64)
_philox = tf.function(_philox_rounds, input_signature=[_WORDS] * 6,
                      experimental_attributes={"_noinline": True})
_scramble_seed = tf.function(
    lambda c0, c1, c2, c3: _philox_rounds(c0, c1, c2, c3, _u64(_SEED_SCRAMBLE_KEY[0]),
                                          _u64(_SEED_SCRAMBLE_KEY[1])),
    input_signature=[_WORDS] * 4, experimental_attributes={"_noinline": True})


def philox_words(seeds: tf.Tensor, num_blocks: int) -> tf.Tensor:
    """The first 4 * num_blocks 32-bit words (as uint64 [..., 4 * num_blocks]) that a stateless op
    draws from each int64 seed [..., 2]."""
    halves = tf.bitcast(tf.cast(seeds, tf.int64), tf.uint64)
    mask, shift = _u64(_MASK32), _u64(32)
    seed0, seed1 = halves[..., 0], halves[..., 1]
    key0, key1, counter2, counter3 = _scramble_seed(
        seed0 & mask, tf.bitwise.right_shift(seed0, shift),
        seed1 & mask, tf.bitwise.right_shift(seed1, shift))
    # Block b is Philox of the counter (b, 0, counter2, counter3) under (key0, key1).
    shape = tf.concat([tf.shape(seed0), [num_blocks]], 0)
    spread = lambda word: tf.broadcast_to(word[..., None], shape)  # noqa: E731
    block = tf.broadcast_to(tf.cast(tf.range(num_blocks), tf.uint64), shape)
    words = _philox(block, tf.zeros_like(block), spread(counter2), spread(counter3),
                    spread(key0), spread(key1))
    words = tf.stack(words, axis=-1)
    return tf.reshape(words, tf.concat([tf.shape(words)[:-2], [4 * num_blocks]], 0))


def _words_to_int64(low: tf.Tensor, high: tf.Tensor) -> tf.Tensor:
    return tf.bitcast(low | tf.bitwise.left_shift(high, _u64(32)), tf.int64)


def words_to_uniform(words: tf.Tensor) -> tf.Tensor:
    """float32 in [0, 1), one per 32-bit word, as TF's stateless uniform makes them."""
    mantissa = (words & _u64(0x7FFFFF)) | _u64(0x3F800000)  # A float in [1, 2).
    return tf.bitcast(tf.cast(mantissa, tf.uint32), tf.float32) - 1.0


def words_to_seeds(words: tf.Tensor, num: int) -> tf.Tensor:
    """int64 [..., num, 2] from the first 4 * num words [..., 4 * num], as TF's stateless split
    makes seeds."""
    pairs = tf.reshape(words[..., :4 * num], tf.concat([tf.shape(words)[:-1], [num, 2, 2]], 0))
    return _words_to_int64(pairs[..., 0], pairs[..., 1])


def batched_uniform(seeds, size: int = 1) -> tf.Tensor:
    """float32 [..., size] in [0, 1): `tf.random.stateless_uniform([size], seed)` for every seed
    [..., 2] of `seeds`."""
    return words_to_uniform(philox_words(seeds, -(-size // 4))[..., :size])


def scale_uniform(unit: tf.Tensor, minval: float, maxval: float) -> tf.Tensor:
    """Maps [0, 1) draws to [minval, maxval) with the float32 ops that
    tf.random.stateless_uniform uses."""
    low, high = tf.constant(minval, tf.float32), tf.constant(maxval, tf.float32)
    return unit * (high - low) + low


def batched_split(seeds, num: int = 2) -> tf.Tensor:
    """int64 [..., num, 2]: `tf.random.experimental.stateless_split(seed, num)` for every seed
    [..., 2] of `seeds`."""
    return words_to_seeds(philox_words(seeds, num), num)


def batched_fold_in(seeds, data) -> tf.Tensor:
    """int64 [..., 2]: `tf.random.experimental.stateless_fold_in(seed, data)` for every seed
    [..., 2] of `seeds` and int64 `data` [...]."""
    words = philox_words(seeds, 1)
    return tf.stack([_words_to_int64(words[..., 0], words[..., 1]), tf.cast(data, tf.int64)], -1)
