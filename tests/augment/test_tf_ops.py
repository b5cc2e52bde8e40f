"""Tests of contrastive_jax.augment.tf_ops (seeds, crop statistics, the per-image ops) and of the
per-example reference views built on them (tests/augment/reference_views.py): shapes,
determinism, what each op does."""

import numpy as np
import pytest
import tensorflow as tf

from contrastive_jax.augment import tf_ops

from augment import reference_views


def _random_image(h=40, w=30, seed=0):
    rng = np.random.default_rng(seed)
    return tf.constant(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8))


def _random_float_image(h=24, w=24, seed=0):
    rng = np.random.default_rng(seed)
    return tf.constant(rng.uniform(0.05, 0.95, size=(h, w, 3)).astype(np.float32))


@pytest.mark.parametrize("blur,solarize", [(False, 0.0), (True, 0.5)])
def test_view_shape_dtype_and_range(blur, solarize):
    view = reference_views.simclr_view(_random_image(), tf_ops.example_seed(0, 0, 3),
                                       reference_views.spec(24, blur=blur,
                                                            solarize_prob=solarize))
    assert view.shape == (24, 24, 3)
    assert view.dtype == tf.float32
    values = view.numpy()
    assert values.min() >= 0.0 and values.max() <= 1.0
    assert values.std() > 0.0  # Not a constant image.


def test_same_seed_same_views_and_different_seeds_differ():
    image = _random_image()
    specs = reference_views.specs(32, color_strength=0.5, blur=False)
    a1, a2 = reference_views.two_views(image, tf_ops.example_seed(7, 2, 11), specs)
    b1, b2 = reference_views.two_views(image, tf_ops.example_seed(7, 2, 11), specs)
    np.testing.assert_array_equal(a1.numpy(), b1.numpy())
    np.testing.assert_array_equal(a2.numpy(), b2.numpy())
    assert np.abs(a1.numpy() - a2.numpy()).mean() > 1e-3  # The two views of one example differ.
    for seed, epoch, index in [(8, 2, 11), (7, 3, 11), (7, 2, 12)]:
        c1, _ = reference_views.two_views(image, tf_ops.example_seed(seed, epoch, index), specs)
        assert np.abs(a1.numpy() - c1.numpy()).mean() > 1e-3, (seed, epoch, index)


def test_example_seeds_are_distinct():
    triples = [(s, e, i) for s in range(3) for e in range(3) for i in range(20)]
    seeds = {tuple(tf_ops.example_seed(*t).numpy().tolist()) for t in triples}
    assert len(seeds) == len(triples)


def _crop_boxes(num, height, width, area_range, aspect_range=(3 / 4, 4 / 3)):
    sample = tf.function(lambda s: tf_ops.sample_crop_box(s, height, width, area_range,
                                                          aspect_range))
    boxes = np.stack([sample(tf.constant([k, 99], tf.int64)).numpy() for k in range(num)])
    return boxes  # [num, 4] = y, x, h, w


@pytest.mark.parametrize("area_range", [(0.08, 1.0), (0.3, 0.5)])
def test_crop_area_and_aspect_within_range(area_range):
    height, width = 96, 128
    boxes = _crop_boxes(400, height, width, area_range)
    y, x, h, w = boxes.T
    assert (y >= 0).all() and (x >= 0).all()
    assert (y + h <= height).all() and (x + w <= width).all()
    area = h * w / (height * width)
    # Rounding the sides to whole pixels moves the area by at most ~2 pixels of side.
    slack = 2 * (h + w + 1) / (height * width)
    assert (area >= area_range[0] - slack).all() and (area <= area_range[1] + slack).all()
    ratio = w / h
    assert (ratio > 3 / 4 * 0.95).all() and (ratio < 4 / 3 * 1.05).all()
    # Area is (nearly) uniform: most candidates fit in a 96x128 image, so the mean is close to
    # the middle of the range and the spread covers most of it.
    lo, hi = area_range
    assert abs(area.mean() - (lo + hi) / 2) < 0.1 * (hi - lo) + 0.03
    assert area.min() < lo + 0.1 * (hi - lo) and area.max() > hi - 0.15 * (hi - lo)
    assert len({(a, b) for a, b in zip(y, x)}) > 50  # Offsets vary.


def test_full_area_square_crop_is_whole_image():
    image = _random_float_image(24, 24)
    out = tf_ops.random_resized_crop(image, tf.constant([3, 4], tf.int64), 24,
                                     area_range=(1.0, 1.0), aspect_range=(1.0, 1.0))
    np.testing.assert_allclose(out.numpy(), image.numpy(), atol=1e-5)


def test_crop_reads_the_sampled_window():
    # Pixel (r, c) encodes its own coordinates; the crop's corner pixel reveals where it was cut.
    height, width = 50, 60
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    coords = np.stack([rows / 100.0, cols / 100.0, np.zeros_like(rows, float)], -1)
    seed = tf.constant([5, 6], tf.int64)
    y, x, h, w = tf_ops.sample_crop_box(seed, height, width).numpy()
    out = tf_ops.random_resized_crop(tf.constant(coords, tf.float32), seed, image_size=h,
                                     aspect_range=(3 / 4, 4 / 3)).numpy()
    assert out.shape[:2] == (h, h)
    np.testing.assert_allclose(out[0, 0, :2] * 100, [y, x], atol=0.6)


def test_flip_is_mirror_or_identity_about_half_the_time():
    image = _random_float_image()
    flipped = 0
    for k in range(40):
        out = tf_ops.random_flip(image, tf.constant([k, 1], tf.int64)).numpy()
        if np.array_equal(out, image.numpy()[:, ::-1]):
            flipped += 1
        else:
            np.testing.assert_array_equal(out, image.numpy())
    assert 8 <= flipped <= 32


def test_color_jitter_zero_strength_is_identity():
    image = _random_float_image()
    for k in range(5):
        out = reference_views.color_jitter(image, tf.constant([k, 2], tf.int64), 0.0, "multiply")
        np.testing.assert_allclose(out.numpy(), image.numpy(), atol=2e-5)
    changed = reference_views.color_jitter(image, tf.constant([0, 2], tf.int64), 1.0, "multiply")
    assert np.abs(changed.numpy() - image.numpy()).mean() > 1e-2


@pytest.mark.parametrize("mode", ["multiply", "add"])
def test_reference_jitter_brightness_on_a_gray_image(mode):
    """Contrast, saturation and hue leave a gray image as it is, so the jitter gives c * f or
    c + (f - 1) for the brightness factor f its seed draws (strength 0.5: f in [0.6, 1.4])."""
    c = 0.45
    image = tf.fill([6, 6, 3], c)
    for k in range(4):
        seed = tf.constant([k, 9], tf.int64)
        factor = tf.random.stateless_uniform(
            [], tf.random.experimental.stateless_split(seed, 5)[0], 0.6, 1.4).numpy()
        out = reference_views.color_jitter(image, seed, 0.5, mode).numpy()
        expected = c * factor if mode == "multiply" else c + factor - 1.0
        np.testing.assert_allclose(out, np.full_like(out, expected), atol=1e-6)


def test_zero_strength_view_keeps_colours():
    # With no jitter, no grayscale and a full-image crop, a view is the image or its mirror.
    image = _random_float_image()
    view = reference_views.simclr_view(image, tf.constant([1, 2], tf.int64), reference_views.spec(
        24, color_strength=0.0, grayscale_prob=0.0, blur=False,
        crop_area_range=(1.0, 1.0))).numpy()
    ok = [np.allclose(view, image.numpy(), atol=1e-5),
          np.allclose(view, image.numpy()[:, ::-1], atol=1e-5)]
    assert any(ok)


def test_grayscale_has_equal_channels_and_luma_values():
    image = _random_float_image()
    gray = tf_ops.to_grayscale(image).numpy()
    np.testing.assert_array_equal(gray[..., 0], gray[..., 1])
    np.testing.assert_array_equal(gray[..., 0], gray[..., 2])
    luma = image.numpy() @ np.array([0.299, 0.587, 0.114], np.float32)
    np.testing.assert_allclose(gray[..., 0], luma, atol=1e-3)
    view = reference_views.simclr_view(image, tf.constant([0, 0], tf.int64),
                                       reference_views.spec(16, grayscale_prob=1.0,
                                                            blur=False)).numpy()
    np.testing.assert_allclose(view[..., 0], view[..., 1], atol=1e-6)
    np.testing.assert_allclose(view[..., 0], view[..., 2], atol=1e-6)


def test_grayscale_probability():
    image = _random_float_image(8, 8)
    gray = 0
    for k in range(100):
        view = reference_views.simclr_view(image, tf.constant([k, 5], tf.int64),
                                           reference_views.spec(8, color_strength=0.0,
                                                                blur=False)).numpy()
        gray += np.allclose(view[..., 0], view[..., 1]) and np.allclose(view[..., 1], view[..., 2])
    assert 8 <= gray <= 35  # p = 0.2 over 100 draws.


def test_solarize_matches_reference():
    image = _random_float_image()
    ref = np.where(image.numpy() < 0.5, image.numpy(), 1.0 - image.numpy())
    np.testing.assert_allclose(tf_ops.solarize(image).numpy(), ref)
    always = reference_views.simclr_view(image, tf.constant([3, 3], tf.int64),
                                         reference_views.spec(
                                             24, color_strength=0.0, grayscale_prob=0.0,
                                             blur=False, crop_area_range=(1.0, 1.0),
                                             solarize_prob=1.0)).numpy()
    assert always.max() <= 0.5 + 1e-6  # Every value above the threshold was inverted.


def test_gaussian_blur_keeps_constants_and_smooths_noise():
    constant = tf.fill([20, 20, 3], 0.3)
    np.testing.assert_allclose(tf_ops.gaussian_blur(constant, 1.5, 5).numpy(), 0.3, atol=1e-6)
    noise = _random_float_image(32, 32)
    blurred = tf_ops.gaussian_blur(noise, 2.0, 7).numpy()
    assert blurred.shape == (32, 32, 3)
    assert blurred.std() < 0.6 * noise.numpy().std()
    np.testing.assert_allclose(blurred.mean(), noise.numpy().mean(), atol=0.02)


def test_center_crop_is_deterministic_central_square():
    image = _random_image(40, 30)
    out = tf_ops.center_crop(image, 30).numpy()
    expected = image.numpy()[5:35].astype(np.float32) / 255.0
    np.testing.assert_allclose(out, expected, atol=1e-5)
    np.testing.assert_array_equal(out, tf_ops.center_crop(image, 30).numpy())
    assert tf_ops.center_crop(image, 16).shape == (16, 16, 3)


def test_byol_pairs_apply_per_view():
    image = _random_float_image()
    v1, v2 = reference_views.two_views(image, tf.constant([4, 4], tf.int64), reference_views.specs(
        24, color_strength=0.0, grayscale_prob=0.0, blur=False, crop_area_range=(1.0, 1.0),
        solarize_prob=(0.0, 1.0)))
    assert v1.numpy().max() > 0.9  # Not solarised.
    assert v2.numpy().max() <= 0.5 + 1e-6  # Solarised.
