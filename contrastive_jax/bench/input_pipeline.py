"""Throughput of the input pipeline on this host: examples per second after warm-up.

    python -m contrastive_jax.bench.input_pipeline --source=folder:/tmp/cifar10 \
        --batch_size=256 --steps=50

prints one JSON line per case: "train_two_views" (decode + two augmented views per example) and
"eval" (decode + centre crop). Nothing runs on an accelerator; the figures say how many examples
per second this host's CPUs can feed a training step.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Iterator

import ml_collections

from contrastive_jax import input_pipeline


def data_config(args: argparse.Namespace) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        source=args.source, data_dir=args.data_dir, image_size=args.image_size,
        train_split="train", eval_split=args.eval_split, color_strength=args.color_strength,
        blur=args.blur, crop_area_min=0.08, solarize_prob=0.0, shuffle_files=True))


def measure(iterator: Iterator, batch_size: int, steps: int, warmup: int) -> dict:
    """Examples per second over `steps` batches, after `warmup` batches (start-up excluded)."""
    start = time.perf_counter()
    for _ in range(warmup):
        next(iterator)
    first = time.perf_counter() - start
    start = time.perf_counter()
    done = 0
    for _ in range(steps):
        try:
            next(iterator)
        except StopIteration:
            break
        done += 1
    seconds = max(time.perf_counter() - start, 1e-9)
    return {"examples_per_sec": round(done * batch_size / seconds, 1), "steps": done,
            "seconds": round(seconds, 3), "warmup_seconds": round(first, 3)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", default="demo")
    parser.add_argument("--data_dir", default="")
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--color_strength", type=float, default=0.5)
    parser.add_argument("--blur", type=int, default=0, help="1: Gaussian blur p=0.5 (ImageNet)")
    parser.add_argument("--eval_split", default="test")
    parser.add_argument("--cases", default="train_two_views,eval")
    args = parser.parse_args(argv)
    cfg = data_config(args)
    common = {"source": args.source, "batch_size": args.batch_size,
              "image_size": args.image_size, "blur": bool(args.blur),
              "cpus": os.cpu_count()}
    for case in args.cases.split(","):
        if case == "train_two_views":
            iterator = input_pipeline.train_iterator(cfg, global_batch_size=args.batch_size,
                                                     seed=0, process_index=0, process_count=1)
            steps, warmup = args.steps, args.warmup
        elif case == "eval":
            iterator = input_pipeline.eval_iterator(cfg, args.eval_split,
                                                    global_batch_size=args.batch_size,
                                                    process_index=0, process_count=1)
            # Eval ends after one pass: warm up on at most half of it.
            batches = -(-input_pipeline.num_examples(cfg, args.eval_split) // args.batch_size)
            warmup = min(args.warmup, batches // 2)
            steps = min(args.steps, batches - warmup)
        else:
            raise SystemExit(f"unknown case {case!r}: use train_two_views and/or eval")
        result = measure(iterator, args.batch_size, steps, warmup)
        print(json.dumps({"case": case, **common, **result}), flush=True)


if __name__ == "__main__":
    main()
