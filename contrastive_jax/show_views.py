"""Look at what the model sees: a PNG of an image's evaluation view and its training views.

    python -m contrastive_jax.show_views --out=views.png [--image=PATH] \
        [--config=configs/NAME.py[:ARG]] [--num_views=8] [--rows=2] [--color_strength=1.0] \
        [--blur=1] [--solarize_prob=0.0] [--brightness_mode=multiply|add] [--augment_on=host]

Each row is the evaluation (centre-crop) view followed by `--num_views` training views, drawn
the way training draws them: by the host pipeline's batched tf.data stages
(`input_pipeline.example_views`), or with `data.augment_on = "device"` by the jnp views the
accelerators make (`jnp_ops.two_views`). Row r shows examples of epoch r, each example's first
and second view side by side (BYOL's views differ). The views are `config.data`'s of `--config`
(default: config_defaults' with blur on), changed by the other flags; without `--image`, the
first demo digit.
"""

from __future__ import annotations

import io
import os
from typing import Sequence

import jax
import ml_collections
import numpy as np
from ml_collections.config_flags import config_flags
from PIL import Image

from contrastive_jax import cli, config_checks, config_defaults, files
from contrastive_jax.augment import jnp_ops, spec
from contrastive_jax.data import input_pipeline, numpy_data, sources


def _grid_row(images: Sequence[np.ndarray], scale: int, gap: int = 2) -> np.ndarray:
    """The images [S, S, 3] side by side, each enlarged `scale` times (nearest), framed by white
    lines `gap` pixels wide."""
    cells = [np.repeat(np.repeat(image, scale, axis=0), scale, axis=1) for image in images]
    side = cells[0].shape[0]
    sep = np.ones([side, gap, 3], np.float32)
    row = np.concatenate([sep] + [part for cell in cells for part in (cell, sep)], axis=1)
    border = np.ones([gap, row.shape[1], 3], np.float32)
    return np.concatenate([border, row, border], axis=0)


def _default_image() -> np.ndarray:
    images, _ = sources.demo_arrays("train")
    return images[0]


def _read_image(path: str) -> np.ndarray:
    """The RGB image in `path`; a missing or undecodable file is a ValueError naming it."""
    if not os.path.isfile(path):
        raise ValueError(f"cannot read --image={path}: no such file")
    try:
        return numpy_data.decode_file(path)
    except sources.DataError as error:
        raise ValueError(f"cannot read --image={path}: {error}") from error


def _check(args) -> None:
    """Refuses arguments outside their range, naming the flag."""
    for name in ("num_views", "rows"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.image_size is not None and args.image_size < 1:
        raise ValueError(f"--image_size must be >= 1, got {args.image_size}")
    if args.solarize_prob is not None and not 0 <= args.solarize_prob <= 1:
        raise ValueError(f"--solarize_prob must be in [0, 1], got {args.solarize_prob}")
    if args.color_strength is not None and args.color_strength < 0:
        raise ValueError(f"--color_strength must be >= 0, got {args.color_strength}")
    for name, choices in (("brightness_mode", spec.BRIGHTNESS_MODES), ("augment_on", spec.AUGMENT_ON)):
        if getattr(args, name) not in (None, *choices):
            raise ValueError(f"--{name} must be one of {choices}, got {getattr(args, name)!r}")


def _replace(data: ml_collections.ConfigDict, key: str, value) -> None:
    """Sets `data[key]`, also where the value's type changes (a per-view pair for one value)."""
    del data[key]
    data[key] = value


def data_config(args, image: np.ndarray) -> ml_collections.ConfigDict:
    """`config.data` of `--config` (or config_defaults' with blur on) with the flags' changes;
    the views' side is `--image_size`, else the config's, else the image's short side."""
    if args.config:
        config = config_flags.ConfigFileFlagParser(name="config").parse(args.config)
        config.unlock()  # The flags below may change a field's type (a per-view pair).
        config_checks.check_ranges(config)
        if config.data.augment_on not in spec.AUGMENT_ON:
            raise ValueError(f"config.data.augment_on must be one of {spec.AUGMENT_ON}, got "
                             f"{config.data.augment_on!r}")
        data = config.data
    else:
        data = config_defaults.base().data
        data.blur = True
        data.image_size = int(min(image.shape[0], image.shape[1]))
    flags = {"color_strength": args.color_strength, "solarize_prob": args.solarize_prob,
             "brightness_mode": args.brightness_mode, "augment_on": args.augment_on,
             "image_size": args.image_size,
             "blur": None if args.blur is None else bool(args.blur)}
    for key, value in flags.items():
        if value is not None:
            _replace(data, key, value)
    return data


def training_views(data: ml_collections.ConfigDict, image: np.ndarray, seed: int, epoch: int,
                   num: int) -> list[np.ndarray]:
    """`num` training views of `image`: the first and second views of examples 0, 1, ... of
    `epoch`, as `data.augment_on`'s path draws them."""
    indices = np.arange((num + 1) // 2)
    epochs = np.full_like(indices, epoch)
    if data.augment_on == "device":
        keys = jnp_ops.example_keys(seed, epochs, indices)
        images = np.broadcast_to(image, (len(indices), *image.shape))
        views = jax.jit(jnp_ops.two_views, static_argnums=2)(images, keys, spec.view_specs(data))
    else:
        batch = input_pipeline.example_views(data, image, seed=seed, epochs=epochs,
                                             indices=indices)
        views = batch["view1"], batch["view2"]
    pairs = np.stack([np.asarray(view) for view in views], axis=1)  # [examples, 2, S, S, 3]
    return list(pairs.reshape(-1, *pairs.shape[2:])[:num])


def eval_view(data: ml_collections.ConfigDict, image: np.ndarray) -> np.ndarray:
    """The evaluation view: the central `eval_crop_fraction` square, resized (bicubic)."""
    height, width = image.shape[:2]
    side = max(int(round(float(data.eval_crop_fraction) * min(height, width))), 1)
    box = np.array([(height - side) // 2, (width - side) // 2, side, side])
    return np.asarray(jnp_ops.resized_crop(jnp_ops.to_float(image), box, int(data.image_size)))


def views_png(image: np.ndarray, args) -> tuple[bytes, int]:
    """The PNG of `args.rows` rows (the eval view, then `args.num_views` training views) and
    the views' side."""
    data = data_config(args, image)
    size = int(data.image_size)
    rows = [_grid_row([eval_view(data, image),
                       *training_views(data, image, args.seed, r, args.num_views)],
                      scale=max(1, 128 // size)) for r in range(args.rows)]
    grid = np.round(np.clip(np.concatenate(rows, axis=0), 0.0, 1.0) * 255).astype(np.uint8)
    png = io.BytesIO()
    Image.fromarray(grid).save(png, format="PNG")
    return png.getvalue(), size


def main(argv: Sequence[str] | None = None) -> None:
    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="views.png")
    parser.add_argument("--image", default=None, help="JPEG/PNG file (default: first demo digit)")
    parser.add_argument("--config", default=None,
                        help="configs/NAME.py[:ARG] whose config.data draws the views")
    parser.add_argument("--num_views", type=int, default=8)
    parser.add_argument("--rows", type=int, default=2)
    parser.add_argument("--image_size", type=int, default=None,
                        help="default: the config's, else the image's side")
    parser.add_argument("--color_strength", type=float, default=None,
                        help="default: the config's, else 1.0")
    parser.add_argument("--blur", type=int, default=None,
                        help="1 to blur (p = data.blur_prob), 0 for off (default: the config's, "
                             "else 1)")
    parser.add_argument("--solarize_prob", type=float, default=None,
                        help="default: the config's, else 0.0")
    parser.add_argument("--brightness_mode", default=None, help="multiply or add (default: the "
                        "config's, else multiply)")
    parser.add_argument("--augment_on", default=None,
                        help="host (tf.data) or device (jnp): default the config's, else host")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    with cli.errors_as_one_line():
        _check(args)
        image = _read_image(args.image) if args.image else _default_image()
        png, size = views_png(image, args)
        with files.atomic_write(args.out, "wb") as f:
            f.write(png)
    print(f"wrote {args.out}: {args.rows} rows of the eval view + {args.num_views} views, {size}px")


if __name__ == "__main__":
    main()
