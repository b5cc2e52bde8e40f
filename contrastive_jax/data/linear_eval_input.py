"""The linear-evaluation protocol's training batches: a random resized crop and a flip of each
training image, re-drawn every epoch from (seed, epoch, example), no colour change."""

from __future__ import annotations

from typing import Iterator

import ml_collections
import numpy as np
import tensorflow as tf

from contrastive_jax.augment import tf_ops
from contrastive_jax.data import input_pipeline, numpy_data


def train_view(image, seed, image_size: int, crop_area_min: float):
    """The linear-evaluation training view: random resized crop (area in [crop_area_min, 1],
    aspect 3/4 to 4/3) and a horizontal flip with p = 0.5, no colour change; float32 in [0, 1]."""
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    image = tf_ops.random_resized_crop(tf_ops.to_float(image), crop_seed, image_size,
                                      area_range=(crop_area_min, 1.0))
    image = tf_ops.random_flip(image, flip_seed)
    return tf.ensure_shape(image, [image_size, image_size, 3])


def train_batches(data_config: ml_collections.ConfigDict, *, global_batch_size: int, seed: int,
                  crop_area_min: float, process_index: int | None = None,
                  process_count: int | None = None) -> Iterator[dict[str, np.ndarray]]:
    """This host's slice of every linear-evaluation training batch, forever.

    Yields {"image": float32 [n, S, S, 3], "label": int32 [n]}. Example i of epoch e gets the
    view of seed `tf_ops.example_seed(seed, e, i)`: re-augmented every epoch, the same in
    every run.
    """
    process_index, process_count = numpy_data.resolve_process(process_index, process_count)
    n = numpy_data.host_batch_size(global_batch_size, process_count)
    source = input_pipeline.train_source(data_config, seed, 0, process_index, process_count)
    image_size = int(data_config.image_size)

    def example(epoch, index, *record):
        image, label = source.read(index, *record)
        view = train_view(image, tf_ops.example_seed(seed, epoch, index), image_size,
                          crop_area_min)
        return {"image": view, "label": tf.cast(label, tf.int32)}

    ds = source.stream.map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = input_pipeline.with_pipeline_options(
        ds.batch(n, drop_remainder=True).prefetch(tf.data.AUTOTUNE))
    return input_pipeline.numpy_batches(
        ds, lambda k, error: source.describe_error(k * n, n, error))
