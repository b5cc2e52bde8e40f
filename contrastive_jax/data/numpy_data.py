"""Data without TensorFlow: image folders decoded once with PIL, for machines without TF.

GPU images often lack TensorFlow. There, `data.augment_on = "device"` on a `folder:` (or
`synthetic`) source still trains and evaluates: the training split is decoded once with PIL into
uint8 arrays and kept on the devices (`device_input`), and the kNN / linear evaluation reads its
split the same way and takes the evaluation view (centre crop, bicubic resize) with the jnp ops
that match tf.image's (`jnp_ops.resized_crop`). The folder layout, the source names and
the hosts' share of a split are defined here, without TensorFlow, for both paths; data_sources
and host_shards build the tf.data side on them.
"""

from __future__ import annotations

import concurrent.futures
import functools
import math
import os
import zlib
from typing import Iterator, NamedTuple

import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


class DataError(ValueError):
    """A data source that cannot be used: missing, empty, unknown, or holding a corrupt file."""


class DatasetInfo(NamedTuple):
    num_train_examples: int
    num_classes: int


@functools.lru_cache(maxsize=1)
def tensorflow_available() -> bool:
    """Whether TensorFlow imports here (GPU images often lack it)."""
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        return False
    return True


def parse_source(source: str) -> tuple[str, str]:
    """'folder:/data' -> ('folder', '/data'), 'demo' -> ('demo', ''); DataError if unknown."""
    kind, _, arg = str(source).partition(":")
    if kind in ("demo", "synthetic") and not arg:
        return kind, ""
    if kind in ("folder", "tfds", "wds", "tfrecord") and arg:
        return kind, arg
    raise DataError(
        f"unknown data source {source!r}: expected 'folder:PATH', 'tfds:NAME[:VERSION]', "
        "'wds:GLOB', 'tfrecord:GLOB', 'demo' or 'synthetic'")


def _list_class_dirs(folder: str) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


@functools.lru_cache(maxsize=16)
def folder_files(root: str, split: str, class_split: str | None = None,
                 ) -> tuple[tuple[str, ...], tuple[int, ...], tuple[str, ...]]:
    """(paths, labels, class names) of root/split/<class>/*, classes sorted by name.

    With `class_split`, label ids come from that split's class folders (so a test split that lacks
    a class still uses the training split's ids).
    """
    folder = os.path.join(root, split)
    if not os.path.isdir(folder):
        raise DataError(f"image folder {folder!r} does not exist (source 'folder:{root}', "
                        f"split {split!r}; expected {folder}/<class>/*.jpg)")
    present = _list_class_dirs(folder)
    if not present:
        raise DataError(f"image folder {folder!r} has no class sub-folders "
                        f"(expected {folder}/<class>/*.jpg)")
    classes = present
    if class_split and class_split != split and os.path.isdir(os.path.join(root, class_split)):
        classes = _list_class_dirs(os.path.join(root, class_split))
        unknown = sorted(set(present) - set(classes))
        if unknown:
            raise DataError(f"image folder {folder!r} has classes {unknown} that the "
                            f"{class_split!r} split does not have")
    paths, labels = [], []
    for name in present:
        class_dir = os.path.join(folder, name)
        files = sorted(e.name for e in os.scandir(class_dir)
                       if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS))
        paths += [os.path.join(class_dir, f) for f in files]
        labels += [classes.index(name)] * len(files)
    if not paths:
        raise DataError(f"image folder {folder!r} holds no images "
                        f"({', '.join(IMAGE_EXTENSIONS)}) in its class folders")
    return tuple(paths), tuple(labels), tuple(classes)


# ------------------------------------------------------------------------------------------------
# Which part of a split each host reads.


def resolve_process(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    """(process_index, process_count), asking jax for the ones given as None."""
    if process_index is None or process_count is None:
        import jax  # Only to ask which host this is.

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    return int(process_index), int(process_count)


def host_batch_size(global_batch_size: int, process_count: int) -> int:
    """global_batch_size // process_count; ValueError if it does not divide or is empty."""
    if global_batch_size <= 0 or global_batch_size % process_count:
        raise ValueError(f"global batch size {global_batch_size} does not divide evenly over "
                         f"{process_count} processes")
    return global_batch_size // process_count


def eval_layout(num_examples: int, process_index: int, process_count: int, n: int):
    """(first index, count, padded count) of this host's contiguous share of an eval split."""
    bounds = [num_examples * p // process_count for p in range(process_count + 1)]
    first, count = bounds[process_index], bounds[process_index + 1] - bounds[process_index]
    most = math.ceil(num_examples / process_count)
    return first, count, max(1, math.ceil(most / n)) * n


# ------------------------------------------------------------------------------------------------
# Splits as arrays, decoded with PIL.


def decode_file(path: str) -> np.ndarray:
    """An image file as uint8 [H, W, 3]; DataError naming the file if it cannot be read."""
    from PIL import Image
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, ValueError) as error:
        raise DataError(f"cannot decode image {path}: {error}") from None


def load_split(data_config, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Every image (uint8 [N, H, W, 3]) and label (int32 [N]) of a folder or synthetic split,
    without TensorFlow; DataError for another source or for images of different sizes."""
    kind, root = parse_source(data_config.source)
    if kind == "synthetic":
        return synthetic_arrays(data_config, split)
    if kind != "folder":
        raise DataError(f"data.source={data_config.source!r} needs TensorFlow (not installed "
                        "here); without it, folder: and synthetic sources can be read")
    return _folder_arrays(root, split, data_config.train_split)


@functools.lru_cache(maxsize=4)  # Each evaluation reads its splits again.
def _folder_arrays(root: str, split: str, class_split: str) -> tuple[np.ndarray, np.ndarray]:
    paths, labels, _ = folder_files(root, split, class_split)
    with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 4) as pool:
        images = list(pool.map(decode_file, paths, chunksize=256))
    shapes = {image.shape for image in images}
    if len(shapes) > 1:
        odd = next(p for p, image in zip(paths, images) if image.shape != images[0].shape)
        raise DataError(f"images of folder:{root}/{split} differ in size ({images[0].shape} "
                        f"and {odd}: {shapes - {images[0].shape}}); without TensorFlow the "
                        "split must be one size")
    return np.stack(images), np.asarray(labels, np.int32)


def synthetic_arrays(data_config, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Random uint8 images and labels of the synthetic source, seeded by the split's name
    (numpy's generator: other draws than the tf.data path's, the same distribution)."""
    size = int(data_config.image_size)
    num = int(data_config.synthetic_num_examples)
    if split != data_config.train_split:
        num = max(1, num // 5)
    rng = np.random.default_rng(zlib.crc32(split.encode()))
    return (rng.integers(0, 256, (num, size, size, 3), dtype=np.uint8),
            rng.integers(0, int(data_config.get("synthetic_num_classes", 10)), num,
                         dtype=np.int32))


def dataset_info(data_config) -> DatasetInfo:
    """Training examples and classes of a folder or synthetic source, without TensorFlow."""
    kind, root = parse_source(data_config.source)
    train = data_config.train_split
    if kind == "synthetic":
        return DatasetInfo(int(data_config.synthetic_num_examples),
                           int(data_config.get("synthetic_num_classes", 10)))
    if kind != "folder":
        raise DataError(f"data.source={data_config.source!r} needs TensorFlow (not installed "
                        "here); without it, folder: and synthetic sources can be read")
    paths, _, classes = folder_files(root, train, train)
    return DatasetInfo(len(paths), len(classes))


def eval_batches(data_config, split: str, *, global_batch_size: int,
                 process_index: int | None = None, process_count: int | None = None
                 ) -> Iterator[dict[str, np.ndarray]]:
    """`input_pipeline.eval_iterator`'s batches without TensorFlow: this host's share of the
    split once, the evaluation view (central `eval_crop_fraction` square, bicubic resize to
    `image_size`) computed with jnp, padded batches masked."""
    import jax
    import jax.numpy as jnp

    from contrastive_jax.augment import jnp_ops

    process_index, process_count = resolve_process(process_index, process_count)
    n = host_batch_size(global_batch_size, process_count)
    images, labels = load_split(data_config, split)
    first, count, padded = eval_layout(len(labels), process_index, process_count, n)
    height, width = images.shape[1:3]
    side = max(int(round(float(data_config.eval_crop_fraction)
                         * min(height, width))), 1)
    box = jnp.asarray([(height - side) // 2, (width - side) // 2, side, side])
    view = jax.jit(jax.vmap(lambda image: jnp_ops.resized_crop(
        jnp_ops.to_float(image), box, int(data_config.image_size))))
    for start in range(0, padded, n):
        index = np.minimum(first + np.arange(start, start + n), len(labels) - 1)
        valid = np.arange(start, start + n) < count
        batch = np.where(valid[:, None, None, None], np.asarray(view(images[index])), 0.0)
        yield {"image": batch.astype(np.float32), "label": np.where(valid, labels[index], 0),
               "mask": valid}
