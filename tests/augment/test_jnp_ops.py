"""Device augmentation (augment.jnp_ops) against the tf side: each op equals its tf.image
counterpart for the same parameters (brightness in either mode), the random draws follow the
per-example reference's distributions, and views are a pure function of (seed, epoch, index)."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from contrastive_jax.augment import jnp_ops, tf_ops

from augment import reference_views


def _image(h=24, w=20, seed=0):
    image = np.random.default_rng(seed).uniform(0, 1, (h, w, 3)).astype(np.float32)
    image[0, :3] = [[0.5, 0.5, 0.5], [0.0, 0.0, 0.0], [1.0, 0.2, 1.0]]  # Gray, black, magenta.
    return image


def _close(a, b, atol=2e-6):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=atol)


@pytest.mark.parametrize("factor", [0.2, 1.0, 1.7])
def test_colour_ops_equal_tf_image(factor):
    image = _image()
    _close(jnp_ops.adjust_contrast(image, factor), tf.image.adjust_contrast(image, factor))
    _close(jnp_ops.adjust_saturation(image, factor), tf.image.adjust_saturation(image, factor))
    _close(jnp_ops.adjust_hue(image, factor / 10 - 0.1),
           tf.image.adjust_hue(image, factor / 10 - 0.1))
    _close(jnp_ops.rgb_to_hsv(image), tf.image.rgb_to_hsv(image))
    _close(jnp_ops.hsv_to_rgb(jnp_ops.rgb_to_hsv(image)), image)


def test_grayscale_blur_and_solarize_equal_the_tf_path():
    image = _image()
    _close(jnp_ops.to_grayscale(image), tf_ops.to_grayscale(image))
    _close(jnp_ops.solarize(image), tf_ops.solarize(image))
    for sigma, size in [(0.3, 3), (1.3, 5), (2.0, 7)]:
        _close(jnp_ops.gaussian_blur(image, sigma, size), tf_ops.gaussian_blur(image, sigma, size))


@pytest.mark.parametrize("box", [(0, 0, 24, 20), (3, 2, 10, 7), (5, 1, 19, 18), (7, 9, 1, 1)])
@pytest.mark.parametrize("size", [32, 16])
def test_resized_crop_equals_tf_crop_then_bicubic_resize(box, size):
    image = _image()
    y, x, h, w = box
    expected = tf.clip_by_value(
        tf.image.resize(image[y:y + h, x:x + w], [size, size], method="bicubic"), 0.0, 1.0)
    _close(jnp_ops.resized_crop(jnp.asarray(image), jnp.asarray(box), size), expected, atol=1e-5)


@pytest.mark.parametrize("brightness_mode", ["multiply", "add"])
def test_jitter_in_every_order_equals_tf_ops_applied_in_that_order(brightness_mode):
    image = _image(12, 12)
    params = np.array([1.3, 0.6, 1.8, 0.07], np.float32)
    brightness = {"multiply": lambda x: x * params[0],
                  "add": lambda x: tf.image.adjust_brightness(x, params[0] - 1.0)}
    tf_image_ops = [brightness[brightness_mode], lambda x: tf.image.adjust_contrast(x, params[1]),
                    lambda x: tf.image.adjust_saturation(x, params[2]),
                    lambda x: tf.image.adjust_hue(x, params[3])]
    jitter = jax.jit(lambda x, p, o: jnp_ops.apply_jitter(x, p, o,
                                                          brightness_mode=brightness_mode))
    for order in itertools.permutations(range(4)):
        expected = tf.constant(image)
        for op in order:
            expected = tf.clip_by_value(tf_image_ops[op](expected), 0.0, 1.0)
        _close(jitter(image, params, jnp.asarray(order)), expected, atol=1e-5)


def test_brightness_add_is_x_plus_delta_and_multiply_is_x_times_factor():
    """On a constant image, from the same factor f: c + (f - 1) and c * f, alone and as the
    jitter's brightness (its other ops leave a gray image as it is)."""
    c = 0.5
    image = jnp.full((5, 5, 3), c)
    for factor in (0.6, 1.0, 1.35):
        f = jnp.float32(factor)
        _close(jnp_ops.adjust_brightness(image, f, "add"), np.full((5, 5, 3), c + f - 1.0))
        _close(jnp_ops.adjust_brightness(image, f, "multiply"), np.full((5, 5, 3), c * f))
        params = jnp.asarray([factor, 1.0, 1.0, 0.0], jnp.float32)
        out = jnp_ops.apply_jitter(image, params, jnp.arange(4), brightness_mode="add")
        _close(out, np.full((5, 5, 3), c + f - 1.0), atol=1e-6)


def test_jitter_draws_every_order_and_factors_in_range():
    keys = jax.random.split(jax.random.PRNGKey(0), 2000)
    params, orders = jax.vmap(lambda k: jnp_ops.draw_jitter(k, 0.5))(keys)
    assert len({tuple(o) for o in np.asarray(orders)}) == 24
    params = np.asarray(params)
    for column, (low, high) in enumerate([(0.6, 1.4), (0.6, 1.4), (0.6, 1.4), (-0.1, 0.1)]):
        assert low <= params[:, column].min() and params[:, column].max() <= high
        assert abs(params[:, column].mean() - (low + high) / 2) < 0.03 * (high - low)


def _tf_boxes(num, height, width, area_range):
    sample = tf.function(lambda s: tf_ops.sample_crop_box(s, height, width, area_range))
    return np.stack([sample(tf.constant([k, 7], tf.int64)).numpy() for k in range(num)])


@pytest.mark.parametrize("height,width,area_range", [(32, 32, (0.08, 1.0)), (96, 128, (0.3, 0.5)),
                                                     (40, 160, (0.08, 1.0))])
def test_crop_boxes_follow_the_tf_distribution(height, width, area_range):
    num = 1000
    keys = jax.random.split(jax.random.PRNGKey(1), num)
    ours = np.asarray(jax.vmap(
        lambda k: jnp_ops.sample_crop_box(k, height, width, area_range))(keys))
    theirs = _tf_boxes(num, height, width, area_range)
    for boxes in (ours, theirs):
        y, x, h, w = boxes.T
        assert np.all((y >= 0) & (x >= 0) & (y + h <= height) & (x + w <= width) & (h >= 1))

    def stats(boxes):
        y, x, h, w = boxes.T.astype(np.float64)
        area = h * w / (height * width)
        return np.array([area.mean(), np.median(area), np.log(w / h).mean(),
                         ((y + h / 2) / height).mean(), ((x + w / 2) / width).mean()])

    # Sampling error of a mean of 1,000 draws is below 0.02 for each of these statistics.
    np.testing.assert_allclose(stats(ours), stats(theirs), atol=0.04)


def _is_gray(views):
    return np.all(np.abs(views[..., 0] - views[..., 1]) < 1e-6, axis=(1, 2)) & np.all(
        np.abs(views[..., 1] - views[..., 2]) < 1e-6, axis=(1, 2))


@pytest.mark.parametrize("brightness_mode,color_strength", [("multiply", 1.0), ("add", 0.5)],
                         ids=["multiply", "add-byol"])
def test_whole_views_match_the_tf_path_in_distribution(brightness_mode, color_strength):
    num, size = 300, 16
    images = np.random.default_rng(2).integers(0, 256, (num, 20, 20, 3), np.uint8)
    spec = reference_views.spec(size, color_strength=color_strength, blur=True,
                                solarize_prob=0.2, brightness_mode=brightness_mode)
    view_fn = tf.function(lambda image, seed: reference_views.simclr_view(image, seed, spec))
    theirs = np.stack([view_fn(images[i], tf_ops.example_seed(0, 0, i)).numpy()
                       for i in range(num)])
    keys = jnp_ops.example_keys(0, np.zeros(num), np.arange(num))
    ours = np.asarray(jax.jit(jax.vmap(lambda x, k: jnp_ops.view(x, k, spec)))(images, keys))
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
    assert ours.min() >= 0 and ours.max() <= 1
    # Grayscale views: p = 0.2 (binomial std over 300 views: 0.023).
    assert abs(_is_gray(ours).mean() - _is_gray(theirs).mean()) < 0.1
    assert abs(_is_gray(ours).mean() - 0.2) < 0.08
    hist = lambda v: np.histogram(v, bins=20, range=(0, 1))[0] / v.size  # noqa: E731
    assert 0.5 * np.abs(hist(ours) - hist(theirs)).sum() < 0.05  # Total variation distance.
    for moment in (np.mean, np.std):
        per_view = lambda v: moment(v.reshape(num, -1), axis=1)  # noqa: E731
        assert abs(per_view(ours).mean() - per_view(theirs).mean()) < 0.02
        assert abs(per_view(ours).std() - per_view(theirs).std()) < 0.02


def test_flip_and_probabilities_of_applied_ops():
    num = 2000
    keys = jax.random.split(jax.random.PRNGKey(3), num)
    image = jnp.asarray(_image(8, 8))
    flipped = jax.vmap(lambda k: jnp_ops.random_flip(image, k))(keys)
    rate = np.mean(np.all(np.asarray(flipped) == np.asarray(image[:, ::-1]), axis=(1, 2, 3)))
    assert abs(rate - 0.5) < 0.05
    applied = jax.vmap(lambda k: jnp_ops.random_apply(lambda x: x + 1, 0.3, k, image))(keys)
    assert abs(np.mean(np.asarray(applied)[:, 0, 0, 0] > 1) - 0.3) < 0.05


def test_views_are_a_pure_function_of_seed_epoch_and_index():
    images = np.random.default_rng(4).integers(0, 256, (6, 20, 20, 3), np.uint8)
    specs = (reference_views.spec(16, color_strength=0.5, blur=False),
             reference_views.spec(16, color_strength=0.5, blur=True, solarize_prob=0.2))
    views = jax.jit(lambda x, k: jnp_ops.two_views(x, k, specs))
    index = np.arange(6)
    a1, a2 = views(images, jnp_ops.example_keys(5, np.full(6, 2), index))
    b1, b2 = views(images, jnp_ops.example_keys(5, np.full(6, 2), index))
    _close(a1, b1, atol=0)
    _close(a2, b2, atol=0)
    assert np.abs(np.asarray(a1) - np.asarray(a2)).mean() > 1e-3
    for seed, epoch in [(6, 2), (5, 3)]:
        c1, _ = views(images, jnp_ops.example_keys(seed, np.full(6, epoch), index))
        assert np.all(np.abs(np.asarray(a1) - np.asarray(c1)).mean(axis=(1, 2, 3)) > 1e-3)
    keys = {tuple(k) for k in np.asarray(jnp_ops.example_keys(0, np.repeat(np.arange(3), 50),
                                                         np.tile(np.arange(50), 3)))}
    assert len(keys) == 150


def test_colour_only_views_keep_the_host_crop_geometry():
    crops = np.random.default_rng(5).integers(0, 256, (4, 16, 16, 3), np.uint8)
    spec = reference_views.spec(16, color_strength=0.0, grayscale_prob=0.0, blur=False)
    keys = jnp_ops.example_keys(0, np.zeros(4), np.arange(4))
    v1, v2 = jnp_ops.colour_two_views(crops, crops, keys, (spec, spec))
    _close(v1, crops / 255.0, atol=1e-6)
    _close(v2, crops / 255.0, atol=1e-6)
    assert math.isclose(float(jnp_ops.to_float(jnp.uint8(255))), 1.0)
