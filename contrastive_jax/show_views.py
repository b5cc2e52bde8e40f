"""Look at what the model sees: a PNG of an image's evaluation view and its augmented views.

    python -m contrastive_jax.show_views --out=views.png [--image=PATH] [--num_views=8] \
        [--rows=2] [--color_strength=1.0] [--blur=1] [--solarize_prob=0.0]

Each row is the evaluation (centre-crop) view followed by `--num_views` training views drawn by
`augment.simclr_view`; without `--image`, the first demo digit.
"""

from __future__ import annotations

import argparse
from typing import Sequence

import tensorflow as tf

from contrastive_jax import augment, data_sources


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


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
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
    if args.image:
        image = tf.io.decode_image(tf.io.read_file(args.image), channels=3, expand_animations=False)
    else:
        image = _default_image()
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
    tf.io.write_file(args.out, png)
    print(f"wrote {args.out}: {args.rows} rows of the eval view + {args.num_views} views, {size}px")


if __name__ == "__main__":
    main()
