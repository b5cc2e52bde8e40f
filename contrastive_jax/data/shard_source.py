"""Image-text shard sources `wds:GLOB` and `tfrecord:GLOB`: which shards each host reads, in
which order, and where a resumed run picks up.

Hosts share the non-empty shards as `host_shards.train_shard` shares examples (an even split of
a fixed permutation), so each shard is read by one host, once per epoch. In epoch e a host visits
its shards in an order fixed by (seed, e) (`host_shards.epoch_order`), `data.shard_window` at a
time: a window's samples are interleaved and shuffled together (a buffer of up to
data.shuffle_buffer samples, seeded by (seed, e, window)), and depend on nothing before the
window. A run resumed at host position p therefore skips whole epochs and windows by their counts
and reads, without decoding, only the samples of p's window that precede it. Sample i of the
split (shard_index: the shards in sorted order) is augmented with the seed of index i, as index
sources do.
"""

from __future__ import annotations

import itertools
import re

import numpy as np
import tensorflow as tf

from contrastive_jax.data import host_shards, shard_formats
from contrastive_jax.data.input_pipeline import TrainSource
from contrastive_jax.data.numpy_data import DataError
from contrastive_jax.data.shard_index import ShardSet, shard_set
from contrastive_jax.data.sources import decode_image

_SHUFFLE_SALT = 0x5A4D  # Keeps the window shuffles apart from the shard-order stream.
_DATA_ERROR = "DataError: "  # How a DataError raised in the wds reader shows in TF's error.
# What a failed check inside tf.data reports (TF escapes the strings it prints, so no paths):
# the shard's id, then "count N" (N usable samples read) or "sample I no_image|no_caption".
_CHECK = re.compile(r"shard check failed: (\d+) (count (\d+)|sample (\d+) (no_image|no_caption))")


def _raised(error: Exception) -> str | None:
    """The message of a DataError raised by the wds reader inside tf.data (it names the file)."""
    text = getattr(error, "message", str(error))
    if _DATA_ERROR not in text:
        return None
    return text.split(_DATA_ERROR, 1)[1].splitlines()[0].strip()


def _reason(error: Exception) -> str:
    """The first line of a TF error's message, without TF's function and op names."""
    text = getattr(error, "message", str(error)).strip().splitlines()[0]
    return re.sub(r"\{\{[^}]*\}\}|\[Op:\w+\]", "", text).strip()


class _HostShards:
    """One host's shards and the order it reads their samples in."""

    def __init__(self, shards: ShardSet, data_config, seed: int, process_index: int,
                 process_count: int):
        self.shards, self.seed = shards, seed
        self.ids = host_shards.train_shard(len(shards.paths), process_index, process_count)
        if len(self.ids) == 0:
            raise DataError(f"{shards.source} has {len(shards.paths)} non-empty shards, too few "
                            f"to give each of {process_count} processes one")
        self.window = int(data_config.get("shard_window", 8))
        self.num_windows = -(-len(self.ids) // self.window)
        self.buffer = int(data_config.get("shuffle_buffer", 50_000))
        self.total = int(sum(shards.counts[i] for i in self.ids))

    def order(self, epoch) -> tf.Tensor:
        """The shard ids of this host in the order of `epoch`."""
        return tf.gather(tf.constant(self.ids, tf.int64),
                         host_shards.epoch_order(len(self.ids), self.seed, epoch))

    def window_of(self, position: int) -> tuple[int, int, int]:
        """(epoch, window, samples of the window before it) of a host position."""
        epoch, position = divmod(position, self.total)
        counts = np.asarray(self.shards.counts)[self.order(epoch).numpy()]
        starts = np.cumsum(np.add.reduceat(counts, np.arange(0, len(counts), self.window)))
        w = int(np.searchsorted(starts, position, side="right"))
        return epoch, w, position - int(starts[w - 1] if w else 0)

    def _shard(self, shard: tf.Tensor, epoch: tf.Tensor) -> tf.data.Dataset:
        """Chunks of (epoch, index, image, captions [k] padded, caption count) of a shard's
        usable samples, each checked: every sample has an image and a caption, and the shard
        as many samples as it was counted to have."""
        s = self.shards
        path = tf.gather(tf.constant(s.paths), shard)
        count = tf.gather(tf.constant(s.counts, tf.int64), shard)
        offset = tf.gather(tf.constant(s.offsets), shard)
        no_text = tf.zeros([0], tf.string)
        end = tf.data.Dataset.from_tensors(
            (no_text, no_text, tf.zeros([0, 0], tf.string), tf.zeros([0], tf.int32), True))
        usable = shard_formats.chunks(s.fmt, path, s.caption_key).map(
            lambda *chunk: (*(tf.boolean_mask(t, chunk[-1]) for t in chunk[:-1]), False))
        counted = usable.concatenate(end).scan(
            tf.constant(0, tf.int64),
            lambda seen, chunk: (seen + tf.size(chunk[0], tf.int64), (seen, *chunk)))

        def check(seen, keys, images, captions, num_captions, is_end):
            miscounted = is_end & (seen != count)
            no_image = tf.strings.length(images) == 0
            bad = no_image | (num_captions == 0)
            ok = ~miscounted & ~tf.reduce_any(bad)

            def report():
                first = tf.argmax(tf.cast(bad, tf.int32), output_type=tf.int64)
                problem = tf.strings.join(["sample ", tf.strings.as_string(seen + first), " ",
                                           tf.where(no_image[first], "no_image", "no_caption")])
                return tf.strings.join([
                    "shard check failed: ", tf.strings.as_string(shard), " ",
                    tf.where(miscounted, tf.strings.join(["count ", tf.strings.as_string(seen)]),
                             problem)])

            check_op = tf.debugging.Assert(ok, [tf.cond(ok, lambda: no_text[:0], report)])
            with tf.control_dependencies([check_op]):
                index = offset + seen + tf.range(tf.size(keys, tf.int64))
            return tf.fill(tf.shape(index), epoch), index, images, captions, num_captions

        return counted.map(check)

    def _window(self, epoch, w, skip) -> tf.data.Dataset:
        """(epoch, index, image, captions, caption count) of the samples of window `w` of
        `epoch`, shuffled, less the first `skip`."""
        ids = self.order(epoch)[w * self.window:(w + 1) * self.window]
        size = tf.minimum(tf.reduce_sum(tf.gather(tf.constant(self.shards.counts, tf.int64),
                                                  ids)), self.buffer)
        base = tf.constant([self.seed, _SHUFFLE_SALT], tf.int64)
        seed = tf.random.experimental.stateless_fold_in(
            tf.random.experimental.stateless_fold_in(base, epoch), w)[0]
        ds = tf.data.Dataset.from_tensor_slices((ids, tf.fill(tf.shape(ids), epoch))).interleave(
            self._shard, cycle_length=self.window, block_length=1,
            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return ds.unbatch().shuffle(size, seed=seed, reshuffle_each_iteration=False).skip(skip)

    def stream(self, start: int) -> tf.data.Dataset:
        """Every sample from host position `start` on, forever. A parallel interleave of one
        window at a time reads (and shuffles) the next window while this one is consumed."""
        epoch, w, skip = self.window_of(start)
        later = tf.data.Dataset.range(epoch + 1, 2**62).flat_map(
            lambda e: tf.data.Dataset.range(self.num_windows).map(lambda v: (e, v, 0 * v)))
        windows = tf.data.Dataset.from_tensor_slices(
            (tf.fill([self.num_windows - w], tf.constant(epoch, tf.int64)),
             tf.range(w, self.num_windows, dtype=tf.int64),
             tf.one_hot(0, self.num_windows - w, on_value=skip, dtype=tf.int64)))
        return windows.concatenate(later).interleave(
            self._window, cycle_length=1, num_parallel_calls=1, deterministic=True)

    def sample_name(self, index: int) -> str:
        """'sample KEY of shard PATH' for a split index (its shard read again to find the key)."""
        s = self.shards
        shard = int(np.searchsorted(s.offsets, index, side="right") - 1)
        usable = (sample for sample in shard_formats.samples(s.fmt, s.paths[shard],
                                                              s.caption_key) if sample.usable)
        key = next(itertools.islice(usable, index - int(s.offsets[shard]), None)).key
        return f"sample {key} of shard {s.paths[shard]}"

    def describe_error(self, first: int, count: int, error: Exception) -> str | None:
        """What failed among host positions [first, first + count): a sample whose image does
        not decode, or a shard that cannot be read (read again in Python to name it)."""
        s = self.shards
        raised = _raised(error)
        if raised:
            return raised
        check = _CHECK.search(getattr(error, "message", str(error)))
        if check:
            shard = int(check.group(1))
            if check.group(3) is not None:
                return (f"shard {s.paths[shard]} holds {check.group(3)} usable samples, not "
                        f"the {s.counts[shard]} its _stats.json gives")
            name = self.sample_name(int(s.offsets[shard]) + int(check.group(4)))
            return (f"{name} has no image ({', '.join(shard_formats.IMAGE_FIELDS)})"
                    if check.group(5) == "no_image" else
                    f"{name} has no caption {s.caption_key!r} (data.caption_key)")
        try:
            replay = list(self.stream(first).take(count).as_numpy_iterator())
        except tf.errors.OpError:
            windows = {self.window_of(p)[:2] for p in (first, first + count - 1)}
            shards = {int(i) for e, w in windows
                      for i in self.order(e).numpy()[w * self.window:(w + 1) * self.window]}
            for i in sorted(shards):
                try:
                    usable, _ = shard_formats.scan(s.fmt, s.paths[i], s.caption_key)
                except DataError as bad:
                    return str(bad)
                if usable != s.counts[i]:
                    return (f"shard {s.paths[i]} holds {usable} usable samples, not the "
                            f"{s.counts[i]} its _stats.json gives")
            return None
        for _, index, image, _, _ in replay:
            try:
                decode_image(image)
            except (tf.errors.OpError, ValueError) as bad:
                return f"cannot decode the image of {self.sample_name(index)}: {_reason(bad)}"
        return None


def train_source(data_config, seed: int, start: int, process_index: int,
                 process_count: int) -> TrainSource:
    """This host's samples of a shard source from its absolute position `start` on, forever,
    as input_pipeline.train_source gives those of other sources: `read(index, image, captions,
    num_captions)` -> (uint8 image, label -1, its captions)."""
    host = _HostShards(shard_set(data_config), data_config, seed, process_index, process_count)

    def read(index, image, captions, num_captions):
        return decode_image(image), tf.constant(-1, tf.int32), captions[:num_captions]

    return TrainSource(host.stream(start), read, host.describe_error)
