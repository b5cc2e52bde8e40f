"""The per-example reference of the training views: one image, one seed, plain tf.image ops.

What the batched tf path (`tf_batch`, which the input pipeline runs) must equal to float
rounding, written the direct way: each random number drawn with `tf.random.stateless_*` from its
own seed, each op applied to one image behind a `tf.cond`, the jitter's four ops switched in
their drawn order, brightness as `x * f` or `tf.image.adjust_brightness(x, f - 1)`. The jitter
ranges are SimCLR's published ones (0.8 s for brightness, contrast and saturation, 0.2 s for
hue), not read from the package.

The seed tree, which `tf_batch.draw_views` follows: an example's seed splits in two, one per
view; a view's in 7 (crop, flip, jitter, jitter coin, grayscale coin, blur sigma, blur coin),
and the blur coin's seed in 2, whose second draws the solarisation coin.
"""

from __future__ import annotations

import tensorflow as tf

from contrastive_jax.augment import tf_ops
from contrastive_jax.augment.spec import ViewSpec

# SimCLR's ImageNet views (Chen et al. 2020, appendix A), what `specs` changes.
SIMCLR_IMAGENET = dict(color_strength=1.0, brightness_mode="multiply", blur=True, blur_prob=0.5,
                       solarize_prob=0.0, grayscale_prob=0.2, crop_area_range=(0.08, 1.0))
_PER_VIEW = ("blur_prob", "solarize_prob", "grayscale_prob", "jitter_prob")


def specs(image_size: int, **fields) -> tuple[ViewSpec, ViewSpec]:
    """The two views' specs: SimCLR's ImageNet views at `image_size` with `fields` changed; a
    probability given as a pair gives each view its own (BYOL's asymmetric views)."""
    fields = {**SIMCLR_IMAGENET, **fields}
    return tuple(ViewSpec(image_size=image_size, **{
        name: value[view] if name in _PER_VIEW and isinstance(value, tuple) else value
        for name, value in fields.items()}) for view in range(2))


def spec(image_size: int, **fields) -> ViewSpec:
    """One view's spec: `specs(...)[0]`."""
    return specs(image_size, **fields)[0]


def _split(seed, num: int) -> tf.Tensor:
    return tf.random.experimental.stateless_split(seed, num=num)


def _uniform(seed, minval=0.0, maxval=1.0, shape=()) -> tf.Tensor:
    return tf.random.stateless_uniform(shape, seed, minval=minval, maxval=maxval, dtype=tf.float32)


def random_apply(fn, prob: float, seed, image: tf.Tensor) -> tf.Tensor:
    """`fn(image)` with probability `prob` (decided by `seed`)."""
    if prob <= 0.0:
        return image
    if prob >= 1.0:
        return fn(image)
    return tf.cond(_uniform(seed) < prob, lambda: fn(image), lambda: image)


def color_jitter(image: tf.Tensor, seed, strength: float, brightness_mode: str) -> tf.Tensor:
    """SimCLR colour jitter: brightness, contrast, saturation (factors uniform in
    [max(0, 1 - a), 1 + a]) and hue (a delta uniform in [-h, h]) in a random order, each
    clipped to [0, 1]; brightness multiplies by its factor f or adds f - 1."""
    b, c, s, h = (strength * v for v in (0.8, 0.8, 0.8, 0.2))
    seeds = _split(seed, 5)
    b_factor = _uniform(seeds[0], max(0.0, 1 - b), 1 + b)
    c_factor = _uniform(seeds[1], max(0.0, 1 - c), 1 + c)
    s_factor = _uniform(seeds[2], max(0.0, 1 - s), 1 + s)
    h_delta = _uniform(seeds[3], -h, h)
    order = tf.argsort(_uniform(seeds[4], shape=[4]))
    brightness = {"multiply": lambda x: x * b_factor,
                  "add": lambda x: tf.image.adjust_brightness(x, b_factor - 1.0)}[brightness_mode]

    def apply(op_index, x):
        branches = [
            lambda: brightness(x),
            lambda: tf.image.adjust_contrast(x, c_factor),
            lambda: tf.image.adjust_saturation(x, s_factor),
            lambda: tf.image.adjust_hue(x, h_delta),
        ]
        return tf.clip_by_value(tf.switch_case(op_index, branches), 0.0, 1.0)

    for i in range(4):
        image = apply(order[i], image)
    return image


def simclr_view(image: tf.Tensor, seed, view: ViewSpec) -> tf.Tensor:
    """One augmented view: float32 [S, S, 3] in [0, 1], S = view.image_size.

    Order: crop, flip, colour jitter (p = jitter_prob), grayscale, blur (if `view.blur`),
    solarisation.
    """
    s = _split(seed, 7)
    size = view.image_size
    image = tf_ops.to_float(image)
    image = tf_ops.random_resized_crop(image, s[0], size, area_range=view.crop_area_range,
                                       aspect_range=view.aspect_range)
    image = tf_ops.random_flip(image, s[1])
    if view.color_strength > 0:
        jitter = lambda x: color_jitter(  # noqa: E731
            x, s[2], view.color_strength, view.brightness_mode)
        image = random_apply(jitter, view.jitter_prob, s[3], image)
    image = random_apply(tf_ops.to_grayscale, view.grayscale_prob, s[4], image)
    if view.blur:
        sigma = _uniform(s[5], *view.blur_sigma_range)
        blur = lambda x: tf_ops.gaussian_blur(x, sigma, max(3, size // 10))  # noqa: E731
        image = random_apply(blur, view.blur_prob, s[6], image)
    if view.solarize_prob > 0:
        image = random_apply(tf_ops.solarize, view.solarize_prob, _split(s[6], 2)[1], image)
    image = tf.clip_by_value(image, 0.0, 1.0)
    return tf.ensure_shape(image, [size, size, 3])


def two_views(image: tf.Tensor, seed, views: tuple[ViewSpec, ViewSpec]
              ) -> tuple[tf.Tensor, tf.Tensor]:
    """Two independent views of `image` from one seed, split into one seed per view."""
    seeds = _split(seed, 2)
    return tuple(simclr_view(image, seeds[v], views[v]) for v in range(2))
