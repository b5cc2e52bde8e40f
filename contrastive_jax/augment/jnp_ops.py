"""SimCLR / BYOL augmentations in jax.numpy, drawn on the accelerator under jit.

The views the tf side (`tf_ops`, `tf_batch`) draws on the host, from the same `spec.ViewSpec`,
for `data.augment_on = "device"`: random resized crop (bicubic), horizontal flip, colour jitter
(brightness, contrast, saturation, hue in a random order) with probability p, grayscale,
Gaussian blur, solarisation. Each function takes one image and one key and is `vmap`-ped over
the batch, so every example has its own crop, its own jitter factors and its own order of the
jitter ops. Keys come from (seed, epoch, example index) with `example_keys`, so a resumed run
draws the views an uninterrupted run would have drawn. No TensorFlow here: this module runs where
only jax is installed.

The random streams differ from tf.data's (JAX's threefry, not TF's Philox), so the two paths give
views with the same distribution, not the same pixels; for given parameters each op computes
what its tf.image counterpart computes (tests hold them equal).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from contrastive_jax.augment.spec import ViewSpec, jitter_ranges

Array = jax.Array

_KEY_SALT = 0x5EED  # Keeps device augmentation keys apart from other uses of the run seed.
_GRAY_WEIGHTS = (0.2989, 0.5870, 0.1140)  # tf.image.rgb_to_grayscale's luma weights.


# ------------------------------------------------------------------------------------------------
# Keys.


def example_keys(seed: int, epoch: Array, index: Array) -> Array:
    """[n] keys (uint32 [n, 2]) of examples `index` [n] drawn in `epoch` [n] under run `seed`."""
    base = jax.random.fold_in(jax.random.PRNGKey(seed), _KEY_SALT)
    return jax.vmap(lambda e, i: jax.random.fold_in(jax.random.fold_in(base, e), i))(
        jnp.asarray(epoch, jnp.uint32), jnp.asarray(index, jnp.uint32))


def _uniform(key, low=0.0, high=1.0, shape=()):
    return jax.random.uniform(key, shape, jnp.float32, low, high)


def random_apply(fn, prob: float, key: Array, image: Array) -> Array:
    """`fn(image)` with probability `prob`, else `image` (both computed under vmap)."""
    if prob <= 0.0:
        return image
    if prob >= 1.0:
        return fn(image)
    return jnp.where(_uniform(key) < prob, fn(image), image)


# ------------------------------------------------------------------------------------------------
# Geometry.


def sample_crop_box(key: Array, height: int, width: int, area_range=(0.08, 1.0),
                    aspect_range=(3 / 4, 4 / 3), attempts: int = 10) -> Array:
    """A crop window [y, x, h, w] (int32), drawn as torchvision's RandomResizedCrop draws it.

    Area fraction uniform in `area_range`, log aspect ratio (w/h) uniform in `aspect_range`; the
    first of `attempts` candidates that fits, else the whole image cut to the nearest allowed
    aspect ratio (centred).
    """
    k_area, k_ratio, k_pos = jax.random.split(key, 3)
    area = height * width * _uniform(k_area, area_range[0], area_range[1], (attempts,))
    ratio = jnp.exp(_uniform(k_ratio, math.log(aspect_range[0]), math.log(aspect_range[1]),
                             (attempts,)))
    cand_w = jnp.round(jnp.sqrt(area * ratio))
    cand_h = jnp.round(jnp.sqrt(area / ratio))
    fits = (cand_w <= width) & (cand_h <= height) & (cand_w >= 1) & (cand_h >= 1)
    first = jnp.argmax(fits)
    in_ratio = width / height
    fallback_w = round(height * aspect_range[1]) if in_ratio > aspect_range[1] else width
    fallback_h = round(width / aspect_range[0]) if in_ratio < aspect_range[0] else height
    any_fits = jnp.any(fits)
    crop_h = jnp.where(any_fits, cand_h[first], fallback_h)
    crop_w = jnp.where(any_fits, cand_w[first], fallback_w)
    u = _uniform(k_pos, shape=(2,))
    y = jnp.where(any_fits, jnp.minimum(jnp.floor(u[0] * (height - crop_h + 1)), height - crop_h),
                  jnp.floor((height - crop_h) / 2))
    x = jnp.where(any_fits, jnp.minimum(jnp.floor(u[1] * (width - crop_w + 1)), width - crop_w),
                  jnp.floor((width - crop_w) / 2))
    return jnp.stack([y, x, crop_h, crop_w]).astype(jnp.int32)


def _keys_cubic(t: Array) -> Array:
    """Keys' cubic convolution kernel with a = -0.5 (tf.image.resize's "bicubic")."""
    a = -0.5
    t = jnp.abs(t)
    near = ((a + 2) * t - (a + 3)) * t * t + 1
    far = ((a * t - 5 * a) * t + 8 * a) * t - 4 * a
    return jnp.where(t <= 1, near, jnp.where(t < 2, far, 0.0))


def resize_matrix(start: Array, length: Array, in_size: int, out_size: int) -> Array:
    """[out_size, in_size] weights that resample pixels [start, start + length) of one axis to
    out_size pixels with the bicubic kernel, as TF resizes a crop: half-pixel centres, taps
    outside the crop dropped and the remaining weights renormalised."""
    scale = length.astype(jnp.float32) / out_size
    centre = (jnp.arange(out_size, dtype=jnp.float32) + 0.5) * scale - 0.5  # In crop pixels.
    pixels = jnp.arange(in_size, dtype=jnp.float32) - start.astype(jnp.float32)
    weights = _keys_cubic(pixels[None, :] - centre[:, None])
    inside = (pixels >= 0) & (pixels < length.astype(jnp.float32))
    weights = jnp.where(inside[None, :], weights, 0.0)
    return weights / jnp.sum(weights, axis=1, keepdims=True)


def resized_crop(image: Array, box: Array, image_size: int) -> Array:
    """The window `box` = [y, x, h, w] of `image` [H, W, C] resized to image_size (bicubic),
    clipped to [0, 1]; two small matrix products, so it runs well on accelerators."""
    height, width = image.shape[:2]
    rows = resize_matrix(box[0], box[2], height, image_size)
    cols = resize_matrix(box[1], box[3], width, image_size)
    out = jnp.einsum("oh,hwc,pw->opc", rows, image, cols, precision=jax.lax.Precision.HIGHEST)
    return jnp.clip(out, 0.0, 1.0)


def random_resized_crop(image: Array, key: Array, image_size: int, area_range=(0.08, 1.0),
                        aspect_range=(3 / 4, 4 / 3)) -> Array:
    """A random window (`sample_crop_box`) resized to image_size."""
    box = sample_crop_box(key, image.shape[0], image.shape[1], area_range, aspect_range)
    return resized_crop(image, box, image_size)


def random_flip(image: Array, key: Array) -> Array:
    """Horizontal flip with probability 0.5."""
    return jnp.where(_uniform(key) < 0.5, image[:, ::-1], image)


# ------------------------------------------------------------------------------------------------
# Colour.


def rgb_to_hsv(rgb: Array) -> Array:
    """[..., 3] RGB in [0, 1] -> HSV with hue in [0, 1), as tf.image.rgb_to_hsv."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    value = jnp.max(rgb, axis=-1)
    chroma = value - jnp.min(rgb, axis=-1)
    saturation = jnp.where(value > 0, chroma / jnp.where(value > 0, value, 1.0), 0.0)
    safe = jnp.where(chroma > 0, chroma, 1.0)
    hue = jnp.where(value == r, (g - b) / safe,
                    jnp.where(value == g, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe))
    hue = jnp.where(chroma > 0, (hue / 6.0) % 1.0, 0.0)
    return jnp.stack([hue, saturation, value], axis=-1)


def hsv_to_rgb(hsv: Array) -> Array:
    """Inverse of `rgb_to_hsv`."""
    hue, saturation, value = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    k = (jnp.array([5.0, 3.0, 1.0]) + hue[..., None] * 6.0) % 6.0
    return value[..., None] - value[..., None] * saturation[..., None] * jnp.clip(
        jnp.minimum(k, 4.0 - k), 0.0, 1.0)


def adjust_brightness(image: Array, factor: Array, mode: str) -> Array:
    """`image` times `factor` (mode "multiply"), or plus the delta factor - 1 (mode "add",
    tf.image.adjust_brightness's); see `spec.BRIGHTNESS_MODES`."""
    if mode == "add":
        return image + (factor - 1.0)
    return image * factor


def adjust_contrast(image: Array, factor: Array) -> Array:
    """Scales each channel's deviation from its spatial mean (tf.image.adjust_contrast)."""
    mean = jnp.mean(image, axis=(0, 1), keepdims=True)
    return (image - mean) * factor + mean


def adjust_saturation(image: Array, factor: Array) -> Array:
    """Multiplies HSV saturation by `factor`, clipped to [0, 1] (tf.image.adjust_saturation),
    without leaving RGB: a channel c sits at V - V S k(hue) with V the max channel, so scaling S
    by f moves it to V - min(f, 1 / S) (V - c)."""
    value = jnp.max(image, axis=-1, keepdims=True)
    chroma = value - jnp.min(image, axis=-1, keepdims=True)
    ratio = jnp.where(chroma > 0, jnp.minimum(factor, value / jnp.where(chroma > 0, chroma, 1.0)),
                      factor)
    return value - ratio * (value - image)


def adjust_hue(image: Array, delta: Array) -> Array:
    """Rotates HSV hue by `delta` (a fraction of the circle), as tf.image.adjust_hue."""
    hsv = rgb_to_hsv(image)
    return hsv_to_rgb(hsv.at[..., 0].set((hsv[..., 0] + delta) % 1.0))


def draw_jitter(key: Array, strength: float) -> tuple[Array, Array]:
    """SimCLR's jitter parameters at colour strength `strength` (`spec.jitter_ranges`): the
    brightness, contrast and saturation factors and the hue delta [4], and the order [4] in
    which the four ops run."""
    keys = jax.random.split(key, 5)
    params = jnp.stack([_uniform(keys[k], *bounds)
                        for k, bounds in enumerate(jitter_ranges(strength))])
    return params, jax.random.permutation(keys[4], 4)


HUE = 3  # Position of the hue op in `draw_jitter`'s parameters and order.


def apply_jitter(image: Array, params: Array, order: Array, *, brightness_mode: str) -> Array:
    """Brightness (in `brightness_mode`), contrast, saturation and hue (params [4]) in `order`,
    each clipped to [0, 1]."""
    cheap_ops = (
        lambda x: adjust_brightness(x, params[0], brightness_mode),
        lambda x: adjust_contrast(x, params[1]),
        lambda x: adjust_saturation(x, params[2]),
        lambda x: x,  # The hue slot: applied once, below.
    )
    hue_slot = jnp.argmax(order == HUE)

    def apply_slots(x, run_slot):
        # Under vmap a switch computes every branch, so the costly hue op (an HSV round trip)
        # stays out of it and runs once, between the slots before and after its own.
        for slot in range(4):
            x = jnp.where(run_slot(slot),
                          jnp.clip(jax.lax.switch(order[slot], cheap_ops, x), 0.0, 1.0), x)
        return x

    image = apply_slots(image, lambda slot: slot < hue_slot)
    image = jnp.clip(adjust_hue(image, params[HUE]), 0.0, 1.0)
    return apply_slots(image, lambda slot: slot > hue_slot)


def color_jitter(image: Array, key: Array, strength: float, *, brightness_mode: str) -> Array:
    """SimCLR colour jitter of one image: the four adjustments in a random order."""
    return apply_jitter(image, *draw_jitter(key, strength), brightness_mode=brightness_mode)


def to_grayscale(image: Array) -> Array:
    """Luma-weighted grayscale, kept as 3 equal channels."""
    gray = image @ jnp.asarray(_GRAY_WEIGHTS, image.dtype)
    return jnp.repeat(gray[..., None], 3, axis=-1)


def gaussian_blur(image: Array, sigma: Array, kernel_size: int) -> Array:
    """Separable Gaussian blur with reflect padding (as `tf_ops.gaussian_blur`)."""
    radius = max(1, kernel_size // 2)
    taps = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
    kernel = jnp.exp(-taps ** 2 / (2.0 * sigma ** 2))
    kernel = kernel / jnp.sum(kernel)
    height, width = image.shape[:2]
    padded = jnp.pad(image, ((radius, radius), (radius, radius), (0, 0)), mode="reflect")
    rows = sum(kernel[t] * padded[t:t + height] for t in range(2 * radius + 1))
    return sum(kernel[t] * rows[:, t:t + width] for t in range(2 * radius + 1))


def solarize(image: Array, threshold: float = 0.5) -> Array:
    """Inverts pixels at or above `threshold`."""
    return jnp.where(image < threshold, image, 1.0 - image)


# ------------------------------------------------------------------------------------------------
# Views.


def to_float(image: Array) -> Array:
    """uint8 [0, 255] -> float32 [0, 1]; floats pass through."""
    if jnp.issubdtype(image.dtype, jnp.integer):
        return image.astype(jnp.float32) / 255.0
    return image.astype(jnp.float32)


def crop_and_flip(image: Array, key: Array, spec: ViewSpec) -> Array:
    """The geometric half of a view: random resized crop to spec.image_size, then flip."""
    k_crop, k_flip = jax.random.split(key)
    image = random_resized_crop(to_float(image), k_crop, spec.image_size, spec.crop_area_range,
                                spec.aspect_range)
    return random_flip(image, k_flip)


def colour_ops(image: Array, key: Array, spec: ViewSpec) -> Array:
    """The photometric half of a view, in SimCLR's order: colour jitter (p = jitter_prob),
    grayscale, blur (if spec.blur), solarisation; float32 in [0, 1]."""
    keys = jax.random.split(key, 7)
    image = to_float(image)
    if spec.color_strength > 0:
        jitter = lambda x: color_jitter(  # noqa: E731
            x, keys[0], spec.color_strength, brightness_mode=spec.brightness_mode)
        image = random_apply(jitter, spec.jitter_prob, keys[1], image)
    image = random_apply(to_grayscale, spec.grayscale_prob, keys[2], image)
    if spec.blur:
        sigma = _uniform(keys[3], *spec.blur_sigma_range)
        blur = lambda x: gaussian_blur(x, sigma, spec.blur_kernel_size)  # noqa: E731
        image = random_apply(blur, spec.blur_prob, keys[4], image)
    image = random_apply(solarize, spec.solarize_prob, keys[5], image)
    return jnp.clip(image, 0.0, 1.0)


def view(image: Array, key: Array, spec: ViewSpec) -> Array:
    """One augmented view of one image: crop + flip, then the colour ops."""
    k_geometry, k_colour = jax.random.split(key)
    return colour_ops(crop_and_flip(image, k_geometry, spec), k_colour, spec)


def _view_keys(keys: Array) -> tuple[Array, Array]:
    """Each example's key split into one key per view."""
    pairs = jax.vmap(lambda k: jax.random.split(k, 2))(keys)
    return pairs[:, 0], pairs[:, 1]


def two_views(images: Array, keys: Array, specs: tuple[ViewSpec, ViewSpec]
              ) -> tuple[Array, Array]:
    """Two independent views of every image of a batch: images [n, H, W, C] (uint8 or float),
    keys [n, 2] from `example_keys` -> two float32 [n, S, S, C] batches."""
    keys1, keys2 = _view_keys(keys)
    return (jax.vmap(view, in_axes=(0, 0, None))(images, keys1, specs[0]),
            jax.vmap(view, in_axes=(0, 0, None))(images, keys2, specs[1]))


def colour_two_views(crops1: Array, crops2: Array, keys: Array,
                     specs: tuple[ViewSpec, ViewSpec]) -> tuple[Array, Array]:
    """The colour ops of both views on crops the host already cut and flipped."""
    keys1, keys2 = _view_keys(keys)
    colour = jax.vmap(colour_ops, in_axes=(0, 0, None))
    return colour(crops1, keys1, specs[0]), colour(crops2, keys2, specs[1])
