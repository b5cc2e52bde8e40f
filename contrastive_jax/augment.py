"""SimCLR / BYOL image augmentations as stateless TensorFlow ops.

Every random choice is drawn with `tf.random.stateless_*` from an explicit seed (an int tensor of
shape [2]), so an example's views depend only on its seed. The input pipeline derives that seed
from (run seed, epoch, example index) with `example_seed`; a resumed run therefore sees exactly the
views an uninterrupted run would have seen.

Defaults follow Chen et al. 2020 (SimCLR, appendix A): random resized crop (area 0.08-1, aspect
3/4-4/3), horizontal flip p=0.5, colour jitter of strength s (brightness, contrast, saturation
0.8s, hue 0.2s, random order) with p=0.8, grayscale p=0.2, Gaussian blur p=0.5 with sigma in
[0.1, 2] and a kernel 10% of the image side. Solarisation is BYOL's (Grill et al. 2020).

    python -m contrastive_jax.augment --show --out=views.png [--image=PATH] [--num_views=8]

writes a PNG row: the evaluation view of an image followed by augmented views.
"""

from __future__ import annotations

import argparse
import math
from typing import Sequence

import tensorflow as tf

try:  # Keep TensorFlow off the GPU: JAX owns accelerator memory.
    tf.config.set_visible_devices([], "GPU")
except (RuntimeError, ValueError):  # Devices already initialised; nothing to do.
    pass

_SEED_SALT = 0x5EED  # Second word of the run seed, so seed k and seed pair (k, 0) differ.


# ------------------------------------------------------------------------------------------------
# Seeds.


def example_seed(seed, epoch, index) -> tf.Tensor:
    """The [2] int64 augmentation seed of example `index` in `epoch` under run seed `seed`."""
    base = tf.stack([tf.cast(seed, tf.int64), tf.constant(_SEED_SALT, tf.int64)])
    s = tf.random.experimental.stateless_fold_in(base, tf.cast(epoch, tf.int64))
    return tf.random.experimental.stateless_fold_in(s, tf.cast(index, tf.int64))


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


def sample_crop_box(seed, height, width, area_range=(0.08, 1.0), aspect_range=(3 / 4, 4 / 3),
                    attempts: int = 10) -> tf.Tensor:
    """Samples a crop window [y, x, h, w] (int32) as torchvision's RandomResizedCrop does.

    Area fraction is uniform in `area_range`, log aspect ratio (w/h) uniform in `aspect_range`; the
    first of `attempts` candidates that fits is used, else a centre crop with the aspect clipped.
    """
    s = _split(seed, 4)
    h_f = tf.cast(height, tf.float32)
    w_f = tf.cast(width, tf.float32)
    area = h_f * w_f * _uniform(s[0], area_range[0], area_range[1], [attempts])
    log_ratio = _uniform(s[1], math.log(aspect_range[0]), math.log(aspect_range[1]), [attempts])
    ratio = tf.exp(log_ratio)
    cand_w = tf.round(tf.sqrt(area * ratio))
    cand_h = tf.round(tf.sqrt(area / ratio))
    fits = (cand_w <= w_f) & (cand_h <= h_f) & (cand_w >= 1) & (cand_h >= 1)
    first = tf.argmax(tf.cast(fits, tf.int32))
    # Fallback: the whole image, cut to the nearest allowed aspect ratio.
    in_ratio = w_f / h_f
    fb_w = tf.where(in_ratio > aspect_range[1], tf.round(h_f * aspect_range[1]), w_f)
    fb_h = tf.where(in_ratio < aspect_range[0], tf.round(w_f / aspect_range[0]), h_f)
    any_fits = tf.reduce_any(fits)
    crop_h = tf.where(any_fits, cand_h[first], fb_h)
    crop_w = tf.where(any_fits, cand_w[first], fb_w)
    u = _uniform(s[2], shape=[2])
    y = tf.minimum(tf.floor(u[0] * (h_f - crop_h + 1)), h_f - crop_h)
    x = tf.minimum(tf.floor(u[1] * (w_f - crop_w + 1)), w_f - crop_w)
    y = tf.where(any_fits, y, tf.floor((h_f - crop_h) / 2))
    x = tf.where(any_fits, x, tf.floor((w_f - crop_w) / 2))
    return tf.cast(tf.stack([y, x, crop_h, crop_w]), tf.int32)


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


def color_jitter(image: tf.Tensor, seed, strength: float = 1.0, *, brightness: float = 0.8,
                 contrast: float = 0.8, saturation: float = 0.8, hue: float = 0.2) -> tf.Tensor:
    """SimCLR colour jitter: the four adjustments (each scaled by `strength`) in a random order.

    Brightness, contrast and saturation multiply by a factor uniform in [max(0, 1-a), 1+a]
    (torchvision's and SimCLR v2's form); hue shifts by a delta uniform in [-h, h].
    """
    b, c, sat, h = (strength * v for v in (brightness, contrast, saturation, hue))
    s = _split(seed, 5)
    b_factor = _uniform(s[0], max(0.0, 1 - b), 1 + b)
    c_factor = _uniform(s[1], max(0.0, 1 - c), 1 + c)
    s_factor = _uniform(s[2], max(0.0, 1 - sat), 1 + sat)
    h_delta = _uniform(s[3], -h, h)
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
# Command line: look at what the model sees.


def _grid_row(images: Sequence[tf.Tensor], scale: int, gap: int = 2) -> tf.Tensor:
    size = int(images[0].shape[0]) * scale
    cells = [tf.image.resize(im, [size, size], method="nearest") for im in images]
    sep = tf.ones([size, gap, 3])
    parts = [sep]
    for cell in cells:
        parts += [cell, sep]
    row = tf.concat(parts, axis=1)
    border = tf.ones([gap, row.shape[1], 3])
    return tf.concat([border, row, border], axis=0)


def _default_image() -> tf.Tensor:
    from contrastive_jax import input_pipeline  # Imported here: the ops above need no sources.

    images, _ = input_pipeline.demo_arrays("train")
    return tf.constant(images[0])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--show", action="store_true", help="write a PNG of augmented views")
    parser.add_argument("--out", default="views.png")
    parser.add_argument("--image", default=None, help="JPEG/PNG file (default: first demo digit)")
    parser.add_argument("--num_views", type=int, default=8)
    parser.add_argument("--rows", type=int, default=2)
    parser.add_argument("--image_size", type=int, default=None, help="default: the image's side")
    parser.add_argument("--color_strength", type=float, default=1.0)
    parser.add_argument("--blur", type=int, default=1, help="1 to blur (p=0.5), 0 for off")
    parser.add_argument("--solarize_prob", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not args.show:
        parser.error("nothing to do: pass --show")
    if args.image:
        image = tf.io.decode_image(tf.io.read_file(args.image), channels=3, expand_animations=False)
    else:
        image = _default_image()
    size = args.image_size or int(min(image.shape[0], image.shape[1]))
    scale = max(1, 128 // size)
    rows = []
    for r in range(args.rows):
        cells = [center_crop(image, size)]
        for i in range(args.num_views):
            cells.append(simclr_view(image, example_seed(args.seed, r, i), image_size=size,
                                     color_strength=args.color_strength, blur=bool(args.blur),
                                     solarize_prob=args.solarize_prob))
        rows.append(_grid_row(cells, scale))
    grid = tf.concat(rows, axis=0)
    png = tf.io.encode_png(tf.image.convert_image_dtype(grid, tf.uint8, saturate=True))
    tf.io.write_file(args.out, png)
    print(f"wrote {args.out}: {args.rows} rows of the eval view + {args.num_views} views, {size}px")


if __name__ == "__main__":
    main()
