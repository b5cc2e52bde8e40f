"""The training views in batches: what the per-example ops would draw for every seed of a
batch, the crops of each image, and the colour changes of a whole batch at once.

Per-example ops on small images cost more in op overhead than in arithmetic, so the input
pipeline makes its views in two stages: `draw_views` draws, for a whole tensor of view seeds,
every number a view needs (bit for bit what `tf.random.stateless_*` give for each seed, with
`philox`); `crop_views` crops, resizes and flips one image (images differ in size);
`color_two_views` / `color_batch` apply the colour changes to a batch, each image with its own
factors, order and coins. Each batched colour op equals its tf.image counterpart applied image
by image, and the views equal those of the per-example reference (tests/augment/
reference_views.py) to float rounding. What to draw comes from a `spec.ViewSpec`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple, Sequence

import tensorflow as tf

from contrastive_jax.augment.philox import (batched_split, batched_uniform, philox_words,
                                            scale_uniform, words_to_seeds, words_to_uniform)
from contrastive_jax.augment.spec import ViewSpec, jitter_ranges
from contrastive_jax.augment.tf_ops import crop_window, resize_bicubic, solarize, to_float


class CropDraws(NamedTuple):
    """A view's crop window and flip; leading dims are the seeds'."""

    area_fraction: tf.Tensor  # [..., attempts]
    aspect_ratio: tf.Tensor  # [..., attempts], width / height
    offset: tf.Tensor  # [..., 2], in [0, 1)
    flip: tf.Tensor  # bool [...]


class ColorDraws(NamedTuple):
    """A view's colour randomness; leading dims are the seeds'."""

    factors: tf.Tensor  # [..., 4]: brightness, contrast and saturation factors, hue delta
    order: tf.Tensor  # int32 [..., 4]: the indices of `factors` in the order they are applied
    jitter: tf.Tensor  # bool [...]
    grayscale: tf.Tensor  # bool [...]
    blur_sigma: tf.Tensor  # [...]
    blur: tf.Tensor  # bool [...]
    solarize: tf.Tensor  # bool [...]


class ViewDraws(NamedTuple):
    """Everything a view draws."""

    crop: CropDraws
    color: ColorDraws


_PROBABILITIES = ("jitter_prob", "grayscale_prob", "blur_prob", "solarize_prob")


def _batched_spec(specs: Sequence[ViewSpec]) -> ViewSpec:
    """The one spec of views drawn or coloured together, which may differ only in their
    probabilities (BYOL's asymmetric views): each probability the views' largest, which says
    whether an op is built at all (the coins decide which images it changes)."""
    merged = dataclasses.replace(
        specs[0], **{name: max(getattr(s, name) for s in specs) for name in _PROBABILITIES})
    for s in specs:
        if dataclasses.replace(s, **{name: getattr(merged, name) for name in _PROBABILITIES}
                               ) != merged:
            raise ValueError(f"views drawn together may differ only in {_PROBABILITIES}, got "
                             f"{specs}")
    return merged


def draw_views(view_seeds, specs: ViewSpec | Sequence[ViewSpec],
               attempts: int = 10) -> ViewDraws:
    """Every number the views of `view_seeds` [..., 2] draw, bit for bit.

    `specs` is one spec for every seed, or one per entry of the seeds' last leading axis (the
    two views of `tf_ops.batched_view_seeds` [n, 2, 2]), differing only in their probabilities.
    A view seed is split in 7: crop, flip coin, jitter, jitter coin, grayscale coin, blur sigma,
    blur coin; the crop seed in 4 (area fractions, log aspect ratios, offset), the jitter seed in
    5 (four factors, order), the blur coin seed in 2, whose second draws the solarize coin. The
    tree is followed one level at a time, each level in two Philox evaluations over all its
    seeds, grouped by how many blocks they need (a draw of k numbers is the first k numbers of a
    longer draw from the same seed).
    """
    per_view = not isinstance(specs, ViewSpec)
    shared = _batched_spec(specs) if per_view else specs

    def below(draw, name):
        prob = [getattr(s, name) for s in specs] if per_view else getattr(specs, name)
        return draw < tf.constant(prob, tf.float32)

    # Level 1: crop, flip coin, jitter, jitter coin, grayscale coin, blur sigma, blur coin.
    subseeds = batched_split(view_seeds, 7)
    # Level 2: the crop seed's split in 4, the jitter seed's split in 5 (5 blocks each); the
    # coins and the blur coin seed's split in 2, whose second seed draws the solarize coin.
    split_words = philox_words(tf.gather(subseeds, [0, 2], axis=-2), 5)
    coin_words = philox_words(tf.gather(subseeds, [1, 3, 4, 5, 6], axis=-2), 2)
    coins = words_to_uniform(coin_words[..., 0])  # flip, jitter, grayscale, sigma, blur.
    crop_seeds = words_to_seeds(split_words[..., 0, :], 4)
    # Level 3: area fractions and log aspect ratios (attempts each); offsets, jitter factors and
    # order, solarize coin (at most 4 each).
    long_draws = batched_uniform(crop_seeds[..., :2, :], attempts)
    unit = batched_uniform(tf.concat([crop_seeds[..., 2:3, :],
                                      words_to_seeds(split_words[..., 1, :], 5),
                                      words_to_seeds(coin_words[..., 4, :], 2)[..., 1:, :]],
                                     axis=-2), 4)
    aspect_range = shared.aspect_range
    crop = CropDraws(
        area_fraction=scale_uniform(long_draws[..., 0, :], *shared.crop_area_range),
        aspect_ratio=tf.exp(scale_uniform(long_draws[..., 1, :], math.log(aspect_range[0]),
                                          math.log(aspect_range[1]))),
        offset=unit[..., 0, :2],
        flip=coins[..., 0] < 0.5)
    ranges = jitter_ranges(shared.color_strength)
    color = ColorDraws(
        factors=tf.stack([scale_uniform(unit[..., 1 + k, 0], *ranges[k]) for k in range(4)], -1),
        order=tf.argsort(unit[..., 5, :], axis=-1),
        jitter=below(coins[..., 1], "jitter_prob"),
        grayscale=below(coins[..., 2], "grayscale_prob"),
        blur_sigma=scale_uniform(coins[..., 3], *shared.blur_sigma_range),
        blur=below(coins[..., 4], "blur_prob"),
        solarize=below(unit[..., 6, 0], "solarize_prob"))
    return ViewDraws(crop, color)


def crop_views(image: tf.Tensor, draws: CropDraws, image_size: int,
               aspect_range: tuple[float, float]) -> tuple[tf.Tensor, ...]:
    """The views of one image before any colour change: crop, bicubic resize, flip as drawn.

    `draws` holds one entry per view (see `draw_views`); each view is float32
    [image_size, image_size, 3] in [0, 1].
    """
    image = to_float(image)
    corners, sizes = crop_window(draws.area_fraction, draws.aspect_ratio, draws.offset,
                                 tf.shape(image)[:2], aspect_range)
    begins = tf.pad(corners, [[0, 0], [0, 1]])  # Channels: from 0, all of them (-1).
    sizes = tf.pad(sizes, [[0, 0], [0, 1]], constant_values=-1)
    views = []
    for v in range(draws.flip.shape[0]):
        view = resize_bicubic(tf.slice(image, begins[v], sizes[v]), image_size)
        # Reversing the axes range(1, 1 + flip): [1] or none; cheaper than a tf.cond per view.
        view = tf.reverse(view, tf.range(1, 1 + tf.cast(draws.flip[v], tf.int32)))
        view.set_shape([image_size, image_size, 3])  # Static shape only: no op runs.
        views.append(view)
    return tuple(views)


# ------------------------------------------------------------------------------------------------
# Colour, for a batch of cropped views [n, S, S, 3], every image with its own parameters.


def _per_image(values: tf.Tensor) -> tf.Tensor:
    """[n] -> [n, 1, 1, 1], to broadcast one value per image over [n, H, W, C]."""
    return values[:, None, None, None]


def adjust_brightness_batch(images: tf.Tensor, factors: tf.Tensor, mode: str) -> tf.Tensor:
    """Image i times factors[i] (mode "multiply"), or plus the delta factors[i] - 1 (mode "add",
    tf.image.adjust_brightness's); see `spec.BRIGHTNESS_MODES`."""
    if mode == "add":
        return images + _per_image(factors - 1.0)
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
                       apply: tf.Tensor, *, brightness_mode: str) -> tf.Tensor:
    """Image i, if apply[i], gets the adjustments of `factors[i]` (brightness in
    `brightness_mode`, contrast, saturation, hue) in the order `order[i]`, each clipped to
    [0, 1]: SimCLR's colour jitter.

    At each of the four steps the images are partitioned by the adjustment they get, so every
    image goes through each adjustment once.
    """
    adjustments = (functools.partial(adjust_brightness_batch, mode=brightness_mode),
                   adjust_contrast_batch, adjust_saturation_batch, adjust_hue_batch)

    def jitter(x, chosen):
        x_factors, x_order = tf.gather(factors, chosen), tf.gather(order, chosen)
        positions = tf.range(tf.shape(x)[0])
        for step in range(4):
            groups = tf.dynamic_partition(positions, x_order[:, step], len(adjustments))
            parts = [adjust(tf.gather(x, group), tf.gather(x_factors[:, k], group))
                     for k, (adjust, group) in enumerate(zip(adjustments, groups))]
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


def color_batch(images: tf.Tensor, draws: ColorDraws, spec: ViewSpec) -> tf.Tensor:
    """The colour stage of views [n, S, S, 3] with per-image draws: jitter, grayscale, blur (if
    `spec.blur`), solarisation, clip. The coins are in `draws`; `spec` says which ops to build
    (a probability of 0 builds none)."""
    if spec.color_strength > 0:
        images = color_jitter_batch(images, draws.factors, draws.order, draws.jitter,
                                    brightness_mode=spec.brightness_mode)
    images = where_images(draws.grayscale, lambda x, _: _grayscale_batch(x), images)
    if spec.blur:
        images = where_images(draws.blur, lambda x, chosen: gaussian_blur_batch(
            x, tf.gather(draws.blur_sigma, chosen), spec.blur_kernel_size), images)
    if spec.solarize_prob > 0:
        images = where_images(draws.solarize, lambda x, _: solarize(x), images)
    return tf.clip_by_value(images, 0.0, 1.0)


def color_two_views(view1: tf.Tensor, view2: tf.Tensor, draws: ColorDraws,
                    specs: Sequence[ViewSpec]) -> tuple[tf.Tensor, tf.Tensor]:
    """The colour stage of both views: views [n, S, S, 3] from `crop_views`, their colour draws
    [n, 2] (`draw_views` of `batched_view_seeds`), the two views' specs."""
    # Both views go through the colour ops as one batch of 2n images (one graph, not two).
    views_first = tf.nest.map_structure(lambda t: tf.concat([t[:, 0], t[:, 1]], axis=0), draws)
    images = color_batch(tf.concat([view1, view2], axis=0), views_first, _batched_spec(specs))
    return tuple(tf.split(images, 2, axis=0))
