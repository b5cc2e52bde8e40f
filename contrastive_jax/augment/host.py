"""SimCLR / BYOL image augmentations as stateless TensorFlow ops.

Every random choice is drawn with `tf.random.stateless_*` from an explicit seed (an int tensor of
shape [2]), so an example's views depend only on its seed. The input pipeline derives that seed
from (run seed, epoch, example index) with `example_seed`; a resumed run therefore sees exactly the
views an uninterrupted run would have seen.

Defaults follow Chen et al. 2020 (SimCLR, appendix A): random resized crop (area 0.08-1, aspect
3/4-4/3), horizontal flip p=0.5, colour jitter of strength s (brightness, contrast, saturation
0.8s, hue 0.2s, random order) with p=0.8, grayscale p=0.2, Gaussian blur p=0.5 with sigma in
[0.1, 2] and a kernel 10% of the image side. Solarisation is BYOL's (Grill et al. 2020).

`simclr_view` / `two_views` make one example's views with per-example ops, the reference. The
input pipeline makes the same views in batches, because per-example ops on small images cost more
in op overhead than in arithmetic: `draw_views` draws, for a whole tensor of seeds, the numbers
the per-example ops draw (bit for bit); `crop_views` crops, resizes and flips one image;
`color_two_views` applies the colour changes to a batch, each image with its own factors, order
and coins. The two paths agree to float rounding (tests hold them equal).

`python -m contrastive_jax.show_views` draws views of an image into a PNG.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import tensorflow as tf

try:  # Keep TensorFlow off the GPU: JAX owns accelerator memory.
    tf.config.set_visible_devices([], "GPU")
except (RuntimeError, ValueError):  # Devices already initialised; nothing to do.
    pass

_SEED_SALT = 0x5EED  # Second word of the run seed, so seed k and seed pair (k, 0) differ.
_SMALL_CROPS_SALT = 0x5C0  # Folded into an example's seed for its small crops (multi-crop).


# ------------------------------------------------------------------------------------------------
# Seeds.


def example_seed(seed, epoch, index) -> tf.Tensor:
    """The [2] int64 augmentation seed of example `index` in `epoch` under run seed `seed`."""
    base = tf.stack([tf.cast(seed, tf.int64), tf.constant(_SEED_SALT, tf.int64)])
    s = tf.random.experimental.stateless_fold_in(base, tf.cast(epoch, tf.int64))
    return tf.random.experimental.stateless_fold_in(s, tf.cast(index, tf.int64))


def small_crop_seeds(seed, epoch, index, num: int) -> tf.Tensor:
    """The [num, 2] seeds of an example's `num` small crops (SwAV's multi-crop), each for one
    `simclr_view`: drawn apart from `example_seed`'s tree, so the two views stay those of a run
    without small crops."""
    salted = tf.random.experimental.stateless_fold_in(
        example_seed(seed, epoch, index), tf.constant(_SMALL_CROPS_SALT, tf.int64))
    return _split(salted, num)


def _split(seed, num: int) -> tf.Tensor:
    return tf.random.experimental.stateless_split(seed, num=num)


def _uniform(seed, minval=0.0, maxval=1.0, shape=()) -> tf.Tensor:
    return tf.random.stateless_uniform(shape, seed, minval=minval, maxval=maxval, dtype=tf.float32)


def random_apply(fn, prob: float, seed, image: tf.Tensor) -> tf.Tensor:
    """Applies `fn(image)` with probability `prob` (decided by `seed`)."""
    if prob <= 0.0:
        return image
    if prob >= 1.0:
        return fn(image)
    return tf.cond(_uniform(seed) < prob, lambda: fn(image), lambda: image)


def to_float(image: tf.Tensor) -> tf.Tensor:
    """uint8 [0, 255] or float [0, 1] -> float32 [0, 1]."""
    return tf.image.convert_image_dtype(image, tf.float32)


# ------------------------------------------------------------------------------------------------
# Geometry.


def _crop_draws(seed, area_range, aspect_range, attempts: int):
    """(area fraction [attempts], aspect ratio w/h [attempts], offset [2]) of one crop window."""
    s = _split(seed, 4)
    area = _uniform(s[0], area_range[0], area_range[1], [attempts])
    log_ratio = _uniform(s[1], math.log(aspect_range[0]), math.log(aspect_range[1]), [attempts])
    return area, tf.exp(log_ratio), _uniform(s[2], shape=[2])


def crop_box(area_fraction, aspect_ratio, offset, height, width,
             aspect_range=(3 / 4, 4 / 3)) -> tf.Tensor:
    """The crop window [..., 4] = (y, x, h, w) (int32) that `sample_crop_box` picks from its draws.

    Leading dimensions of the draws (e.g. one per view) are kept; `height` and `width` are the
    image's (scalars).
    """
    corner, size = _crop_window(area_fraction, aspect_ratio, offset,
                                tf.stack([height, width]), aspect_range)
    return tf.concat([corner, size], axis=-1)


# Compiled with XLA: some forty scalar-sized ops become one call, much of the per-example cost of
# a crop. Only IEEE-exact ops, so the windows are those plain TF computes (tests check both).
@functools.partial(tf.function, jit_compile=True)
def _crop_window(area_fraction, aspect_ratio, offset, image_size, aspect_range):
    """(corner, size) [..., 2] int32 of the crop window, each as (y, x) / (height, width)."""
    size = tf.cast(image_size, tf.float32)  # Sizes are (height, width) pairs on the last axis.
    area = size[0] * size[1] * area_fraction
    candidates = tf.round(tf.sqrt(tf.stack([area / aspect_ratio, area * aspect_ratio], axis=-1)))
    fits = tf.reduce_all((candidates <= size) & (candidates >= 1), axis=-1)
    first = tf.one_hot(tf.argmax(tf.cast(fits, tf.int32), axis=-1), area_fraction.shape[-1])
    chosen = tf.reduce_sum(candidates * first[..., None], axis=-2)  # Exact: one term is not 0.
    # Fallback: the whole image, cut to the nearest allowed aspect ratio.
    in_ratio = size[1] / size[0]
    fallback = tf.stack([
        tf.where(in_ratio < aspect_range[0], tf.round(size[1] / aspect_range[0]), size[0]),
        tf.where(in_ratio > aspect_range[1], tf.round(size[0] * aspect_range[1]), size[1])])
    any_fits = tf.reduce_any(fits, axis=-1, keepdims=True)
    crop = tf.where(any_fits, chosen, fallback)
    room = size - crop
    corner = tf.where(any_fits, tf.minimum(tf.floor(offset * (room + 1)), room),
                      tf.floor(room / 2))
    return tf.cast(corner, tf.int32), tf.cast(crop, tf.int32)


def sample_crop_box(seed, height, width, area_range=(0.08, 1.0), aspect_range=(3 / 4, 4 / 3),
                    attempts: int = 10) -> tf.Tensor:
    """Samples a crop window [y, x, h, w] (int32) as torchvision's RandomResizedCrop does.

    Area fraction is uniform in `area_range`, log aspect ratio (w/h) uniform in `aspect_range`; the
    first of `attempts` candidates that fits is used, else a centre crop with the aspect clipped.
    """
    draws = _crop_draws(seed, area_range, aspect_range, attempts)
    return crop_box(*draws, height, width, aspect_range)


def _resize(image: tf.Tensor, image_size: int) -> tf.Tensor:
    out = tf.image.resize(image, [image_size, image_size], method="bicubic")
    return tf.clip_by_value(out, 0.0, 1.0)


def random_resized_crop(image: tf.Tensor, seed, image_size: int, area_range=(0.08, 1.0),
                        aspect_range=(3 / 4, 4 / 3)) -> tf.Tensor:
    """Crops a random window (see `sample_crop_box`) and resizes it to image_size (bicubic)."""
    shape = tf.shape(image)
    box = sample_crop_box(seed, shape[0], shape[1], area_range, aspect_range)
    crop = tf.slice(image, [box[0], box[1], 0], [box[2], box[3], -1])
    return _resize(crop, image_size)


def random_flip(image: tf.Tensor, seed) -> tf.Tensor:
    """Horizontal flip with probability 0.5."""
    return tf.image.stateless_random_flip_left_right(image, seed)


def center_crop(image: tf.Tensor, image_size: int, crop_fraction: float = 1.0) -> tf.Tensor:
    """Evaluation view: the central square (crop_fraction of the short side), resized.

    Deterministic; returns float32 [image_size, image_size, 3] in [0, 1].
    """
    image = to_float(image)
    shape = tf.shape(image)
    h, w = shape[0], shape[1]
    side = tf.cast(tf.round(crop_fraction * tf.cast(tf.minimum(h, w), tf.float32)), tf.int32)
    side = tf.maximum(side, 1)
    crop = tf.slice(image, [(h - side) // 2, (w - side) // 2, 0], [side, side, -1])
    out = _resize(crop, image_size)
    return tf.ensure_shape(out, [image_size, image_size, 3])


# ------------------------------------------------------------------------------------------------
# Colour.


def to_grayscale(image: tf.Tensor) -> tf.Tensor:
    """Luma-weighted grayscale, kept as 3 equal channels."""
    return tf.tile(tf.image.rgb_to_grayscale(image), [1, 1, 3])


def _jitter_ranges(strength: float, brightness: float = 0.8, contrast: float = 0.8,
                   saturation: float = 0.8, hue: float = 0.2) -> list[tuple[float, float]]:
    """(min, max) of the brightness, contrast and saturation factors and of the hue delta."""
    b, c, sat, h = (strength * v for v in (brightness, contrast, saturation, hue))
    return [(max(0.0, 1 - b), 1 + b), (max(0.0, 1 - c), 1 + c), (max(0.0, 1 - sat), 1 + sat),
            (-h, h)]


def color_jitter(image: tf.Tensor, seed, strength: float = 1.0, *, brightness: float = 0.8,
                 contrast: float = 0.8, saturation: float = 0.8, hue: float = 0.2) -> tf.Tensor:
    """SimCLR colour jitter: the four adjustments (each scaled by `strength`) in a random order.

    Brightness, contrast and saturation multiply by a factor uniform in [max(0, 1-a), 1+a]
    (torchvision's and SimCLR v2's form); hue shifts by a delta uniform in [-h, h].
    """
    ranges = _jitter_ranges(strength, brightness, contrast, saturation, hue)
    s = _split(seed, 5)
    b_factor, c_factor, s_factor, h_delta = (_uniform(s[k], *ranges[k]) for k in range(4))
    order = tf.argsort(_uniform(s[4], shape=[4]))

    def apply(op_index, x):
        branches = [
            lambda: x * b_factor,
            lambda: tf.image.adjust_contrast(x, c_factor),
            lambda: tf.image.adjust_saturation(x, s_factor),
            lambda: tf.image.adjust_hue(x, h_delta),
        ]
        return tf.clip_by_value(tf.switch_case(op_index, branches), 0.0, 1.0)

    for i in range(4):
        image = apply(order[i], image)
    return image


def gaussian_blur(image: tf.Tensor, sigma, kernel_size: int) -> tf.Tensor:
    """Separable Gaussian blur with reflect padding; kernel_size is made odd."""
    radius = max(1, kernel_size // 2)
    x = tf.range(-radius, radius + 1, dtype=tf.float32)
    kernel = tf.exp(-tf.square(x) / (2.0 * tf.square(tf.cast(sigma, tf.float32))))
    kernel /= tf.reduce_sum(kernel)
    channels = 3
    k_h = tf.tile(tf.reshape(kernel, [-1, 1, 1, 1]), [1, 1, channels, 1])
    k_w = tf.tile(tf.reshape(kernel, [1, -1, 1, 1]), [1, 1, channels, 1])
    padded = tf.pad(image[None], [[0, 0], [radius, radius], [radius, radius], [0, 0]], "REFLECT")
    out = tf.nn.depthwise_conv2d(padded, k_h, [1, 1, 1, 1], "VALID")
    out = tf.nn.depthwise_conv2d(out, k_w, [1, 1, 1, 1], "VALID")
    return out[0]


def random_blur(image: tf.Tensor, seed, image_size: int, sigma_range=(0.1, 2.0)) -> tf.Tensor:
    """Gaussian blur with sigma uniform in sigma_range and a kernel ~10% of the image side."""
    sigma = _uniform(seed, sigma_range[0], sigma_range[1])
    return gaussian_blur(image, sigma, kernel_size=max(3, image_size // 10))


def solarize(image: tf.Tensor, threshold: float = 0.5) -> tf.Tensor:
    """Inverts pixels at or above `threshold` (images in [0, 1])."""
    return tf.where(image < threshold, image, 1.0 - image)


# ------------------------------------------------------------------------------------------------
# Views.


def simclr_view(image: tf.Tensor, seed, *, image_size: int, color_strength: float = 1.0,
                blur: bool = True, crop_area_range=(0.08, 1.0), solarize_prob: float = 0.0,
                blur_prob: float = 0.5, jitter_prob: float = 0.8,
                grayscale_prob: float = 0.2) -> tf.Tensor:
    """One augmented view: float32 [image_size, image_size, 3] in [0, 1].

    Order: crop, flip, colour jitter (p=jitter_prob), grayscale, blur (if `blur`), solarise.
    """
    s = _split(seed, 7)
    image = to_float(image)
    image = random_resized_crop(image, s[0], image_size, area_range=tuple(crop_area_range))
    image = random_flip(image, s[1])
    if color_strength > 0:
        jitter = lambda x: color_jitter(x, s[2], color_strength)  # noqa: E731
        image = random_apply(jitter, jitter_prob, s[3], image)
    image = random_apply(to_grayscale, grayscale_prob, s[4], image)
    if blur:
        image = random_apply(lambda x: random_blur(x, s[5], image_size), blur_prob, s[6], image)
    if solarize_prob > 0:
        image = random_apply(solarize, solarize_prob, _split(s[6], 2)[1], image)
    image = tf.clip_by_value(image, 0.0, 1.0)
    return tf.ensure_shape(image, [image_size, image_size, 3])


def _per_view(value, view: int):
    """A scalar applies to both views; a pair (v1, v2) gives each view its own (BYOL)."""
    if isinstance(value, (tuple, list)):
        return value[view]
    return value


def two_views(image: tf.Tensor, seed, *, blur_prob=0.5, solarize_prob=0.0,
              **view_kwargs) -> tuple[tf.Tensor, tf.Tensor]:
    """Two independent views of `image` from one seed (split into one seed per view).

    `blur_prob` and `solarize_prob` may be pairs for BYOL's asymmetric views, e.g.
    blur_prob=(1.0, 0.1), solarize_prob=(0.0, 0.2). Other keywords go to `simclr_view`.
    """
    seeds = _split(seed, 2)
    return tuple(
        simclr_view(image, seeds[v], blur_prob=_per_view(blur_prob, v),
                    solarize_prob=_per_view(solarize_prob, v), **view_kwargs)
        for v in range(2))


# ------------------------------------------------------------------------------------------------
# Batched draws: what the stateless ops above draw, for a whole tensor of seeds at once.
#
# tf.random.stateless_* take one seed, so drawing a batch's per-example scalars one example at a
# time costs a few ops per example (tf.map_fn or tf.vectorized_map over them is slower still). On
# the CPU those ops run Philox-4x32-10 (Salmon et al. 2011), a counter-based generator made of
# 32-bit multiplies and xors; written with element-wise uint64 ops, it gives, for every seed of a
# tensor, bit for bit the numbers the stateless ops give for that seed (tests hold them equal).

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


def _philox_words(seeds: tf.Tensor, num_blocks: int) -> tf.Tensor:
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


def _words_to_uniform(words: tf.Tensor) -> tf.Tensor:
    """float32 in [0, 1), one per 32-bit word, as TF's stateless uniform makes them."""
    mantissa = (words & _u64(0x7FFFFF)) | _u64(0x3F800000)  # A float in [1, 2).
    return tf.bitcast(tf.cast(mantissa, tf.uint32), tf.float32) - 1.0


def _words_to_seeds(words: tf.Tensor, num: int) -> tf.Tensor:
    """int64 [..., num, 2] from the first 4 * num words [..., 4 * num], as TF's stateless split
    makes seeds."""
    pairs = tf.reshape(words[..., :4 * num], tf.concat([tf.shape(words)[:-1], [num, 2, 2]], 0))
    return _words_to_int64(pairs[..., 0], pairs[..., 1])


def batched_uniform(seeds, size: int = 1) -> tf.Tensor:
    """float32 [..., size] in [0, 1): `tf.random.stateless_uniform([size], seed)` for every seed
    [..., 2] of `seeds`."""
    return _words_to_uniform(_philox_words(seeds, -(-size // 4))[..., :size])


def scale_uniform(unit: tf.Tensor, minval: float, maxval: float) -> tf.Tensor:
    """Maps [0, 1) draws to [minval, maxval) with the float32 ops that
    tf.random.stateless_uniform uses."""
    low, high = tf.constant(minval, tf.float32), tf.constant(maxval, tf.float32)
    return unit * (high - low) + low


def batched_split(seeds, num: int = 2) -> tf.Tensor:
    """int64 [..., num, 2]: `tf.random.experimental.stateless_split(seed, num)` for every seed
    [..., 2] of `seeds`."""
    return _words_to_seeds(_philox_words(seeds, num), num)


def batched_fold_in(seeds, data) -> tf.Tensor:
    """int64 [..., 2]: `tf.random.experimental.stateless_fold_in(seed, data)` for every seed
    [..., 2] of `seeds` and int64 `data` [...]."""
    words = _philox_words(seeds, 1)
    return tf.stack([_words_to_int64(words[..., 0], words[..., 1]), tf.cast(data, tf.int64)], -1)


def batched_example_seed(seed, epoch, index) -> tf.Tensor:
    """int64 [n, 2]: `example_seed(seed, epoch[i], index[i])` for every i of the [n] tensors."""
    index = tf.cast(index, tf.int64)
    base = tf.stack([tf.cast(seed, tf.int64), tf.constant(_SEED_SALT, tf.int64)])
    base = tf.broadcast_to(base, tf.concat([tf.shape(index), [2]], 0))
    return batched_fold_in(batched_fold_in(base, epoch), index)


def batched_view_seeds(seed, epoch, index) -> tf.Tensor:
    """int64 [n, 2, 2]: the seeds of the two views `two_views` draws for examples (epoch, index)."""
    return batched_split(batched_example_seed(seed, epoch, index), 2)


def batched_small_crop_seeds(seed, epoch, index, num: int) -> tf.Tensor:
    """int64 [n, num, 2]: `small_crop_seeds(seed, epoch[i], index[i], num)` for every i."""
    example_seeds = batched_example_seed(seed, epoch, index)
    salt = tf.fill(tf.shape(example_seeds)[:-1], tf.constant(_SMALL_CROPS_SALT, tf.int64))
    return batched_split(batched_fold_in(example_seeds, salt), num)


class CropDraws(NamedTuple):
    """A view's crop window and flip, as `simclr_view` draws them; leading dims are the seeds'."""

    area_fraction: tf.Tensor  # [..., attempts]
    aspect_ratio: tf.Tensor  # [..., attempts], width / height
    offset: tf.Tensor  # [..., 2], in [0, 1)
    flip: tf.Tensor  # bool [...]


class ColorDraws(NamedTuple):
    """A view's colour randomness, as `simclr_view` draws it; leading dims are the seeds'."""

    factors: tf.Tensor  # [..., 4]: brightness, contrast and saturation factors, hue delta
    order: tf.Tensor  # int32 [..., 4]: the indices of `factors` in the order they are applied
    jitter: tf.Tensor  # bool [...]
    grayscale: tf.Tensor  # bool [...]
    blur_sigma: tf.Tensor  # [...]
    blur: tf.Tensor  # bool [...]
    solarize: tf.Tensor  # bool [...]


class ViewDraws(NamedTuple):
    """Everything `simclr_view` draws for a view."""

    crop: CropDraws
    color: ColorDraws


def draw_views(view_seeds, *, crop_area_range=(0.08, 1.0), color_strength: float = 1.0,
               jitter_prob=0.8, grayscale_prob=0.2, blur_prob=0.5, solarize_prob=0.0,
               aspect_range=(3 / 4, 4 / 3), attempts: int = 10,
               sigma_range=(0.1, 2.0)) -> ViewDraws:
    """`simclr_view`'s draws for every view seed [..., 2] of `view_seeds`, bit for bit.

    A probability is a float, or a sequence that broadcasts against the seeds' leading dims (one
    per view: BYOL's pairs). The draws follow simclr_view's seed tree one level at a time, each
    level in two Philox evaluations over all its seeds, grouped by how many blocks they need (a
    draw of k numbers is the first k numbers of a longer draw from the same seed).
    """
    # Level 1: crop, flip coin, jitter, jitter coin, grayscale coin, blur sigma, blur coin.
    subseeds = batched_split(view_seeds, 7)
    # Level 2: the crop seed's split in 4, the jitter seed's split in 5 (5 blocks each); the
    # coins and the blur coin seed's split in 2, whose second seed draws the solarize coin.
    split_words = _philox_words(tf.gather(subseeds, [0, 2], axis=-2), 5)
    coin_words = _philox_words(tf.gather(subseeds, [1, 3, 4, 5, 6], axis=-2), 2)
    coins = _words_to_uniform(coin_words[..., 0])  # flip, jitter, grayscale, sigma, blur.
    crop_seeds = _words_to_seeds(split_words[..., 0, :], 4)
    # Level 3: area fractions and log aspect ratios (attempts each); offsets, jitter factors and
    # order, solarize coin (at most 4 each).
    long_draws = batched_uniform(crop_seeds[..., :2, :], attempts)
    unit = batched_uniform(tf.concat([crop_seeds[..., 2:3, :],
                                      _words_to_seeds(split_words[..., 1, :], 5),
                                      _words_to_seeds(coin_words[..., 4, :], 2)[..., 1:, :]],
                                     axis=-2), 4)
    crop = CropDraws(
        area_fraction=scale_uniform(long_draws[..., 0, :], *crop_area_range),
        aspect_ratio=tf.exp(scale_uniform(long_draws[..., 1, :], math.log(aspect_range[0]),
                                          math.log(aspect_range[1]))),
        offset=unit[..., 0, :2],
        flip=coins[..., 0] < 0.5)
    ranges = _jitter_ranges(color_strength)
    below = lambda draw, prob: draw < tf.constant(prob, tf.float32)  # noqa: E731
    color = ColorDraws(
        factors=tf.stack([scale_uniform(unit[..., 1 + k, 0], *ranges[k]) for k in range(4)], -1),
        order=tf.argsort(unit[..., 5, :], axis=-1),
        jitter=below(coins[..., 1], jitter_prob),
        grayscale=below(coins[..., 2], grayscale_prob),
        blur_sigma=scale_uniform(coins[..., 3], *sigma_range),
        blur=below(coins[..., 4], blur_prob),
        solarize=below(unit[..., 6, 0], solarize_prob))
    return ViewDraws(crop, color)


def draw_two_views(view_seeds, *, blur_prob=0.5, solarize_prob=0.0, **kwargs) -> ViewDraws:
    """`draw_views` for view seeds [n, 2, 2] (`batched_view_seeds`), with `two_views`' keywords
    (blur_prob and solarize_prob may be pairs)."""
    return draw_views(view_seeds, blur_prob=[_per_view(blur_prob, v) for v in range(2)],
                      solarize_prob=[_per_view(solarize_prob, v) for v in range(2)], **kwargs)


# ------------------------------------------------------------------------------------------------
# Batched views, in two stages: per example, the crop and flip (images differ in size); per batch,
# the colour changes, with every image's own parameters.


def crop_views(image: tf.Tensor, draws: CropDraws, image_size: int,
               aspect_range=(3 / 4, 4 / 3)) -> tuple[tf.Tensor, ...]:
    """The views of one image before any colour change: crop, bicubic resize, flip as drawn.

    `draws` holds one entry per view (see `draw_views`); each view is float32
    [image_size, image_size, 3] in [0, 1], what `simclr_view` has after its flip.
    """
    image = to_float(image)
    corners, sizes = _crop_window(draws.area_fraction, draws.aspect_ratio, draws.offset,
                                  tf.shape(image)[:2], aspect_range)
    begins = tf.pad(corners, [[0, 0], [0, 1]])  # Channels: from 0, all of them (-1).
    sizes = tf.pad(sizes, [[0, 0], [0, 1]], constant_values=-1)
    views = []
    for v in range(draws.flip.shape[0]):
        view = _resize(tf.slice(image, begins[v], sizes[v]), image_size)
        # Reversing the axes range(1, 1 + flip): [1] or none; cheaper than a tf.cond per view.
        view = tf.reverse(view, tf.range(1, 1 + tf.cast(draws.flip[v], tf.int32)))
        view.set_shape([image_size, image_size, 3])  # Static shape only: no op runs.
        views.append(view)
    return tuple(views)


def _per_image(values: tf.Tensor) -> tf.Tensor:
    """[n] -> [n, 1, 1, 1], to broadcast one value per image over [n, H, W, C]."""
    return values[:, None, None, None]


def adjust_brightness_batch(images: tf.Tensor, factors: tf.Tensor) -> tf.Tensor:
    """Multiplies image i by factors[i] (SimCLR v2's brightness)."""
    return images * _per_image(factors)


def adjust_contrast_batch(images: tf.Tensor, factors: tf.Tensor) -> tf.Tensor:
    """tf.image.adjust_contrast with one factor per image: (x - m) * f + m for each channel's mean
    m, computed as x * f + m * (1 - f), one channel plane at a time (faster on CPU)."""
    factors = factors[:, None, None]
    planes = []
    for plane in tf.unstack(images, axis=-1):
        mean = tf.reduce_mean(plane, axis=[1, 2], keepdims=True)
        planes.append(plane * factors + mean * (1.0 - factors))
    return _stack_channels(planes)


def adjust_saturation_batch(images: tf.Tensor, factors: tf.Tensor) -> tf.Tensor:
    """tf.image.adjust_saturation with one factor per image.

    HSV saturation s = chroma / value is multiplied by f and capped at 1 while hue and value stay,
    so each channel's distance below the value v is multiplied by k = min(f, 1 / s):
    x -> v - (v - x) * k = x * k + v * (1 - k).
    """
    r, g, b = tf.unstack(images, axis=-1)
    value = tf.maximum(tf.maximum(r, g), b)
    chroma = value - tf.minimum(tf.minimum(r, g), b)
    scale = tf.minimum(factors[:, None, None], tf.math.divide_no_nan(value, chroma))
    offset = value * (1.0 - scale)
    return _stack_channels([r * scale + offset, g * scale + offset, b * scale + offset])


def _hsv_planes(images: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Hue (in turns, in (-1/6, 1)), saturation and value, [n, H, W] each, as
    tf.image.rgb_to_hsv computes them before it wraps the hue (that op reduces over the channel
    axis, which is slow on CPU)."""
    r, g, b = tf.unstack(images, axis=-1)
    value = tf.maximum(tf.maximum(r, g), b)
    chroma = value - tf.minimum(tf.minimum(r, g), b)
    saturation = tf.math.divide_no_nan(chroma, value)
    norm = tf.math.divide_no_nan(tf.constant(1.0 / 6.0), chroma)
    hue = tf.where(tf.equal(r, value), norm * (g - b),
                   tf.where(tf.equal(g, value), norm * (b - r) + 2.0 / 6.0,
                            norm * (r - g) + 4.0 / 6.0))
    return hue, saturation, value


def adjust_hue_batch(images: tf.Tensor, deltas: tf.Tensor) -> tf.Tensor:
    """tf.image.adjust_hue with one delta (in turns) per image: HSV hue rotated by delta."""
    hue, saturation, value = _hsv_planes(images)
    hue = hue + deltas[:, None, None]
    hue = hue - tf.floor(hue)
    return tf.image.hsv_to_rgb(_stack_channels([hue, saturation, value]))


def _stack_channels(planes: list[tf.Tensor]) -> tf.Tensor:
    """[n, H, W] planes -> [n, H, W, C]; on CPU, stacking first and transposing is several times
    faster than tf.stack on the last axis."""
    return tf.transpose(tf.stack(planes), [1, 2, 3, 0])


_BATCH_ADJUSTMENTS = (adjust_brightness_batch, adjust_contrast_batch, adjust_saturation_batch,
                      adjust_hue_batch)


def where_images(flags: tf.Tensor, fn, images: tf.Tensor) -> tf.Tensor:
    """`fn(chosen_images, chosen_indices)` where flags [n] is set, the other images as they are.

    The batch is partitioned, so `fn` runs only on the images it changes.
    """
    kept, chosen = tf.dynamic_partition(tf.range(tf.shape(images)[0]),
                                        tf.cast(flags, tf.int32), 2)
    changed = fn(tf.gather(images, chosen), chosen)
    out = tf.dynamic_stitch([kept, chosen], [tf.gather(images, kept), changed])
    return tf.ensure_shape(out, images.shape)


def color_jitter_batch(images: tf.Tensor, factors: tf.Tensor, order: tf.Tensor,
                       apply: tf.Tensor) -> tf.Tensor:
    """`color_jitter` for a batch: image i, if apply[i], gets the adjustments of `factors[i]`
    (brightness, contrast, saturation, hue) in the order `order[i]`, each clipped to [0, 1].

    At each of the four steps the images are partitioned by the adjustment they get, so every
    image goes through each adjustment once.
    """

    def jitter(x, chosen):
        x_factors, x_order = tf.gather(factors, chosen), tf.gather(order, chosen)
        positions = tf.range(tf.shape(x)[0])
        for step in range(4):
            groups = tf.dynamic_partition(positions, x_order[:, step], len(_BATCH_ADJUSTMENTS))
            parts = [adjust(tf.gather(x, group), tf.gather(x_factors[:, k], group))
                     for k, (adjust, group) in enumerate(zip(_BATCH_ADJUSTMENTS, groups))]
            x = tf.clip_by_value(tf.dynamic_stitch(groups, parts), 0.0, 1.0)
        return x

    return where_images(apply, jitter, images)


def gaussian_blur_batch(images: tf.Tensor, sigmas: tf.Tensor, kernel_size: int) -> tf.Tensor:
    """`gaussian_blur` of image i with sigmas[i]: one depthwise convolution per direction over the
    batch folded into the channels."""
    radius = max(1, kernel_size // 2)
    x = tf.range(-radius, radius + 1, dtype=tf.float32)
    kernels = tf.exp(-tf.square(x) / (2.0 * tf.square(sigmas[:, None])))
    kernels /= tf.reduce_sum(kernels, axis=-1, keepdims=True)
    taps = tf.transpose(tf.repeat(kernels, 3, axis=0))  # [2r+1, n * 3]: one kernel per channel.
    padded = tf.pad(images, [[0, 0], [radius, radius], [radius, radius], [0, 0]], "REFLECT")
    shape = tf.shape(padded)
    folded = tf.reshape(tf.transpose(padded, [1, 2, 0, 3]), [1, shape[1], shape[2], -1])
    out = tf.nn.depthwise_conv2d(folded, taps[:, None, :, None], [1, 1, 1, 1], "VALID")
    out = tf.nn.depthwise_conv2d(out, taps[None, :, :, None], [1, 1, 1, 1], "VALID")
    out = tf.reshape(out, [shape[1] - 2 * radius, shape[2] - 2 * radius, shape[0], 3])
    return tf.transpose(out, [2, 0, 1, 3])


_GRAY_WEIGHTS = (0.2989, 0.5870, 0.1140)  # tf.image.rgb_to_grayscale's luma weights.


def _grayscale_batch(images: tf.Tensor) -> tf.Tensor:
    """`to_grayscale` for a batch, computed on channel planes (faster on CPU)."""
    r, g, b = tf.unstack(images, axis=-1)
    gray = r * _GRAY_WEIGHTS[0] + g * _GRAY_WEIGHTS[1] + b * _GRAY_WEIGHTS[2]
    return _stack_channels([gray] * 3)


def color_batch(images: tf.Tensor, draws: ColorDraws, *, image_size: int,
                color_strength: float = 1.0, blur: bool = True,
                solarize_prob: float = 0.0) -> tf.Tensor:
    """`simclr_view`'s colour stage for a batch of cropped views [n, S, S, 3] with per-image
    draws: jitter, grayscale, blur (if `blur`), solarisation, clip.

    Keywords as `simclr_view`'s; `solarize_prob` only says whether to build the solarisation at
    all: the coins are in `draws`.
    """
    if color_strength > 0:
        images = color_jitter_batch(images, draws.factors, draws.order, draws.jitter)
    images = where_images(draws.grayscale, lambda x, _: _grayscale_batch(x), images)
    if blur:
        kernel_size = max(3, image_size // 10)
        images = where_images(draws.blur, lambda x, chosen: gaussian_blur_batch(
            x, tf.gather(draws.blur_sigma, chosen), kernel_size), images)
    if solarize_prob > 0:
        images = where_images(draws.solarize, lambda x, _: solarize(x), images)
    return tf.clip_by_value(images, 0.0, 1.0)


def color_two_views(view1: tf.Tensor, view2: tf.Tensor, draws: ColorDraws, *, image_size: int,
                    color_strength: float = 1.0, blur: bool = True,
                    solarize_prob=0.0) -> tuple[tf.Tensor, tf.Tensor]:
    """`two_views`' colour stage for a batch: views [n, S, S, 3] from `crop_views`, their colour
    draws [n, 2] (`draw_two_views`). Equals `two_views` of each example, to float rounding."""
    # Both views go through the colour ops as one batch of 2n images (one graph, not two).
    views_first = tf.nest.map_structure(lambda t: tf.concat([t[:, 0], t[:, 1]], axis=0), draws)
    solarize_on = max(_per_view(solarize_prob, v) for v in range(2))
    images = color_batch(tf.concat([view1, view2], axis=0), views_first, image_size=image_size,
                         color_strength=color_strength, blur=blur, solarize_prob=solarize_on)
    return tuple(tf.split(images, 2, axis=0))
