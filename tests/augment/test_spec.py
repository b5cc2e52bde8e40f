"""Tests of contrastive_jax.augment.spec: the view specs every augmentation path reads, built from
`config.data` alone, and the refusal of a brightness mode that does not exist."""

import dataclasses
import json
import os

import ml_collections
import numpy as np
import pytest

from contrastive_jax import config_checks, config_defaults, config_presets, methods
from contrastive_jax.augment import spec

from support import REPO, load_config


@pytest.mark.parametrize("method", sorted(methods.METHODS))
def test_every_method_s_defaults_give_view_specs(method):
    """The schema holds every field the specs read, for every method: nothing falls back to a
    default of its own."""
    data = config_defaults.base(method).data
    first, second = spec.view_specs(data)
    assert first == second
    assert (first.image_size, first.color_strength, first.blur, first.blur_prob,
            first.solarize_prob, first.grayscale_prob, first.brightness_mode) == (
        data.image_size, data.color_strength, data.blur, data.blur_prob, data.solarize_prob,
        data.grayscale_prob, data.brightness_mode)
    assert first.crop_area_range == (data.crop_area_min, 1.0)


def test_byol_views_give_each_view_its_probabilities_also_from_a_saved_config():
    data = config_presets.byol_views(config_defaults.base("byol")).data
    first, second = spec.view_specs(data)
    assert (first.blur_prob, second.blur_prob) == (1.0, 0.1)
    assert (first.solarize_prob, second.solarize_prob) == (0.0, 0.2)
    assert dataclasses.replace(second, blur_prob=1.0, solarize_prob=0.0) == first
    saved = ml_collections.ConfigDict(json.loads(data.to_json()))  # Pairs come back as lists.
    assert spec.view_specs(saved) == (first, second)


def test_small_crops_are_the_first_view_at_their_size_and_area():
    data = config_defaults.base("swav").data
    assert spec.small_crops(data) is None  # small_crops = 0.
    data.small_crops, data.small_crop_size = 6, 96
    small = spec.small_crops(data)
    assert small.num == 6
    assert small.spec == dataclasses.replace(
        spec.view_specs(data)[0], image_size=96,
        crop_area_range=(data.small_crop_area_min, data.small_crop_area_max))
    assert spec.small_crops(config_defaults.base("simclr").data) is None  # No such field.


def test_jitter_ranges_are_simclr_s_scaled_by_the_strength():
    np.testing.assert_allclose(spec.jitter_ranges(0.5),
                               [(0.6, 1.4), (0.6, 1.4), (0.6, 1.4), (-0.1, 0.1)])
    np.testing.assert_allclose(spec.jitter_ranges(1.5)[0], (0.0, 2.2))  # Factors stay >= 0.


def test_an_unknown_brightness_mode_is_refused_by_name():
    config = config_defaults.base()
    config.data.brightness_mode = "mul"
    with pytest.raises(ValueError, match=r"config\.data\.brightness_mode must be one of "
                                         r"\('multiply', 'add'\), got 'mul'"):
        config_checks.check_ranges(config)
    with pytest.raises(ValueError, match="brightness_mode must be one of"):
        spec.view_specs(config.data)
    config.data.brightness_mode = "add"
    config_checks.check_ranges(config)
    assert spec.view_specs(config.data)[0].brightness_mode == "add"


def test_a_blur_probability_outside_0_1_is_refused():
    config = config_defaults.base()
    config.data.blur_prob = 1.5
    with pytest.raises(ValueError, match=r"config\.data\.blur_prob must be >= 0 and <= 1"):
        config_checks.check_ranges(config)


def test_byol_imagenet_adds_the_brightness_delta_as_its_reference():
    """BYOL's reference adds a delta; the configs that follow SimCLR's reference code (its
    default "simclrv2" brightness) or torchvision's keep the factor."""
    assert load_config(os.path.join(REPO, "configs", "byol_imagenet.py")
                       ).data.brightness_mode == "add"
    for name in ("simclr_imagenet.py", "byol_cifar10.py", "moco_v3_vit_small.py"):
        assert load_config(os.path.join(REPO, "configs", name)).data.brightness_mode == "multiply"
