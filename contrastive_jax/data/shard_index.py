"""The shards of a `wds:GLOB` or `tfrecord:GLOB` source and how many usable samples each holds.

The files the glob matches (less img2dataset's side files, *.json and *.parquet), sorted by path,
are the training split. A shard's count is img2dataset's `{shard}_stats.json` "successes" or,
without that file, what reading the shard once finds (`shard_formats.scan`, which checks every
sample). Empty shards are skipped, as are samples marked failed; both counts are logged.
"""

from __future__ import annotations

import concurrent.futures
import functools
import json
import os
from typing import NamedTuple

import numpy as np
import tensorflow as tf
from absl import logging

from contrastive_jax.data import shard_formats
from contrastive_jax.data.numpy_data import DataError, DatasetInfo, parse_source


class ShardSet(NamedTuple):
    """The non-empty shards of a source, sorted by path, with their usable sample counts."""

    source: str
    fmt: str
    caption_key: str
    paths: tuple[str, ...]
    counts: tuple[int, ...]

    @property
    def offsets(self) -> np.ndarray:
        """The split index of each shard's first sample."""
        return np.concatenate([[0], np.cumsum(self.counts)[:-1]]).astype(np.int64)


def caption_key(data_config) -> str:
    """The column captions come from: data.caption_key, or img2dataset's "txt" when empty."""
    return str(data_config.get("caption_key", "") or "txt")


def _stats(path: str) -> dict | None:
    """img2dataset's `{shard}_stats.json` beside `path`, if there is one."""
    stats = os.path.splitext(path)[0] + "_stats.json"
    if not tf.io.gfile.exists(stats):
        return None
    try:
        with tf.io.gfile.GFile(stats) as f:
            found = json.load(f)
        return {"successes": int(found["successes"]), "count": int(found.get("count", 0))}
    except (ValueError, KeyError, TypeError) as error:
        raise DataError(f"img2dataset stats file {stats} is unreadable ({error!r}); fix or "
                        "delete it (the shard is then counted by reading it)") from None


def _count(fmt: str, path: str, key: str) -> tuple[int, int, bool]:
    """(usable samples, samples marked failed, whether a stats file said so) of one shard."""
    if tf.io.gfile.stat(path).length == 0:
        return 0, 0, False
    stats = _stats(path)
    if stats is not None:
        return stats["successes"], max(stats["count"] - stats["successes"], 0), True
    return (*shard_formats.scan(fmt, path, key), False)


@functools.lru_cache(maxsize=8)
def _shard_set(source: str, key: str) -> ShardSet:
    fmt, pattern = parse_source(source)
    paths = sorted(p for p in tf.io.gfile.glob(pattern)
                   if not p.endswith((".json", ".parquet")))
    if not paths:
        raise DataError(f"no shards match {pattern!r} (data.source {source!r})")
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        found = list(pool.map(lambda p: _count(fmt, p, key), paths))
    kept = [(p, n) for p, (n, _, _) in zip(paths, found) if n > 0]
    if not kept:
        raise DataError(f"the {len(paths)} shards matching {pattern!r} hold no usable sample")
    scanned = sum(not from_stats for _, _, from_stats in found)
    logging.info("%s: %d shards, %d samples; %d empty shards skipped; %d samples marked failed "
                 "skipped; %d shards without a _stats.json counted by reading them", source,
                 len(kept), sum(n for _, n in kept), len(paths) - len(kept),
                 sum(failed for _, failed, _ in found), scanned)
    return ShardSet(source, fmt, key, *map(tuple, zip(*kept)))


def shard_set(data_config) -> ShardSet:
    """The shards of a `wds:` or `tfrecord:` source; DataError if there are none."""
    return _shard_set(str(data_config.source), caption_key(data_config))


def dataset_info(data_config) -> DatasetInfo:
    """(usable samples over all shards, 0 classes)."""
    return DatasetInfo(sum(shard_set(data_config).counts), 0)
