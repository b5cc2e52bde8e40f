"""This host's slice of each global batch, as numpy arrays: training views and eval images.

The examples come from `data_sources` (image folders, the demo digits, TFDS, synthetic data);
which of them a host reads, and in which order, from `host_shards`.

Training (`train_iterator`): each host takes its own shard of the examples (an even split of the
file list, or `tfds.even_splits`). In epoch e the shard is visited in an order fixed by (seed, e),
and example i's two views are drawn with the seed `tf_ops.example_seed(seed, e, i)`, where i is
the example's index in the whole split, so a run resumed at `start_step` yields exactly the
batches an uninterrupted run yields from that step on; the skip happens on the index stream,
before any image is read. The views are made in two stages, as `spec.view_specs(data_config)`
says: `crop_stage` decodes, crops, resizes and flips each example, `color_stage` applies the
colour changes to a whole batch at once (`tf_batch`); together they give the per-example views of
the tests' reference, to float rounding.

Evaluation (`eval_iterator`) visits every example of a split exactly once over all hosts, padding
the last batch (mask False) so that every host yields as many batches.
image_text_pipeline builds on the same per-host records (`train_source`, `tfds_eval_source`).
"""

from __future__ import annotations

from typing import Callable, Iterator, NamedTuple

import numpy as np
import tensorflow as tf

from contrastive_jax.augment import spec, tf_batch, tf_ops
from contrastive_jax.data import host_shards, numpy_data
from contrastive_jax.data.sources import (DataError, IndexedSplit, decode_image, indexed_split,
                                          parse_source, tfds_builder, tfds_host_split,
                                          tfds_num_examples, tfds_records)

_CROP_CHUNK = 64  # Most training examples cropped by one map call (any number gives the same).


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


def _tfds_train_stream(builder, data_config, seed, start, process_index, process_count, fields):
    """(epoch, global index, encoded image, *fields) from absolute host position `start` on."""
    host_split, offset, num = tfds_host_split(builder, data_config.train_split,
                                               process_index, process_count)
    records = tfds_records(builder, host_split, data_config, fields)
    buffer = min(num, int(data_config.get("shuffle_buffer", 50_000)))
    start_epoch, skip = divmod(start, num)

    def epoch_records(epoch):
        shuffle_seed = epoch * 1_000_003 + seed * 7919 + host_shards.ORDER_SALT
        ds = records.shuffle(buffer, seed=shuffle_seed, reshuffle_each_iteration=False)
        return ds.map(lambda i, *record: (epoch, i + offset, *record))

    ds = tf.data.Dataset.range(start_epoch, 2**62).flat_map(epoch_records).skip(skip)
    return ds, num


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
    split = indexed_split(data_config, data_config.train_split)
    shard = host_shards.train_shard(split.num_examples, process_index, process_count,
                        bool(data_config.get("shuffle_files", True)))
    if len(shard) == 0:
        raise DataError(f"{split.name} has {split.num_examples} examples, too few to give "
                        f"each of {process_count} processes one")

    def describe_indexed(first, count, error):
        positions = range(first, first + count)
        return _find_corrupt(split, host_shards.positions_to_indices(shard, seed, positions))

    stream = host_shards.position_stream(shard, seed, start)
    return TrainSource(stream, split.load, describe_indexed)


# Traced once per process and image size, then called from every chunk's graph: unrolled per
# example in the chunk, its ops would make each pipeline slow to build.
_crop_views = tf.function(tf_batch.crop_views)


def crop_stage(data_config, seed: int, source: TrainSource, chunk: int) -> tf.data.Dataset:
    """Stage 1 of the training views: decode, crop, resize, flip; no colour yet.

    Yields the stream in chunks of `chunk` examples: {"view1", "view2": float32 [chunk, S, S, 3]
    in [0, 1], "label": int32 [chunk], "epoch", "index": int64 [chunk], "color_draws":
    tf_batch.ColorDraws [chunk, 2]}, the two views before their colour changes and what those
    changes draw, from the seeds `tf_ops.example_seed(seed, epoch, index)` splits into. With
    `spec.small_crops`, also "small_views": float32 [chunk, V, s, s, 3] and "small_color_draws"
    [chunk, V], the views of `tf_ops.small_crop_seeds` before their colour changes. One map call
    does a chunk: all its draws at once (the numbers the per-example ops would draw), then each
    example's image ops, unrolled, since on small images tf.data's cost per map call exceeds
    that of the crop itself.
    """
    specs = spec.view_specs(data_config)
    small = spec.small_crops(data_config)

    def crops_of(image, draws, view, k):
        crop_draws = tf.nest.map_structure(lambda t: t[k], draws.crop)
        return _crop_views(image, crop_draws, view.image_size, view.aspect_range)

    @tf.autograph.experimental.do_not_convert  # Plain Python loops: tracing is faster without.
    def crop_chunk(epoch, index, *records):
        draws = tf_batch.draw_views(tf_ops.batched_view_seeds(seed, epoch, index), specs)
        if small:
            small_draws = tf_batch.draw_views(
                tf_ops.batched_small_crop_seeds(seed, epoch, index, small.num), small.spec)
        views, small_views, labels = [], [], []
        for k in range(chunk):
            image, label = source.read(index[k], *(record[k] for record in records))
            views.append(crops_of(image, draws, specs[0], k))
            if small:
                small_views.append(tf.stack(crops_of(image, small_draws, small.spec, k)))
            labels.append(label)
        view1, view2 = (tf.stack(v) for v in zip(*views))
        out = {"view1": view1, "view2": view2, "label": tf.stack(labels), "epoch": epoch,
               "index": index, "color_draws": draws.color}
        if small:
            out.update(small_views=tf.stack(small_views), small_color_draws=small_draws.color)
        return out

    ds = source.stream.batch(chunk, drop_remainder=True)
    return ds.map(crop_chunk, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def color_stage(data_config) -> Callable[[dict], dict]:
    """Stage 2 of the training views, one map over a batch of `crop_stage` examples: colour
    jitter, grayscale, blur, solarisation with each example's own draws (`tf_batch`). Returns
    {"view1", "view2", "label"}, and "small_views" [n, V, s, s, 3] with `spec.small_crops`."""
    specs = spec.view_specs(data_config)
    small = spec.small_crops(data_config)

    @tf.autograph.experimental.do_not_convert  # Plain Python loops: tracing is faster without.
    def fn(batch):
        view1, view2 = tf_batch.color_two_views(batch["view1"], batch["view2"],
                                                batch["color_draws"], specs)
        out = {"view1": view1, "view2": view2, "label": batch["label"]}
        if small:  # The n x V small views through the colour ops as one batch.
            flat = lambda t: tf.reshape(t, tf.concat([[-1], tf.shape(t)[2:]], 0))  # noqa: E731
            views = tf_batch.color_batch(
                flat(batch["small_views"]), tf.nest.map_structure(flat, batch["small_color_draws"]),
                small.spec)
            size = small.spec.image_size
            out["small_views"] = tf.reshape(views, [-1, small.num, size, size, 3])
        return out

    return fn


def _train_batches(data_config, finish: Callable[[dict], dict], *, global_batch_size: int,
                   seed: int, start_step: int, process_index: int | None,
                   process_count: int | None) -> Iterator[dict[str, np.ndarray]]:
    """This host's batches of `crop_stage` examples, each passed through `finish`."""
    process_index, process_count = numpy_data.resolve_process(process_index, process_count)
    n = numpy_data.host_batch_size(global_batch_size, process_count)
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
    n = global_batch_size // process_count and S = data_config.image_size; with
    `data.small_crops` = V > 0 (SwAV's multi-crop) also "small_views": float32 [n, V, s, s, 3],
    s = data.small_crop_size. With start_step=k the first batch is the one an uninterrupted run
    yields at step k.
    """
    return _train_batches(data_config, color_stage(data_config),
                          global_batch_size=global_batch_size, seed=seed, start_step=start_step,
                          process_index=process_index, process_count=process_count)


def example_views(data_config, image: np.ndarray, *, seed: int, epochs: np.ndarray,
                  indices: np.ndarray) -> dict[str, np.ndarray]:
    """The training views of `image` as example (epochs[i], indices[i]) of a run with `seed`
    gets them, for every i: `train_iterator`'s two stages on a stream of that one image.
    Returns {"view1", "view2": float32 [n, S, S, 3], "label"} (and "small_views")."""
    stream = tf.data.Dataset.from_tensor_slices((np.asarray(epochs, np.int64),
                                                 np.asarray(indices, np.int64)))
    image = tf.constant(image)
    source = TrainSource(stream, lambda index: (image, tf.constant(0, tf.int32)),
                         lambda first, count, error: None)
    ds = crop_stage(data_config, seed, source, len(indices)).map(color_stage(data_config))
    return next(ds.as_numpy_iterator())


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


def tfds_eval_source(data_config, split: str, n: int, process_index: int, process_count: int,
                     fields: Callable[[dict], tuple] | None = None,
                     padding: tuple = (0,)) -> tf.data.Dataset:
    """This host's contiguous share of a TFDS split as (uint8 image, *fields(example), True).

    Padded with (zero image [S, S, 3], *padding, False) to as many whole batches of n as every
    host yields; `fields` defaults to the label, padded with 0.
    """
    builder = tfds_builder(data_config)
    size = int(data_config.image_size)
    host_split, _, count = tfds_host_split(builder, split, process_index, process_count)
    padded = numpy_data.eval_layout(tfds_num_examples(builder, split), process_index,
                                     process_count, n)[2]
    real = tfds_records(builder, host_split, data_config, fields).map(
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
    process_index, process_count = numpy_data.resolve_process(process_index, process_count)
    n = numpy_data.host_batch_size(global_batch_size, process_count)
    size = int(data_config.image_size)
    crop_fraction = float(data_config.eval_crop_fraction)
    kind, _ = parse_source(data_config.source)
    if kind == "tfds":
        ds = tfds_eval_source(data_config, split, n, process_index, process_count)
        indexed = None
    else:
        indexed = indexed_split(data_config, split)
        first, count, padded = numpy_data.eval_layout(indexed.num_examples, process_index,
                                                       process_count, n)
        last = indexed.num_examples - 1

        def load(k):
            image, label = indexed.load(tf.minimum(first + k, last))
            valid = k < count
            return image, tf.where(valid, label, 0), valid

        ds = tf.data.Dataset.range(padded).map(load, num_parallel_calls=tf.data.AUTOTUNE,
                                               deterministic=True)

    def preprocess(image, label, valid):
        image = tf_ops.center_crop(image, size, crop_fraction)
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


