"""How a training view is drawn: one `ViewSpec` per view, read from `config.data` in one place.

The tf side (`tf_batch`, which the host pipeline runs), the jnp side (`jnp_ops`, for
`data.augment_on = "device"`), SwAV's small crops and the tests' per-example reference all take
these specs, so the paths cannot read the config differently. The fields `config.data` sets
have no default here (theirs live in config_defaults); the recipe's constants (Chen et al. 2020,
appendix A: aspect ratios 3/4-4/3, jitter p = 0.8, blur sigma 0.1-2 with a kernel 10% of the
side) have their values here. Neither TensorFlow nor JAX is needed to build a spec.
"""

from __future__ import annotations

import dataclasses

# How the brightness factor f (uniform in [max(0, 1 - b), 1 + b]) changes an image: "multiply"
# gives x * f (SimCLR's reference code by default, torchvision's ColorJitter); "add" gives
# x + (f - 1), the additive delta of tf.image.random_brightness (BYOL's reference code, and
# SimCLR's with its "simclrv1" option), from the same draw.
BRIGHTNESS_MODES = ("multiply", "add")
AUGMENT_ON = ("host", "device")  # data.augment_on: views drawn by tf.data, or on the accelerators.

# SimCLR's colour jitter at strength 1 (brightness, contrast, saturation, hue); strength s
# scales all four.
JITTER_AT_STRENGTH_1 = (0.8, 0.8, 0.8, 0.2)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ViewSpec:
    """How one view is drawn: crop, flip, colour jitter, grayscale, blur, solarisation."""

    image_size: int
    color_strength: float
    brightness_mode: str
    blur: bool
    blur_prob: float
    solarize_prob: float
    grayscale_prob: float
    crop_area_range: tuple[float, float]
    aspect_range: tuple[float, float] = (3 / 4, 4 / 3)
    jitter_prob: float = 0.8
    blur_sigma_range: tuple[float, float] = (0.1, 2.0)

    def __post_init__(self):
        if self.brightness_mode not in BRIGHTNESS_MODES:
            raise ValueError(f"brightness_mode must be one of {BRIGHTNESS_MODES}, got "
                             f"{self.brightness_mode!r}")

    @property
    def blur_kernel_size(self) -> int:
        """The Gaussian blur's kernel side: 10% of the image side, at least 3."""
        return max(3, self.image_size // 10)


@dataclasses.dataclass(frozen=True)
class SmallCrops:
    """SwAV's multi-crop: `num` extra views of every example, each drawn as `spec` says."""

    num: int
    spec: ViewSpec


def jitter_ranges(strength: float) -> list[tuple[float, float]]:
    """(low, high) of the brightness, contrast and saturation factors and of the hue delta at
    colour strength `strength`: factors in [max(0, 1 - a), 1 + a], the delta in [-h, h]."""
    brightness, contrast, saturation, hue = (strength * v for v in JITTER_AT_STRENGTH_1)
    return [(max(0.0, 1 - brightness), 1 + brightness), (max(0.0, 1 - contrast), 1 + contrast),
            (max(0.0, 1 - saturation), 1 + saturation), (-hue, hue)]


def _of_view(value, view: int) -> float:
    """A probability that applies to both views, or a pair (v1, v2) with one per view (BYOL's
    asymmetric views); a saved config.json holds the pair as a list."""
    return float(value[view]) if isinstance(value, (tuple, list)) else float(value)


def view_specs(data_config) -> tuple[ViewSpec, ViewSpec]:
    """The two views' specs from `config.data`."""
    return tuple(ViewSpec(
        image_size=int(data_config.image_size),
        color_strength=float(data_config.color_strength),
        brightness_mode=str(data_config.brightness_mode),
        blur=bool(data_config.blur),
        blur_prob=_of_view(data_config.blur_prob, view),
        solarize_prob=_of_view(data_config.solarize_prob, view),
        grayscale_prob=float(data_config.grayscale_prob),
        crop_area_range=(float(data_config.crop_area_min), 1.0),
    ) for view in range(2))


def small_crops(data_config) -> SmallCrops | None:
    """The small crops `data.small_crops` asks for, or None: the first view's spec at
    `data.small_crop_size` pixels, cropped from [small_crop_area_min, small_crop_area_max] of the
    image (SwAV's validation refuses per-view probabilities with small crops)."""
    num = int(data_config.get("small_crops", 0))  # A SwAV field: other methods have none.
    if num <= 0:
        return None
    return SmallCrops(num, dataclasses.replace(
        view_specs(data_config)[0], image_size=int(data_config.small_crop_size),
        crop_area_range=(float(data_config.small_crop_area_min),
                         float(data_config.small_crop_area_max))))
