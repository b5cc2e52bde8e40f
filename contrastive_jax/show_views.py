"""Look at what the model sees: a PNG of an image's evaluation view and its augmented views.

    python -m contrastive_jax.show_views --out=views.png [--image=PATH] [--num_views=8] \
        [--rows=2] [--color_strength=1.0] [--blur=1] [--solarize_prob=0.0]

Each row is the evaluation (centre-crop) view followed by `--num_views` training views drawn by
`augment.simclr_view`; without `--image`, the first demo digit.
"""

from __future__ import annotations

import os
from typing import Sequence

import tensorflow as tf

from contrastive_jax import cli, files
from contrastive_jax.augment import host as augment
from contrastive_jax.data import sources as data_sources


def _grid_row(images: Sequence[tf.Tensor], scale: int, gap: int = 2) -> tf.Tensor:
    size = int(images[0].shape[0]) * scale
    cells = [tf.image.resize(im, [size, size], method="nearest") for im in images]
    sep = tf.ones([size, gap, 3])
    parts = [sep]
    for cell in cells:
        parts += [cell, sep]
    row = tf.concat(parts, axis=1)
    border = tf.ones([gap, row.shape[1], 3])
    return tf.concat([border, row, border], axis=0)


def _default_image() -> tf.Tensor:
    images, _ = data_sources.demo_arrays("train")
    return tf.constant(images[0])


def _read_image(path: str) -> tf.Tensor:
    """The RGB image in `path`; a missing or undecodable file is a ValueError naming it."""
    if not os.path.isfile(path):
        raise ValueError(f"cannot read --image={path}: no such file")
    try:
        return tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    except tf.errors.OpError as error:
        raise ValueError(f"cannot read --image={path}: {error.message}") from error


def _check(args) -> None:
    """Refuses arguments outside their range, naming the flag."""
    for name in ("num_views", "rows"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.image_size is not None and args.image_size < 1:
        raise ValueError(f"--image_size must be >= 1, got {args.image_size}")
    if not 0 <= args.solarize_prob <= 1:
        raise ValueError(f"--solarize_prob must be in [0, 1], got {args.solarize_prob}")
    if args.color_strength < 0:
        raise ValueError(f"--color_strength must be >= 0, got {args.color_strength}")


def views_png(image: tf.Tensor, args) -> tuple[bytes, int]:
    """The PNG of `args.rows` rows (the eval view, then `args.num_views` training views) and
    the views' side."""
    size = args.image_size or int(min(image.shape[0], image.shape[1]))
    scale = max(1, 128 // size)
    rows = []
    for r in range(args.rows):
        cells = [augment.center_crop(image, size)]
        for i in range(args.num_views):
            seed = augment.example_seed(args.seed, r, i)
            cells.append(augment.simclr_view(image, seed, image_size=size,
                                             color_strength=args.color_strength,
                                             blur=bool(args.blur),
                                             solarize_prob=args.solarize_prob))
        rows.append(_grid_row(cells, scale))
    grid = tf.concat(rows, axis=0)
    png = tf.io.encode_png(tf.image.convert_image_dtype(grid, tf.uint8, saturate=True))
    return png.numpy(), size


def main(argv: Sequence[str] | None = None) -> None:
    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="views.png")
    parser.add_argument("--image", default=None, help="JPEG/PNG file (default: first demo digit)")
    parser.add_argument("--num_views", type=int, default=8)
    parser.add_argument("--rows", type=int, default=2)
    parser.add_argument("--image_size", type=int, default=None, help="default: the image's side")
    parser.add_argument("--color_strength", type=float, default=1.0)
    parser.add_argument("--blur", type=int, default=1, help="1 to blur (p=0.5), 0 for off")
    parser.add_argument("--solarize_prob", type=float, default=0.0)
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
