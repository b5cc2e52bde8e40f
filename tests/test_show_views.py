"""`python -m contrastive_jax.show_views`: the PNG grid, drawn by the path training uses."""

import numpy as np
import pytest
import tensorflow as tf

from contrastive_jax import config_defaults, config_presets, show_views
from contrastive_jax.augment import spec, tf_ops

from augment import reference_views


def _random_image(h=40, w=30, seed=0):
    rng = np.random.default_rng(seed)
    return tf.constant(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8))


@pytest.mark.parametrize("flags", [[], ["--augment_on=device"]], ids=["host", "device"])
def test_show_writes_png_grid(tmp_path, flags):
    source = tmp_path / "img.jpg"
    tf.io.write_file(str(source), tf.io.encode_jpeg(_random_image(32, 32)))
    out = tmp_path / "views.png"
    show_views.main([f"--out={out}", f"--image={source}", "--num_views=3", "--rows=1", *flags])
    grid = tf.io.decode_png(tf.io.read_file(str(out))).numpy()
    scale = 128 // 32
    assert grid.shape == (32 * scale + 4, 4 * 32 * scale + 5 * 2, 3)


def test_host_views_are_the_training_views_of_examples_0_1_and_so_on():
    """Row `epoch` holds view 1 and view 2 of example 0, then of example 1, ...: the per-example
    reference's views of those examples' seeds (BYOL's asymmetric views, brightness added)."""
    data = config_presets.byol_views(config_defaults.base("byol")).data
    data.image_size = 16
    data.brightness_mode = "add"
    image = _random_image(24, 20).numpy()
    views = show_views.training_views(data, image, seed=3, epoch=1, num=3)
    specs = spec.view_specs(data)
    expected = [view.numpy() for index in range(2)
                for view in reference_views.two_views(image, tf_ops.example_seed(3, 1, index),
                                                      specs)][:3]
    assert len(views) == 3
    for got, want in zip(views, expected):
        np.testing.assert_allclose(got, want, atol=1e-5)
