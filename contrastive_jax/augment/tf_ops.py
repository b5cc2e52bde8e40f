"""SimCLR / BYOL image ops as stateless TensorFlow ops, one image at a time, and the seeds.

Every random choice is drawn with `tf.random.stateless_*` from an explicit seed (an int tensor of
shape [2]), so an example's views depend only on its seed. The input pipeline derives that seed
from (run seed, epoch, example index) with `example_seed`; a resumed run therefore sees exactly the
views an uninterrupted run would have seen. The `batched_*` seeds are those seeds for a whole
batch of (epoch, index) at once, bit for bit (`philox`); `tf_batch` draws the views from them.

The crop is torchvision's RandomResizedCrop (area and log aspect ratio uniform, the first of 10
candidates that fits) with a bicubic resize; `center_crop` is the evaluation view. The grayscale,
blur and solarisation ops are SimCLR's (Chen et al. 2020, appendix A) and BYOL's (Grill et al.
2020).
"""

from __future__ import annotations

import functools
import math

import tensorflow as tf

from contrastive_jax.augment.philox import batched_fold_in, batched_split

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
    """The [num, 2] seeds of an example's `num` small crops (SwAV's multi-crop), one per crop:
    drawn apart from `example_seed`'s tree, so the two views stay those of a run without small
    crops."""
    salted = tf.random.experimental.stateless_fold_in(
        example_seed(seed, epoch, index), tf.constant(_SMALL_CROPS_SALT, tf.int64))
    return _split(salted, num)


def batched_example_seed(seed, epoch, index) -> tf.Tensor:
    """int64 [n, 2]: `example_seed(seed, epoch[i], index[i])` for every i of the [n] tensors."""
    index = tf.cast(index, tf.int64)
    base = tf.stack([tf.cast(seed, tf.int64), tf.constant(_SEED_SALT, tf.int64)])
    base = tf.broadcast_to(base, tf.concat([tf.shape(index), [2]], 0))
    return batched_fold_in(batched_fold_in(base, epoch), index)


def batched_view_seeds(seed, epoch, index) -> tf.Tensor:
    """int64 [n, 2, 2]: the seeds of the two views of examples (epoch[i], index[i]), each
    `example_seed` split in two."""
    return batched_split(batched_example_seed(seed, epoch, index), 2)


def batched_small_crop_seeds(seed, epoch, index, num: int) -> tf.Tensor:
    """int64 [n, num, 2]: `small_crop_seeds(seed, epoch[i], index[i], num)` for every i."""
    example_seeds = batched_example_seed(seed, epoch, index)
    salt = tf.fill(tf.shape(example_seeds)[:-1], tf.constant(_SMALL_CROPS_SALT, tf.int64))
    return batched_split(batched_fold_in(example_seeds, salt), num)


def _split(seed, num: int) -> tf.Tensor:
    return tf.random.experimental.stateless_split(seed, num=num)


def _uniform(seed, minval=0.0, maxval=1.0, shape=()) -> tf.Tensor:
    return tf.random.stateless_uniform(shape, seed, minval=minval, maxval=maxval, dtype=tf.float32)


# ------------------------------------------------------------------------------------------------
# Geometry.


def to_float(image: tf.Tensor) -> tf.Tensor:
    """uint8 [0, 255] or float [0, 1] -> float32 [0, 1]."""
    return tf.image.convert_image_dtype(image, tf.float32)


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
    corner, size = crop_window(area_fraction, aspect_ratio, offset,
                                tf.stack([height, width]), aspect_range)
    return tf.concat([corner, size], axis=-1)


# Compiled with XLA: some forty scalar-sized ops become one call, much of the per-example cost of
# a crop. Only IEEE-exact ops, so the windows are those plain TF computes (tests check both).
@functools.partial(tf.function, jit_compile=True)
def crop_window(area_fraction, aspect_ratio, offset, image_size, aspect_range):
    """(corner, size) [..., 2] int32 of the crop window that `sample_crop_box` picks from its
    draws, each as (y, x) / (height, width); `image_size` is the image's (height, width)."""
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


def resize_bicubic(image: tf.Tensor, image_size: int) -> tf.Tensor:
    """`image` resized to image_size x image_size (bicubic), clipped to [0, 1]."""
    out = tf.image.resize(image, [image_size, image_size], method="bicubic")
    return tf.clip_by_value(out, 0.0, 1.0)


def random_resized_crop(image: tf.Tensor, seed, image_size: int, area_range=(0.08, 1.0),
                        aspect_range=(3 / 4, 4 / 3)) -> tf.Tensor:
    """Crops a random window (see `sample_crop_box`) and resizes it to image_size (bicubic)."""
    shape = tf.shape(image)
    box = sample_crop_box(seed, shape[0], shape[1], area_range, aspect_range)
    crop = tf.slice(image, [box[0], box[1], 0], [box[2], box[3], -1])
    return resize_bicubic(crop, image_size)


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
    out = resize_bicubic(crop, image_size)
    return tf.ensure_shape(out, [image_size, image_size, 3])


# ------------------------------------------------------------------------------------------------
# Colour.


def to_grayscale(image: tf.Tensor) -> tf.Tensor:
    """Luma-weighted grayscale, kept as 3 equal channels."""
    return tf.tile(tf.image.rgb_to_grayscale(image), [1, 1, 3])


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


def solarize(image: tf.Tensor, threshold: float = 0.5) -> tf.Tensor:
    """Inverts pixels at or above `threshold` (images in [0, 1])."""
    return tf.where(image < threshold, image, 1.0 - image)
