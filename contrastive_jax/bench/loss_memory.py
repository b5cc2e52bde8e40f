"""Peak temporary memory of SigLIP's loss + gradient: all_gather vs ring, per device.

    python -m contrastive_jax.bench.loss_memory [--devices=8] [--dim=64] [--sizes=128,256,512,1024]
    JAX_PLATFORMS=cpu python -m contrastive_jax.bench.loss_memory --topology=v5e:4x4 \
        --dim=768 --sizes=2048 --dtype=bfloat16     # a TPU slice's chips, compiled here ('.[aot]')

Compiles value_and_grad of `siglip_loss` (with respect to everything, and to the embeddings
alone) under jit + shard_map over D devices (simulated CPU
devices unless a real platform or a TPU slice (`--topology`, libtpu) is selected) and reads
XLA's buffer assignment through
`compiled.memory_analysis()`: `temp_size_in_bytes` is the scratch one device's program needs
beyond its arguments and outputs. Prints one JSON line per (impl, n). Nothing is executed, so
the figures are exact for the compiled program, not sampled.
"""

from __future__ import annotations

import os
import sys


def _set_device_count_from_argv() -> None:
    """XLA reads the simulated device count at start-up, so set it before jax is imported."""
    devices = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--devices=")), "8")
    if any(a.startswith("--topology=") for a in sys.argv):
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    elif "--platform=cpu" in sys.argv or not any(a.startswith("--platform=") for a in sys.argv):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                                   + f" --xla_force_host_platform_device_count={devices}")


_set_device_count_from_argv()

import json  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from absl import app, flags  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

from contrastive_jax import cli, losses, parallel  # noqa: E402

flags.DEFINE_integer("devices", 8, "Number of devices (simulated on CPU).")
flags.DEFINE_integer("dim", 64, "Embedding width d.")
flags.DEFINE_list("sizes", ["128", "256", "512", "1024"], "Per-device batch sizes n.")
flags.DEFINE_string("platform", "cpu", "jax platform to compile for (cpu, gpu, tpu).")
flags.DEFINE_string("dtype", "float32", "Embedding dtype.")
flags.DEFINE_string("topology", None, "A TPU slice (v5e:4x4 ...) to compile for, instead of "
                    "--platform's devices.")
FLAGS = flags.FLAGS


# Which inputs get gradients: everything a training step differentiates, or the embeddings alone
# (a frozen scale and bias, or the loss inside gradient caching's embedding step).
GRADIENTS = {"all": (0, 1, 2, 3), "embeddings": (0, 1)}


def compiled_loss_and_grad(impl: str, per_device: int, dim: int, mesh, dtype,
                           gradients: str = "all"):
    """The compiled per-device program of SigLIP's loss and its gradients."""
    argnums = GRADIENTS[gradients]

    def per_device_fn(img, txt, scale, bias):
        loss_fn = lambda *args: losses.siglip_loss(*args, axis_name=parallel.AXIS, impl=impl)
        loss, grads = jax.value_and_grad(loss_fn, argnums=argnums)(img, txt, scale, bias)
        return jax.lax.pmean(loss, parallel.AXIS), grads

    grad_specs = (P(parallel.AXIS), P(parallel.AXIS), P(), P())[:len(argnums)]
    fn = parallel.wrap(per_device_fn, "shard_map", mesh,
                       in_specs=(P(parallel.AXIS), P(parallel.AXIS), P(), P()),
                       out_specs=(P(), grad_specs))
    num_devices = mesh.devices.size
    embeddings = jax.ShapeDtypeStruct((num_devices * per_device, dim), dtype,
                                      sharding=NamedSharding(mesh, P(parallel.AXIS)))
    scalar = jax.ShapeDtypeStruct((), jnp.float32, sharding=NamedSharding(mesh, P()))
    return fn.lower(embeddings, embeddings, scalar, scalar).compile()


def main(argv) -> None:
    del argv
    if FLAGS.topology:
        from contrastive_jax.compilation import tpu_topology
        devices = tpu_topology.slice_devices(tpu_topology.parse_slice(FLAGS.topology))
    else:
        devices = jax.devices(FLAGS.platform)[:FLAGS.devices]
    mesh = parallel.make_mesh(devices)
    dtype = jnp.dtype(FLAGS.dtype)
    for n in map(int, FLAGS.sizes):
        row = {"devices": len(devices), "per_device": n, "dim": FLAGS.dim,
               "platform": devices[0].platform, "dtype": dtype.name}
        for gradients in GRADIENTS:
            suffix = "" if gradients == "all" else "_embedding_grads_only"
            for impl in ("all_gather", "ring"):
                memory = compiled_loss_and_grad(impl, n, FLAGS.dim, mesh, dtype,
                                                gradients).memory_analysis()
                row[f"{impl}_temp_bytes{suffix}"] = int(memory.temp_size_in_bytes)
            row[f"ring_over_all_gather{suffix}"] = round(
                row[f"ring_temp_bytes{suffix}"] / row[f"all_gather_temp_bytes{suffix}"], 4)
        row["n_by_n_logits_bytes"] = n * n * 4
        row["n_by_N_logits_bytes"] = n * n * len(devices) * 4
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    app.run(cli.with_one_line_errors(main), flags_parser=cli.absl_flags_parser)
