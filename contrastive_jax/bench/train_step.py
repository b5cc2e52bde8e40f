"""Throughput of one train step of any config's method on device-resident synthetic batches.

    python -m contrastive_jax.bench.train_step --config=configs/demo.py [--steps=5] \
        [--cases=8x20,16x28] [--config.key=value ...]

Each case (BASE_WIDTHxIMAGE_SIZE; the base width matters for ResNets only) builds the config's
model at that size, compiles the wrapped step, and times `--steps` steps after one warm-up step on
random batches of the method's shapes (`batch_shapes`), or, with `--config.data.augment_on=device`,
on views drawn on the devices every step from a resident split (the step plus its augmentation).
Prints one JSON line per case with seconds per step, examples per second (an example = one
image with its two views, or one image-text pair) and the training state's bytes on one device
(`--config.parallel=fsdp` splits it over the devices), the FLOPs of the step's matrix products
per example (`flops.py`, counted from the step's jaxpr with remat off: model FLOPs) and the
model FLOP/s per device; with `--peak_tflops` (the device's dense peak in the config's dtype,
e.g. 989 for an H100's bfloat16) also the MFU.
"""

from __future__ import annotations

import itertools
import json
import time
from typing import Iterator

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from contrastive_jax import cli, methods, train_step
from contrastive_jax.compilation import compile_report, flops
from contrastive_jax.data import device_input
from contrastive_jax.parallel import fsdp
from contrastive_jax.parallel.layout import Layout

config_flags.DEFINE_config_file("config", "configs/demo.py", "Config whose model is timed.")
flags.DEFINE_integer("steps", 5, "Timed steps per case.")
flags.DEFINE_list("cases", [], "BASE_WIDTHxIMAGE_SIZE cases; empty: the config's own.")
flags.DEFINE_integer("resident_examples", 50_000,
                     "Images kept on the devices when --config.data.augment_on=device.")
flags.DEFINE_float("peak_tflops", 0.0, "Dense peak TFLOP/s of one device, for the MFU; 0: none.")
FLAGS = flags.FLAGS


def random_batch(shapes: dict[str, jax.ShapeDtypeStruct], seed: int = 0) -> dict[str, np.ndarray]:
    """Host arrays of the given shapes: floats uniform in [0, 1), integers in [1, 200)."""
    rng = np.random.default_rng(seed)
    return {name: (rng.random(s.shape).astype(s.dtype) if np.issubdtype(s.dtype, np.floating)
                   else rng.integers(1, 200, s.shape).astype(s.dtype))
            for name, s in shapes.items()}


def device_batches(config, layout: Layout) -> Iterator:
    """Batches on the devices: one random batch of the method's shapes reused every step, or,
    with `data.augment_on = "device"`, views drawn on the devices every step from a resident
    split of `FLAGS.resident_examples` random uint8 images (the step plus its augmentation)."""
    method = methods.get(config.method)
    if config.data.augment_on != "device":
        batch = layout.to_devices(
            random_batch(method.batch_shapes(config, config.batch_size // jax.process_count())))
        return itertools.repeat(batch)
    size = config.data.image_size
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (FLAGS.resident_examples, size, size, 3), np.uint8)
    labels = rng.integers(0, 10, FLAGS.resident_examples).astype(np.int32)
    split = device_input.ResidentSplit(images, labels, layout)
    return device_input.resident_batches(config.data, split, global_batch_size=config.batch_size,
                                         seed=0, start_step=0, layout=layout)


def time_step(config, steps: int) -> dict:
    """Seconds per step of the config's method's train step on random device-resident
    batches."""
    layout = Layout.from_config(config)
    config = config.copy_and_resolve_references()
    config.total_steps = steps + 1  # The schedule of this many steps, as before.
    config.seed = 0
    program = train_step.build_program(config, 10, layout)  # As training builds it.
    host_state = jax.device_get(jax.jit(program.init_state)())
    step, shardings = program.step, program.state_shardings
    state = layout.place_state(host_state, shardings)
    state_bytes = fsdp.bytes_per_device(state) if layout.kind == "shard_map" else sum(
        np.asarray(x).nbytes for x in jax.tree.leaves(host_state))
    batches = device_batches(config, layout)
    key = layout.replicate(jax.random.PRNGKey(1))
    state, metrics = step(state, next(batches), key)
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = step(state, next(batches), key)
    jax.block_until_ready(metrics)
    seconds = (time.perf_counter() - start) / steps
    row = {"seconds_per_step": round(seconds, 4),
           "examples_per_sec": round(config.batch_size / seconds, 1),
           "state_mb_per_device": round(state_bytes / 2**20, 2)}
    if config.data.augment_on != "device":  # The step alone, without the augmentation.
        per_example = model_flops_per_step(config) / config.batch_size
        per_device = per_example * config.batch_size / seconds / jax.device_count()
        row["train_gflops_per_example"] = float(f"{per_example / 1e9:.4g}")
        row["model_tflops_per_sec_per_device"] = round(per_device / 1e12, 3)
        if FLAGS.peak_tflops > 0:
            row["mfu"] = round(per_device / (FLAGS.peak_tflops * 1e12), 4)
    return row


def model_flops_per_step(config) -> float:
    """FLOPs of the step's matrix products over the global batch, from its jaxpr, with the
    transformer blocks' remat off (model FLOPs: recomputation is not counted)."""
    config = config.copy_and_resolve_references()
    if "remat_policy" in config.model:
        config.model.remat_policy = "none"
    if config.parallel == "pmap":  # The same per-device step, on global shapes.
        config.parallel = "shard_map"
    layout = Layout.from_config(config)
    program = train_step.build_program(config, 10, layout)
    return flops.step_flops(program.step,
                            *compile_report.abstract_arguments(program, config, layout))


def main(argv) -> None:
    del argv
    config = FLAGS.config
    cases = [tuple(map(int, case.split("x"))) for case in FLAGS.cases] or [
        (config.model.base_width, config.data.image_size)]
    for base_width, image_size in cases:
        case = config.copy_and_resolve_references()
        case.model.base_width, case.data.image_size = base_width, image_size
        row = {"framework": "jax", "model": case.model.name, "base_width": base_width,
               "image_size": image_size,
               "batch_size": case.batch_size, "dtype": case.model.dtype,
               "parallel": case.parallel, "augment_on": case.data.augment_on,
               "devices": jax.device_count(),
               "platform": jax.devices()[0].platform}
        row.update(time_step(case, FLAGS.steps))
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    app.run(cli.with_one_line_errors(main), flags_parser=cli.absl_flags_parser)
