"""Image-text pairs for CLIP and SigLIP: an augmented image and a tokenised caption per example.

Captions come from one of three places:

- a TFDS text feature named by `data.caption_key` (a path such as "captions/text" for
  coco_captions, which holds several captions per image, or "caption" for one per image): each
  epoch, one of the example's captions is drawn;
- the shards of a `wds:` or `tfrecord:` source (shard_source): the column data.caption_key names
  ("txt" when empty), one of several drawn each epoch;
- the class name, when caption_key is "" (labelled sources: folder, demo, synthetic, labelled
  TFDS): one of `zeroshot.TRAIN_TEMPLATES` is drawn and filled with it (zero-shot evaluation
  prompts with the held-out `zeroshot.EVAL_TEMPLATES`).

Sources, host shards, epoch order and the resume guarantee are input_pipeline's: the crop, the
flip and the caption drawn for example i in epoch e all come from tf_ops.example_seed(seed, e, i),
so a run resumed at `start_step` yields exactly the batches of an uninterrupted run. Text is
tokenised inside tf.data, a batch at a time (see tokenizer).
"""

from __future__ import annotations

from typing import Callable, Iterator, NamedTuple

import numpy as np
import tensorflow as tf

from contrastive_jax.augment import tf_ops
from contrastive_jax.data import sources as data_sources, input_pipeline, numpy_data, shard_source
from contrastive_jax.evaluation import zeroshot
from contrastive_jax.data.sources import DataError
from contrastive_jax.data.tokenizer import Tokenizer, get_tokenizer

def class_captions(class_name: str) -> list[str]:
    """The training captions of a class: every `zeroshot.TRAIN_TEMPLATES` with its name."""
    return zeroshot.prompts(class_name, zeroshot.TRAIN_TEMPLATES)


def has_captions(data_config) -> bool:
    """Whether captions come from a TFDS text feature (data.caption_key), not class names."""
    kind, _ = data_sources.parse_source(data_config.source)
    return bool(data_config.get("caption_key", "")) and kind not in data_sources.SHARD_FORMATS


# ------------------------------------------------------------------------------------------------
# Where captions come from.


class Captions(NamedTuple):
    """How a source's records turn into candidate captions."""

    fields: Callable[[dict], tuple] | None  # TFDS fields after the image; None: the label only.
    candidates: Callable[..., tf.Tensor]  # (label, *more fields) -> string [k], k may be 0.
    labelled: bool


def _feature_paths(info, prefix: str = "") -> list[str]:
    if not isinstance(info, dict):
        return [prefix]
    return [p for key, value in info.items() for p in _feature_paths(value, f"{prefix}{key}/")]


def _caption_builder(data_config):
    """The TFDS builder of a caption source, with data.caption_key checked to name text."""
    key = str(data_config.caption_key)
    kind, _ = data_sources.parse_source(data_config.source)
    if kind != "tfds":
        raise DataError(f"data.caption_key={key!r} needs a 'tfds:' source, but "
                        f"{data_config.source!r} has no captions (set data.caption_key='' to "
                        "caption images with their class names)")
    builder = data_sources.tfds_builder(data_config)
    info = builder.info.features.get_tensor_info()
    node = info
    for part in key.split("/"):
        if not isinstance(node, dict) or part not in node:
            paths = ", ".join(p.rstrip("/") for p in _feature_paths(info))
            raise DataError(f"TFDS dataset {builder.name!r} has no feature {key!r} "
                            f"(data.caption_key); its features are: {paths}")
        node = node[part]
    if isinstance(node, dict) or tf.as_dtype(node.np_dtype) != tf.string or len(node.shape) > 1:
        raise DataError(f"feature {key!r} of TFDS dataset {builder.name!r} (data.caption_key) is "
                        "not a text or a list of texts")
    return builder


def _example_captions(example: dict, key: str) -> tf.Tensor:
    """The captions at feature path `key` of a TFDS example, as string [k]."""
    for part in key.split("/"):
        example = example[part]
    return tf.reshape(example, [-1])


def _label_getter(builder, data_config) -> Callable[[dict], tf.Tensor] | None:
    label_key = data_config.get("label_key", "label")
    if label_key not in builder.info.features.keys():
        return None
    return lambda example: tf.cast(example[label_key], tf.int32)


def caption_source(data_config) -> Captions:
    """How `data_config`'s records turn into candidate captions."""
    kind, _ = data_sources.parse_source(data_config.source)
    if kind in data_sources.SHARD_FORMATS:  # shard_source reads the captions.
        return Captions(None, lambda _, captions: captions, False)
    if has_captions(data_config):
        builder = _caption_builder(data_config)
        key = str(data_config.caption_key)
        label = _label_getter(builder, data_config)

        def fields(example):
            value = label(example) if label is not None else tf.constant(-1)
            return value, _example_captions(example, key)

        return Captions(fields, lambda _, captions: captions, label is not None)
    if kind == "tfds":
        builder = data_sources.tfds_builder(data_config)
        if _label_getter(builder, data_config) is None:
            raise DataError(f"TFDS dataset {builder.name!r} has no label feature "
                            f"{data_config.get('label_key', 'label')!r} to build captions from "
                            "class names; set data.caption_key to one of its text features")
    names = data_sources.class_names(data_config)
    table = tf.constant([class_captions(name) for name in names])  # [classes, templates]
    return Captions(None, lambda label: tf.gather(table, label), True)


def _choose(candidates: tf.Tensor, seed) -> tf.Tensor:
    """One of the strings `candidates` [k], uniformly by `seed`; "" when k = 0."""
    k = tf.size(candidates)
    u = tf.random.stateless_uniform([], seed)
    i = tf.minimum(tf.cast(u * tf.cast(k, tf.float32), tf.int32), tf.maximum(k - 1, 0))
    return tf.concat([candidates, [""]], axis=0)[i]


# ------------------------------------------------------------------------------------------------
# Iterators.


def _train_map(data_config, seed: int, read, captions: Captions):
    size = int(data_config.image_size)
    area_range = (float(data_config.get("crop_area_min", 0.08)), 1.0)

    def fn(epoch, index, *record):
        image, label, *rest = read(index, *record)
        seeds = tf.random.experimental.stateless_split(
            tf_ops.example_seed(seed, epoch, index), num=3)
        image = tf_ops.random_resized_crop(tf_ops.to_float(image), seeds[0], size, area_range)
        image = tf_ops.random_flip(image, seeds[1])
        out = {"image": tf.ensure_shape(image, [size, size, 3]),
               "text": _choose(captions.candidates(label, *rest), seeds[2])}
        if captions.labelled:
            out["label"] = label
        return out

    return fn


def _tokenize_batch(tokenizer: Tokenizer):
    """Replaces a batch's strings "text" by their ids; rows with text_valid False are all 0."""

    def fn(batch):
        out = {k: v for k, v in batch.items() if k not in ("text", "text_valid")}
        out["text"] = tokenizer.tokenize(batch["text"])
        if "text_valid" in batch:
            out["text"] *= tf.cast(batch["text_valid"], tf.int32)[..., None]
        return out

    return fn


def train_iterator(data_config, *, global_batch_size: int, seed: int, start_step: int = 0,
                   process_index: int | None = None, process_count: int | None = None,
                   ) -> Iterator[dict[str, np.ndarray]]:
    """This host's slice of every global image-text training batch, forever.

    Yields {"image": float32 [n, S, S, 3] in [0, 1], "text": int32 [n, data.max_text_len]} and,
    for labelled sources, "label": int32 [n]; n = global_batch_size // process_count and
    S = data.image_size. The image is one view (random resized crop of area
    (data.crop_area_min, 1), random flip). With start_step=k the first batch is the one an
    uninterrupted run yields at step k.
    """
    process_index, process_count = numpy_data.resolve_process(process_index, process_count)
    n = numpy_data.host_batch_size(global_batch_size, process_count)
    if start_step < 0:
        raise ValueError(f"start_step must be >= 0, got {start_step}")
    start = start_step * n  # Examples this host has consumed before start_step.
    tokenizer = get_tokenizer(data_config)
    captions = caption_source(data_config)
    if data_sources.parse_source(data_config.source)[0] in data_sources.SHARD_FORMATS:
        source = shard_source.train_source(data_config, seed, start, process_index, process_count)
    else:
        source = input_pipeline.train_source(data_config, seed, start, process_index,
                                             process_count, captions.fields)
    ds = source.stream.map(_train_map(data_config, seed, source.read, captions),
                           num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(n, drop_remainder=True).map(
        _tokenize_batch(tokenizer), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = input_pipeline.with_pipeline_options(ds.prefetch(tf.data.AUTOTUNE))
    return input_pipeline.numpy_batches(
        ds, lambda k, error: source.describe_error(start + k * n, n, error))


def eval_iterator(data_config, split: str, *, global_batch_size: int, captions_per_image: int = 5,
                  process_index: int | None = None, process_count: int | None = None,
                  ) -> Iterator[dict[str, np.ndarray]]:
    """Every example of a caption dataset's `split` once over all hosts, for retrieval.

    Yields {"image": float32 [n, S, S, 3] (centre crop), "text": int32 [n, C, max_text_len] (the
    example's first C = captions_per_image captions; missing ones all 0), "mask": bool [n]}; the
    last batch is padded (mask False, zero image and text) so every host yields as many batches.
    Sources captioned with class names raise DataError: zero-shot classification uses
    input_pipeline.eval_iterator with prompts of zeroshot.EVAL_TEMPLATES instead.
    """
    process_index, process_count = numpy_data.resolve_process(process_index, process_count)
    n = numpy_data.host_batch_size(global_batch_size, process_count)
    if captions_per_image < 1:
        raise ValueError(f"captions_per_image must be >= 1, got {captions_per_image}")
    if not has_captions(data_config):
        raise DataError(
            f"retrieval needs a caption dataset (data.caption_key naming a TFDS text feature, "
            f"e.g. 'captions/text' for coco_captions), but {data_config.source!r} is captioned "
            "with class names; for zero-shot classification use input_pipeline.eval_iterator "
            "with zeroshot.EVAL_TEMPLATES")
    _caption_builder(data_config)  # Checks the source and caption_key before any work.
    key = str(data_config.caption_key)
    num = int(captions_per_image)
    tokenizer = get_tokenizer(data_config)
    size = int(data_config.image_size)
    crop_fraction = float(data_config.get("eval_crop_fraction", 1.0))

    def first_captions(example):
        found = _example_captions(example, key)[:num]
        count = tf.size(found)
        texts = tf.concat([found, tf.fill([num - count], "")], axis=0)
        return tf.ensure_shape(texts, [num]), tf.range(num) < count

    def preprocess(image, texts, text_valid, valid):
        image = tf_ops.center_crop(image, size, crop_fraction)
        image = tf.where(valid, image, tf.zeros_like(image))
        return {"image": image, "text": texts, "text_valid": text_valid, "mask": valid}

    padding = (np.full([num], b"", object), np.zeros([num], bool))
    ds = input_pipeline.tfds_eval_source(data_config, split, n, process_index, process_count,
                                         first_captions, padding)
    ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(n, drop_remainder=True).map(
        _tokenize_batch(tokenizer), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = input_pipeline.with_pipeline_options(ds.prefetch(tf.data.AUTOTUNE))
    return input_pipeline.numpy_batches(
        ds, lambda k, error: (f"cannot decode an image of {data_config.source!r} split "
                              f"{split!r}: {error}"))
