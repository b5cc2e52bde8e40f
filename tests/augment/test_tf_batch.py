"""Tests of the batched tf path (augment.philox, augment.tf_batch) against the per-example ops
it stands in for.

The batched draws must give bit for bit what tf.random's stateless ops give for each seed; the
batched views must equal the per-example reference's `two_views` of each example to float
rounding, with either brightness mode; each batched colour op must equal its tf.image
counterpart applied image by image.
"""

import numpy as np
import pytest
import tensorflow as tf

from contrastive_jax.augment import philox, tf_batch, tf_ops

from augment import reference_views

ATOL = 1e-5  # Float rounding: the batched ops reorder a few float32 sums and products.


def _seeds(shape, seed=0):
    rng = np.random.default_rng(seed)
    return tf.constant(rng.integers(-2**63, 2**63, size=(*shape, 2), dtype=np.int64))


def _per_seed(fn, seeds):
    """fn(seed) for every seed [..., 2], stacked back into the seeds' leading shape."""
    flat = tf.reshape(seeds, [-1, 2])
    out = np.stack([fn(flat[i]).numpy() for i in range(flat.shape[0])])
    return out.reshape(*seeds.shape[:-1], *out.shape[1:])


@pytest.mark.parametrize("size", [1, 2, 4, 10])
def test_batched_uniform_equals_stateless_uniform(size):
    seeds = _seeds([3, 4], seed=size)
    expected = _per_seed(lambda s: tf.random.stateless_uniform([size], s), seeds)
    np.testing.assert_array_equal(philox.batched_uniform(seeds, size).numpy(), expected)


@pytest.mark.parametrize("num", [2, 5, 7])
def test_batched_split_equals_stateless_split(num):
    seeds = _seeds([2, 5], seed=num)
    expected = _per_seed(lambda s: tf.random.experimental.stateless_split(s, num), seeds)
    np.testing.assert_array_equal(philox.batched_split(seeds, num).numpy(), expected)


def test_batched_fold_in_and_example_seed_equal_per_example():
    seeds = _seeds([12])
    data = tf.constant(np.arange(12) * 7919 - 30, tf.int64)
    expected = np.stack([tf.random.experimental.stateless_fold_in(seeds[i], data[i]).numpy()
                         for i in range(12)])
    np.testing.assert_array_equal(philox.batched_fold_in(seeds, data).numpy(), expected)
    epoch = tf.constant([0, 0, 1, 5, 2**40], tf.int64)
    index = tf.constant([0, 1, 1, 49_999, 3], tf.int64)
    expected = np.stack([tf_ops.example_seed(3, epoch[i], index[i]).numpy() for i in range(5)])
    np.testing.assert_array_equal(tf_ops.batched_example_seed(3, epoch, index).numpy(), expected)


@pytest.mark.parametrize("area_range", [(0.08, 1.0), (0.9, 1.0)])
def test_drawn_crop_boxes_equal_sample_crop_box(area_range):
    # Sizes include thin and tiny images, where no candidate fits and the fallback is used.
    view_seeds = _seeds([30])
    draws = tf_batch.draw_views(view_seeds,
                                reference_views.spec(32, crop_area_range=area_range)).crop
    subseeds = philox.batched_split(view_seeds, 7)
    for i, (height, width) in enumerate([(32, 32), (40, 7), (3, 90), (1, 1), (57, 33)] * 6):
        box = tf_ops.crop_box(draws.area_fraction[i], draws.aspect_ratio[i], draws.offset[i],
                              height, width)
        expected = tf_ops.sample_crop_box(subseeds[i, 0], height, width, area_range)
        np.testing.assert_array_equal(box.numpy(), expected.numpy())


def _numpy_crop_box(area_fraction, aspect_ratio, offset, height, width, aspect=(3 / 4, 4 / 3)):
    """torchvision's RandomResizedCrop window from given draws, in float32 numpy."""
    f32 = np.float32
    h, w = f32(height), f32(width)
    area = h * w * area_fraction
    cand_h, cand_w = np.round(np.sqrt(area / aspect_ratio)), np.round(np.sqrt(area * aspect_ratio))
    fits = (cand_h <= h) & (cand_w <= w) & (cand_h >= 1) & (cand_w >= 1)
    if fits.any():
        k = np.argmax(fits)
        crop_h, crop_w = cand_h[k], cand_w[k]
        y = min(np.floor(offset[0] * (h - crop_h + f32(1))), h - crop_h)
        x = min(np.floor(offset[1] * (w - crop_w + f32(1))), w - crop_w)
    else:
        crop_h = np.round(w / f32(aspect[0])) if w / h < f32(aspect[0]) else h
        crop_w = np.round(h * f32(aspect[1])) if w / h > f32(aspect[1]) else w
        y, x = np.floor((h - crop_h) / f32(2)), np.floor((w - crop_w) / f32(2))
    return np.array([y, x, crop_h, crop_w], np.int32)


def test_crop_box_equals_numpy_window():
    draws = tf_batch.draw_views(_seeds([40], seed=3), reference_views.spec(32)).crop
    for i, (height, width) in enumerate([(32, 32), (40, 7), (3, 90), (1, 1), (57, 33)] * 8):
        args = (draws.area_fraction[i], draws.aspect_ratio[i], draws.offset[i])
        expected = _numpy_crop_box(*(a.numpy() for a in args), height, width)
        np.testing.assert_array_equal(tf_ops.crop_box(*args, height, width).numpy(), expected)


def _images(num, rng):
    """Random uint8 images of assorted sizes, plus flat and saturated ones (edge cases of the
    HSV ops: zero chroma, zero value, channels at 0 and 255)."""
    images = [rng.integers(0, 256, size=(int(rng.integers(20, 48)), int(rng.integers(20, 48)), 3),
                           dtype=np.uint8) for _ in range(num - 3)]
    images.append(np.full((30, 30, 3), 128, np.uint8))
    images.append(np.zeros((25, 31, 3), np.uint8))
    images.append((rng.integers(0, 2, size=(28, 28, 3)) * 255).astype(np.uint8))
    return [tf.constant(image) for image in images]


def _batched_two_views(images, seed, epoch, index, specs):
    draws = tf_batch.draw_views(tf_ops.batched_view_seeds(seed, epoch, index), specs)
    crops = [tf_batch.crop_views(image, tf.nest.map_structure(lambda t: t[i], draws.crop),  # noqa
                                 specs[0].image_size, specs[0].aspect_range)
             for i, image in enumerate(images)]
    view1, view2 = (tf.stack(views) for views in zip(*crops))
    return tf_batch.color_two_views(view1, view2, draws.color, specs)


@pytest.mark.parametrize("kwargs", [
    dict(color_strength=0.5, blur=False),
    dict(color_strength=1.0, blur=True),
    dict(color_strength=1.0, blur=True, blur_prob=(1.0, 0.1), solarize_prob=(0.0, 0.2)),
    dict(color_strength=0.5, blur=True, solarize_prob=0.5, crop_area_range=(0.3, 1.0)),
    dict(color_strength=0.5, blur=True, blur_prob=(1.0, 0.1), solarize_prob=(0.0, 0.2),
         brightness_mode="add"),
    dict(color_strength=1.5, blur=False, brightness_mode="add"),
], ids=["s0.5", "s1-blur", "byol-pairs", "s0.5-blur-solarize-area0.3", "byol-add",
        "s1.5-add"])
def test_batched_views_equal_two_views(kwargs):
    rng = np.random.default_rng(len(str(kwargs)))
    images = _images(16, rng)
    epoch = tf.constant(rng.integers(0, 4, size=16), tf.int64)
    index = tf.constant(rng.permutation(1000)[:16], tf.int64)
    specs = reference_views.specs(24, **kwargs)
    batched = _batched_two_views(images, 11, epoch, index, specs)
    for i, image in enumerate(images):
        expected = reference_views.two_views(
            image, tf_ops.example_seed(11, epoch[i], index[i]), specs)
        for v in range(2):
            np.testing.assert_allclose(batched[v][i].numpy(), expected[v].numpy(), atol=ATOL,
                                       err_msg=f"example {i}, view {v + 1}")


def _float_images():
    rng = np.random.default_rng(1)
    images = rng.uniform(0.0, 1.0, size=(6, 9, 11, 3)).astype(np.float32)
    images[1] = 0.4  # Gray: no chroma.
    images[2] = 0.0  # Black: no value.
    images[3] = rng.integers(0, 2, size=(9, 11, 3))  # Pure colours, ties between channels.
    images[4, :, :, 1] = images[4, :, :, 0]  # Two equal channels.
    return tf.constant(images)


@pytest.mark.parametrize("batched,per_image,values", [
    (tf_batch.adjust_contrast_batch, tf.image.adjust_contrast, [0.0, 0.2, 1.0, 1.8, 0.6, 1.3]),
    (tf_batch.adjust_saturation_batch, tf.image.adjust_saturation,
     [0.0, 0.5, 1.0, 2.0, 1.6, 0.2]),
    (tf_batch.adjust_hue_batch, tf.image.adjust_hue, [-0.5, -0.2, 0.0, 0.3, 0.5, 0.17]),
], ids=["contrast", "saturation", "hue"])
def test_batched_adjustments_equal_tf_image(batched, per_image, values):
    images = _float_images()
    out = batched(images, tf.constant(values, tf.float32)).numpy()
    for i, value in enumerate(values):
        np.testing.assert_allclose(out[i], per_image(images[i], value).numpy(), atol=ATOL,
                                   err_msg=f"image {i}, value {value}")


@pytest.mark.parametrize("kernel_size", [3, 7])
def test_batched_blur_equals_gaussian_blur(kernel_size):
    images = _float_images()
    sigmas = [0.1, 0.5, 1.0, 1.5, 2.0, 0.3]
    out = tf_batch.gaussian_blur_batch(images, tf.constant(sigmas), kernel_size).numpy()
    for i, sigma in enumerate(sigmas):
        expected = tf_ops.gaussian_blur(images[i], sigma, kernel_size).numpy()
        np.testing.assert_allclose(out[i], expected, atol=ATOL)


@pytest.mark.parametrize("brightness_mode", ["multiply", "add"])
def test_jitter_keeps_unflagged_images_and_handles_empty_groups(brightness_mode):
    images = _float_images()
    factors = tf.constant([[1.3, 0.7, 1.5, 0.1]] * 6)
    order = tf.constant([[3, 2, 1, 0]] * 6)  # Every image in one group: the others are empty.
    apply = tf.constant([True, False, True, False, False, True])
    out = tf_batch.color_jitter_batch(images, factors, order, apply,
                                      brightness_mode=brightness_mode).numpy()
    brightness = {"multiply": lambda x, f: x * f,
                  "add": lambda x, f: tf.image.adjust_brightness(x, f - 1.0)}[brightness_mode]
    for i in range(6):
        expected = images[i]
        if apply[i]:
            expected = tf.image.adjust_hue(expected, 0.1)
            for adjust, factor in [(tf.image.adjust_saturation, 1.5),
                                   (tf.image.adjust_contrast, 0.7),
                                   (brightness, 1.3)]:
                expected = adjust(tf.clip_by_value(expected, 0.0, 1.0), factor)
            expected = tf.clip_by_value(expected, 0.0, 1.0)
        np.testing.assert_allclose(out[i], expected.numpy(), atol=ATOL, err_msg=f"image {i}")
    none = tf_batch.color_jitter_batch(images, factors, order, tf.zeros([6], tf.bool),
                                       brightness_mode=brightness_mode)
    np.testing.assert_array_equal(none.numpy(), images.numpy())


def test_brightness_add_is_x_plus_delta_and_multiply_is_x_times_factor():
    """On a constant image, "add" gives c + (f - 1) and "multiply" c * f, from the same factor
    f: in the batched op and in the batched jitter (whose other ops leave a gray image as it
    is)."""
    images = tf.fill([3, 5, 5, 3], 0.5)
    factors = tf.constant([0.6, 1.0, 1.35])
    c = 0.5
    np.testing.assert_allclose(
        tf_batch.adjust_brightness_batch(images, factors, "add").numpy()[:, 0, 0, 0],
        c + factors.numpy() - 1.0, atol=1e-7)
    np.testing.assert_allclose(
        tf_batch.adjust_brightness_batch(images, factors, "multiply").numpy()[:, 0, 0, 0],
        c * factors.numpy(), atol=1e-7)
    jitter_factors = tf.stack([factors, tf.ones(3), tf.ones(3), tf.zeros(3)], axis=1)
    order = tf.constant([[0, 1, 2, 3]] * 3)
    added = tf_batch.color_jitter_batch(images, jitter_factors, order, tf.ones([3], tf.bool),
                                        brightness_mode="add").numpy()
    np.testing.assert_allclose(added, np.broadcast_to(
        (c + factors.numpy() - 1.0)[:, None, None, None], added.shape), atol=1e-6)


def test_views_drawn_together_may_differ_only_in_their_probabilities():
    seeds = _seeds([4, 2])
    pair = reference_views.specs(16, blur_prob=(1.0, 0.1), solarize_prob=(0.0, 0.2))
    draws = tf_batch.draw_views(seeds, pair).color
    assert draws.blur.numpy()[:, 0].all()  # p = 1 on view 1.
    assert not draws.solarize.numpy()[:, 0].any()  # p = 0 on view 1.
    mixed = (pair[0], reference_views.spec(16, color_strength=0.5))
    with pytest.raises(ValueError, match="may differ only in"):
        tf_batch.draw_views(seeds, mixed)
