"""Throughput of the input pipeline on this host: examples per second after warm-up.

    python -m contrastive_jax.bench.input_pipeline --source=folder:/tmp/cifar10 \
        --batch_size=256 --steps=50 [--reference_data_util=PATH/simclr/tf2/data_util.py \
        --repeats=3]

prints one JSON line per case: "train_two_views" (decode + two augmented views per example),
"train_multi_crop" (the same two views plus --small_crops crops of --small_crop_size px, SwAV's
multi-crop), "eval" (decode + centre crop) and, with --reference_data_util, "reference_two_views":
the SimCLR reference's own training preprocessing (google-research/simclr, tf2/data_util.py, taken
from a clone of that repository: it is not part of this project) twice per example, as its run.py
pretrains, over the same JPEGs with the same tf.data settings; then a "ratio" line, ours over the
reference. The image-text cases read the same images for CLIP / SigLIP (one view, a class-name
caption, tokenised): "image_text_folder" from --source (a folder), "image_text_wds" and
"image_text_tfrecord" from shards of it that tools.make_shards writes into a temporary folder
(--shard_size samples each), then a "ratio" line per shard format, over the folder. Nothing runs on
an accelerator; the figures say how many examples per second this host's
CPUs can feed a training step. `cpu_us_per_example` (CPU time of this process, all threads) is
steadier than examples/s when other work shares the machine.
"""

from __future__ import annotations

import argparse
import atexit
import collections
import importlib.util
import json
import os
import shutil
import statistics
import tempfile
import time
from types import ModuleType
from typing import Iterator

import ml_collections
import tensorflow as tf

from contrastive_jax import cli, config_defaults
from contrastive_jax.data import image_text_pipeline, sources as data_sources, input_pipeline
from contrastive_jax.tools import make_shards

# The reference's CIFAR-10 pretraining settings (its README: --image_size=32
# --color_jitter_strength=0.5 --use_blur=False); blur, when on, is its batch_random_blur.
_REFERENCE_SHUFFLE_MULTIPLIER = 50  # data.py: shuffle(batch_size * 50) for images <= 32 px.


def data_config(args: argparse.Namespace) -> ml_collections.ConfigDict:
    """config_defaults' `config.data` with the flags' source, size, colour strength and blur."""
    cfg = config_defaults.base().data
    cfg.update(dict(
        source=args.source, data_dir=args.data_dir, image_size=args.image_size,
        eval_split=args.eval_split, color_strength=args.color_strength, blur=bool(args.blur),
        crop_area_min=0.08, solarize_prob=0.0, shuffle_files=True))
    return cfg


def image_text_config(args: argparse.Namespace, source: str) -> ml_collections.ConfigDict:
    """clip_cifar10's data settings (crop area 0.5-1, byte tokens) over `source`."""
    return ml_collections.ConfigDict(dict(
        source=source, data_dir=args.data_dir, image_size=args.image_size, train_split="train",
        crop_area_min=0.5, tokenizer="bytes", max_text_len=48, caption_key=""))


def shard_source(args: argparse.Namespace, fmt: str, written: dict[str, str]) -> str:
    """The `fmt:GLOB` source of --source's training split as shards, written on first use
    into a temporary folder removed when the bench exits."""
    if fmt not in written:
        scratch = tempfile.mkdtemp(prefix="bench_shards_")
        atexit.register(shutil.rmtree, scratch, ignore_errors=True)
        out = os.path.join(scratch, fmt)
        make_shards.write_shards(image_text_config(args, args.source), "train", fmt, out,
                                 args.shard_size)
        written[fmt] = f"{fmt}:{out}/*"
    return written[fmt]


def measure(iterator: Iterator, batch_size: int, steps: int, warmup: int) -> dict:
    """Examples per second over `steps` batches, after `warmup` batches (start-up excluded)."""
    start = time.perf_counter()
    for _ in range(warmup):
        next(iterator)
    first = time.perf_counter() - start
    start, cpu_start = time.perf_counter(), time.process_time()
    done = 0
    for _ in range(steps):
        try:
            next(iterator)
        except StopIteration:
            break
        done += 1
    seconds = max(time.perf_counter() - start, 1e-9)
    cpu_seconds = time.process_time() - cpu_start
    return {"examples_per_sec": round(done * batch_size / seconds, 1), "steps": done,
            "seconds": round(seconds, 3), "warmup_seconds": round(first, 3),
            "cpu_us_per_example": round(cpu_seconds / max(done * batch_size, 1) * 1e6, 1)}


def load_reference(path: str) -> ModuleType:
    """Imports the SimCLR reference's tf2/data_util.py from a file path.

    That module reads no absl flags (its callers, data.py and run.py, do), so nothing needs
    parsing; it imports only TensorFlow.
    """
    if not os.path.isfile(path):
        raise SystemExit(f"--reference_data_util={path!r} is not a file; point it at "
                         "tf2/data_util.py of a clone of github.com/google-research/simclr")
    spec = importlib.util.spec_from_file_location("simclr_reference_data_util", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def reference_iterator(reference: ModuleType, cfg: ml_collections.ConfigDict,
                       batch_size: int) -> Iterator:
    """The reference's pretraining input over our training split's files.

    As its data.py: per example, decode and `preprocess_image(..., is_training=True)` twice
    (views concatenated on channels) and a one-hot label; batch. With blur on, its
    `batch_random_blur` runs on each batch (the reference runs it inside the model, on the
    accelerator; here on the host, as ours does). Same files, decode, parallelism, prefetch and
    tf.data options as `input_pipeline.train_iterator`.
    """
    split = data_sources.indexed_split(cfg, cfg.train_split)
    size, strength = int(cfg.image_size), float(cfg.color_strength)

    def preprocess(index):
        image, label = split.load(index)
        views = [reference.preprocess_image(image, size, size, is_training=True,
                                            color_jitter_strength=strength) for _ in range(2)]
        return tf.concat(views, -1), tf.one_hot(label, split.num_classes)

    def blur(images, labels):
        views = tf.split(images, 2, axis=-1)
        return tf.concat(reference.batch_random_blur(views, size, size), -1), labels

    ds = tf.data.Dataset.range(split.num_examples)
    ds = ds.shuffle(batch_size * _REFERENCE_SHUFFLE_MULTIPLIER, seed=0).repeat()
    ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(batch_size, drop_remainder=True)
    if cfg.blur:
        ds = ds.map(blur, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = input_pipeline.with_pipeline_options(ds.prefetch(tf.data.AUTOTUNE))
    return ds.as_numpy_iterator()


def main(argv=None) -> None:
    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", default="demo")
    parser.add_argument("--data_dir", default="")
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--color_strength", type=float, default=0.5)
    parser.add_argument("--blur", type=int, default=0, help="1: Gaussian blur p=0.5 (ImageNet)")
    parser.add_argument("--eval_split", default="test")
    parser.add_argument("--small_crops", type=int, default=6, help="train_multi_crop's crops")
    parser.add_argument("--small_crop_size", type=int, default=16,
                        help="train_multi_crop's crop side (SwAV: 96 at 224)")
    parser.add_argument("--shard_size", type=int, default=1000,
                        help="samples per shard of the image_text_wds / _tfrecord cases")
    parser.add_argument("--cases", default=None,
                        help="comma-separated; default: train_two_views,eval, plus "
                             "reference_two_views with --reference_data_util; also "
                             "image_text_folder, image_text_wds, image_text_tfrecord")
    parser.add_argument("--reference_data_util", default="",
                        help="path to tf2/data_util.py of a google-research/simclr clone")
    parser.add_argument("--repeats", type=int, default=1,
                        help="runs of the case list, interleaved so that both pipelines see "
                             "the same background load; the ratio uses each case's median")
    args = parser.parse_args(argv)
    cases = args.cases or ("train_two_views,reference_two_views,eval"
                           if args.reference_data_util else "train_two_views,eval")
    multi_crop = data_config(args)
    multi_crop.update(dict(small_crops=args.small_crops, small_crop_size=args.small_crop_size,
                           small_crop_area_min=0.05, small_crop_area_max=0.14))
    cfg = data_config(args)
    common = {"source": args.source, "batch_size": args.batch_size,
              "image_size": args.image_size, "blur": bool(args.blur),
              "cpus": os.cpu_count()}
    results, shards = collections.defaultdict(list), {}
    for case in cases.split(",") * args.repeats:
        steps, warmup = args.steps, args.warmup
        if case == "train_two_views":
            iterator = input_pipeline.train_iterator(cfg, global_batch_size=args.batch_size,
                                                     seed=0, process_index=0, process_count=1)
        elif case == "train_multi_crop":
            iterator = input_pipeline.train_iterator(multi_crop, global_batch_size=args.batch_size,
                                                     seed=0, process_index=0, process_count=1)
        elif case == "reference_two_views":
            if not args.reference_data_util:
                raise ValueError("case reference_two_views needs --reference_data_util=PATH")
            iterator = reference_iterator(load_reference(args.reference_data_util), cfg,
                                          args.batch_size)
        elif case in ("image_text_folder", "image_text_wds", "image_text_tfrecord"):
            fmt = case.rsplit("_", 1)[1]
            source = args.source if fmt == "folder" else shard_source(args, fmt, shards)
            iterator = image_text_pipeline.train_iterator(
                image_text_config(args, source), global_batch_size=args.batch_size, seed=0,
                process_index=0, process_count=1)
        elif case == "eval":
            iterator = input_pipeline.eval_iterator(cfg, args.eval_split,
                                                    global_batch_size=args.batch_size,
                                                    process_index=0, process_count=1)
            # Eval ends after one pass: warm up on at most half of it.
            batches = -(-data_sources.num_examples(cfg, args.eval_split) // args.batch_size)
            warmup = min(args.warmup, batches // 2)
            steps = min(args.steps, batches - warmup)
        else:
            raise SystemExit(f"unknown case {case!r}: use train_two_views, train_multi_crop, "
                             "reference_two_views, eval, image_text_folder, image_text_wds "
                             "and/or image_text_tfrecord")
        results[case].append(measure(iterator, args.batch_size, steps, warmup))
        print(json.dumps({"case": case, **common, **results[case][-1]}), flush=True)
    median = lambda case, key: statistics.median(r[key] for r in results[case])  # noqa: E731
    for case in ("image_text_wds", "image_text_tfrecord"):
        if {case, "image_text_folder"} <= set(results):
            print(json.dumps({
                "case": "ratio", **common, "repeats": args.repeats,
                f"examples_per_sec_{case}_over_folder": round(
                    median(case, "examples_per_sec")
                    / median("image_text_folder", "examples_per_sec"), 3),
                f"cpu_per_example_folder_over_{case}": round(
                    median("image_text_folder", "cpu_us_per_example")
                    / median(case, "cpu_us_per_example"), 3)}), flush=True)
    if {"train_two_views", "reference_two_views"} <= set(results):
        print(json.dumps({
            "case": "ratio", **common, "repeats": args.repeats,
            "examples_per_sec_ours_over_reference": round(
                median("train_two_views", "examples_per_sec")
                / median("reference_two_views", "examples_per_sec"), 3),
            "cpu_per_example_reference_over_ours": round(
                median("reference_two_views", "cpu_us_per_example")
                / median("train_two_views", "cpu_us_per_example"), 3)}), flush=True)


if __name__ == "__main__":
    cli.with_one_line_errors(main)()
