"""Training batches made on the accelerators: `data.augment_on = "device"`.

A training split that fits (`data.device_resident_max_mb`, images of one size: CIFAR-10 is
150 MB of uint8) is decoded once and kept on the devices as uint8, sharded over the `data` axis,
each device holding 1/D of it. Every step the host sends only the global batch's example indices;
each device gathers its slice of the batch from the shards of all devices (one reduce-scatter of
the batch's pixels) and draws both views with `jnp_ops` from keys of (seed, epoch,
index). The order of examples is a permutation of the whole split per epoch, fixed by
(seed, epoch), so a batch depends on the step alone: not on the device or process count, and a
resumed run sees exactly the batches an uninterrupted one would.

A split that does not fit (ImageNet, or images of many sizes) is decoded, cropped, resized and
flipped on the hosts (`input_pipeline.crop_iterator`: the examples and order of the host path),
sent as uint8, and the devices apply the colour changes (`jnp_ops.colour_two_views`) with
keys of (seed, epoch, index): the host's costliest ops move to the accelerators.
"""

from __future__ import annotations

from typing import Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging as absl_logging
from jax.sharding import PartitionSpec as P

from contrastive_jax import parallel
from contrastive_jax.augment import jnp_ops, spec
from contrastive_jax.parallel.layout import Layout

_ORDER_SALT = 0x0D3E  # Keeps the example order apart from the augmentation keys.
_LOAD_BATCH = 1024  # Examples decoded per tf.data batch while loading a split into memory.

PyTree = dict


# ------------------------------------------------------------------------------------------------
# The split in device memory.


def load_split(data_config: ml_collections.ConfigDict, split: str
               ) -> tuple[np.ndarray, np.ndarray]:
    """Every image (uint8 [N, H, W, 3]) and label (int32 [N]) of `split`, decoded in parallel
    with tf.data (with PIL where TensorFlow is absent); DataError if the images differ in size
    or a file cannot be read."""
    from contrastive_jax.data import numpy_data
    if not numpy_data.tensorflow_available():
        return numpy_data.load_split(data_config, split)
    import tensorflow as tf

    from contrastive_jax.data import sources as data_sources

    kind, _ = data_sources.parse_source(data_config.source)
    if kind == "tfds":
        builder = data_sources.tfds_builder(data_config)
        image_key = data_config.get("image_key", "image")
        label_key = data_config.get("label_key", "label")
        ds = builder.as_dataset(split=split, shuffle_files=False).map(
            lambda ex: (ex[image_key], tf.cast(ex[label_key], tf.int32)),
            num_parallel_calls=tf.data.AUTOTUNE)
        name = data_config.source
    else:
        indexed = data_sources.indexed_split(data_config, split)
        ds = tf.data.Dataset.range(indexed.num_examples).map(
            indexed.load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        name = indexed.name
    images, labels = [], []
    try:
        for image_batch, label_batch in ds.batch(_LOAD_BATCH).prefetch(2).as_numpy_iterator():
            images.append(image_batch)
            labels.append(label_batch)
    except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError) as error:
        reason = getattr(error, "message", str(error)).strip().splitlines()[0]
        raise data_sources.DataError(
            f"cannot load {name} into device memory (data.augment_on='device' needs readable "
            f"images of one size; set data.device_resident_max_mb=0 to crop on the host "
            f"instead): {reason}") from None
    return np.concatenate(images), np.concatenate(labels).astype(np.int32)


def split_nbytes(data_config: ml_collections.ConfigDict, split: str) -> int | None:
    """Bytes of `split` as uint8 pixels, from its size and first image; None when the images
    have no fixed size (TFDS features of unknown shape)."""
    from contrastive_jax.data import numpy_data
    if not numpy_data.tensorflow_available():  # The split decoded with PIL (and kept, cached).
        images, _ = numpy_data.load_split(data_config, split)
        return images.nbytes
    from contrastive_jax.data import sources as data_sources

    kind, _ = data_sources.parse_source(data_config.source)
    if kind == "tfds":
        builder = data_sources.tfds_builder(data_config)
        shape = builder.info.features[data_config.get("image_key", "image")].shape
        if any(d is None for d in shape):
            return None
        return data_sources.num_examples(data_config, split) * int(np.prod(shape))
    indexed = data_sources.indexed_split(data_config, split)
    first_image, _ = indexed.load(0)
    return indexed.num_examples * int(np.prod(first_image.shape))


def fits_on_devices(data_config: ml_collections.ConfigDict) -> bool:
    """Whether the training split is kept on the devices (`data.device_resident_max_mb`)."""
    limit = float(data_config.device_resident_max_mb) * 2**20
    nbytes = split_nbytes(data_config, data_config.train_split)
    return nbytes is not None and nbytes <= limit


class ResidentSplit:
    """A split's images and labels sharded over the mesh's `data` axis, each device holding
    `rows_per_device` consecutive examples (`parallel.shard_rows`)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, layout: Layout):
        self.num_examples = len(labels)
        self.arrays, self.rows_per_device = layout.shard_rows(
            {"images": images, "labels": labels})


def gather_rows(shard: jax.Array, indices: jax.Array, axis_name: str) -> jax.Array:
    """Per device: rows `indices` [B] of the array sharded over `axis_name` (this device holds
    `shard`, rows [i m, (i + 1) m)), returning this device's B / D of them, in order.

    Each device takes the requested rows it holds, zeros elsewhere, and a reduce-scatter sums
    them: exactly one device contributes each row, so the sum is that row. Pixels travel as
    bfloat16, which holds every integer up to 256 exactly.
    """
    rows_per_device = shard.shape[0]
    mine = indices // rows_per_device == jax.lax.axis_index(axis_name)
    local = jnp.take(shard, indices % rows_per_device, axis=0)
    mask = mine.reshape(-1, *([1] * (shard.ndim - 1)))
    carrier = jnp.bfloat16 if shard.dtype == jnp.uint8 else shard.dtype
    contribution = jnp.where(mask, local, 0).astype(carrier)
    return jax.lax.psum_scatter(contribution, axis_name, scatter_dimension=0,
                                tiled=True).astype(shard.dtype)


# ------------------------------------------------------------------------------------------------
# Order.


class GlobalOrder:
    """(epoch, split index) of every position of the global example stream: epoch e visits the
    whole split in a permutation fixed by (seed, e)."""

    def __init__(self, num_examples: int, seed: int):
        self.num_examples = num_examples
        self.seed = seed
        self._permutations: dict[int, np.ndarray] = {}

    def permutation(self, epoch: int) -> np.ndarray:
        """The order of the split's indices in `epoch` (the last two epochs' are kept)."""
        if epoch not in self._permutations:
            rng = np.random.default_rng([self.seed, _ORDER_SALT, epoch])
            self._permutations = {e: p for e, p in self._permutations.items() if e >= epoch - 1}
            self._permutations[epoch] = rng.permutation(self.num_examples).astype(np.int32)
        return self._permutations[epoch]

    def batch(self, step: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """(epochs, indices), int32 [batch_size] each, of the global batch drawn at `step`
        (0-based: the batch that trains step + 1)."""
        positions = np.arange(step * batch_size, (step + 1) * batch_size, dtype=np.int64)
        epochs = positions // self.num_examples
        indices = np.empty(batch_size, np.int32)
        for epoch in np.unique(epochs):
            here = epochs == epoch
            indices[here] = self.permutation(int(epoch))[positions[here] % self.num_examples]
        return epochs.astype(np.int32), indices


# ------------------------------------------------------------------------------------------------
# Per-device batch functions.


def _my_slice(x: jax.Array, axis_name: str) -> jax.Array:
    """This device's B / D of a replicated [B] array."""
    n = x.shape[0] // jax.lax.psum(1, axis_name)
    return jax.lax.dynamic_slice_in_dim(x, jax.lax.axis_index(axis_name) * n, n)


def resident_views_fn(seed: int, specs, axis_name: str = parallel.AXIS):
    """Per device: (image shard, label shard, epochs [B], indices [B]) -> this device's slice of
    the global batch, {"view1", "view2", "label"}."""

    def fn(arrays, epochs, indices):
        images = gather_rows(arrays["images"], indices, axis_name)
        labels = gather_rows(arrays["labels"], indices, axis_name)
        keys = jnp_ops.example_keys(seed, _my_slice(epochs, axis_name),
                                    _my_slice(indices, axis_name))
        view1, view2 = jnp_ops.two_views(images, keys, specs)
        return {"view1": view1, "view2": view2, "label": labels}

    return fn


# ------------------------------------------------------------------------------------------------
# Iterators.


def resident_batches(data_config: ml_collections.ConfigDict, split: ResidentSplit, *,
                     global_batch_size: int, seed: int, start_step: int,
                     layout: Layout) -> Iterator[PyTree]:
    """Device batches in the step's layout, from `start_step` on, forever."""
    views = layout.wrap(resident_views_fn(seed, spec.view_specs(data_config)),
                        in_specs=(P(parallel.AXIS), P(), P()), out_specs=P(parallel.AXIS))
    order = GlobalOrder(split.num_examples, seed)
    step = start_step
    while True:
        epochs, indices = order.batch(step, global_batch_size)
        yield views(split.arrays, layout.replicate(epochs), layout.replicate(indices))
        step += 1


def host_crop_views_fn(seed: int, specs):
    """Per device: a batch of host crops {"view1", "view2", "label", "epoch", "index"} ->
    {"view1", "view2", "label"} with the colour changes applied."""

    def fn(batch):
        keys = jnp_ops.example_keys(seed, batch["epoch"], batch["index"])
        view1, view2 = jnp_ops.colour_two_views(batch["view1"], batch["view2"], keys, specs)
        return {"view1": view1, "view2": view2, "label": batch["label"]}

    return fn


def host_crop_batches(data_config: ml_collections.ConfigDict, *, global_batch_size: int,
                      seed: int, start_step: int, layout: Layout) -> Iterator[PyTree]:
    """Device batches in the step's layout from host crops, two steps ahead, coloured on the
    devices."""
    from contrastive_jax.data import input_pipeline

    crops = input_pipeline.crop_iterator(data_config, global_batch_size=global_batch_size,
                                         seed=seed, start_step=start_step)
    colour = layout.wrap(host_crop_views_fn(seed, spec.view_specs(data_config)),
                         in_specs=(P(parallel.AXIS),), out_specs=P(parallel.AXIS))
    for batch in layout.prefetch(crops):
        yield colour(batch)


def train_batches(data_config: ml_collections.ConfigDict, *, global_batch_size: int, seed: int,
                  start_step: int, layout: Layout) -> Iterator[PyTree]:
    """The training batches of `augment_on = "device"`: from the split kept in device memory
    when it fits (`fits_on_devices`), else from host crops coloured on the devices."""
    if not fits_on_devices(data_config):
        absl_logging.info("The training split is not kept on the devices (larger than "
                          "data.device_resident_max_mb, or images of many sizes): the hosts "
                          "crop, the devices apply the colour changes")
        return host_crop_batches(data_config, global_batch_size=global_batch_size, seed=seed,
                                 start_step=start_step, layout=layout)
    images, labels = load_split(data_config, data_config.train_split)
    absl_logging.info("Keeping %d training images (%.0f MB) on the devices", len(labels),
                      images.nbytes / 2**20)
    split = ResidentSplit(images, labels, layout)
    return resident_batches(data_config, split, global_batch_size=global_batch_size, seed=seed,
                            start_step=start_step, layout=layout)
