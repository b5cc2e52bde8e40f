"""TPU slices without the hardware: their chips' figures, and their devices from libtpu.

`slice_devices("v5e:16x16")` returns the 256 devices of a v5e slice as
`jax.experimental.topologies` describes them (libtpu from the registry, `JAX_PLATFORMS=cpu`), so a
program can be compiled for the slice on any host. A slice is named by its topology
(`v5e:4x4`, `v4:2x2x2`, `v5p:4x4x4`, `v6e:8x8`, chips along each axis) or by its Cloud
accelerator type (`v5litepod-16` / `v5e-16`, `v4-16`, `v5p-16`, `v6e-16`; v4 and v5p count
TensorCores, two per chip). v4 and v5p chips are compiled as one device each (megacore), as
JAX runs them.
"""

from __future__ import annotations

import math
import os
import re
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

GIB = 2**30


class Chip(NamedTuple):
    """One TPU generation's published per-chip figures (Cloud TPU system architecture pages,
    docs.cloud.google.com/tpu/docs/{v4,v5e,v5p,v6e}): dense bf16 peak, HBM capacity and
    bandwidth, and bidirectional inter-chip interconnect bandwidth (None where the page gives
    none)."""

    name: str
    peak_bf16_tflops: float
    hbm_gib: float
    hbm_gbytes_per_sec: float
    ici_gbytes_per_sec: float | None
    cores_per_chip: int  # How the accelerator type counts: v4-16 is 8 chips.
    config_name: str  # libtpu's chip configuration: v4 and v5p chips as one device each.
    shapes: tuple[str, ...]  # Standard slice shapes, smallest first.


_2D = ("1x1", "2x2", "2x4", "4x4", "4x8", "8x8", "8x16", "16x16")
_3D = ("2x2x1", "2x2x2", "2x2x4", "2x4x4", "4x4x4", "4x4x8", "4x8x8", "8x8x8", "8x8x16",
       "8x16x16")
CHIPS = {
    "v4": Chip("v4", 275.0, 32.0, 1200.0, None, 2, "megacore", _3D),
    "v5e": Chip("v5e", 197.0, 16.0, 819.0, 400.0, 1, "default", _2D),
    "v5p": Chip("v5p", 459.0, 95.0, 2765.0, 1200.0, 2, "megacore", _3D),
    "v6e": Chip("v6e", 918.0, 32.0, 1640.0, None, 1, "default", _2D),
}
# libtpu's names for the generations, where they differ from the Cloud names.
_LIBTPU_NAMES = {"v5p": "v5"}
_ACCELERATOR_PREFIXES = {"v5litepod": "v5e", "v5e": "v5e", "v4": "v4", "v5p": "v5p",
                         "v6e": "v6e"}


class Slice(NamedTuple):
    chip: Chip
    shape: str  # Chips along each axis: "16x16", "4x4x8".

    @property
    def name(self) -> str:
        return f"{self.chip.name}:{self.shape}"

    @property
    def num_chips(self) -> int:
        return math.prod(int(n) for n in self.shape.split("x"))


def parse_slice(name: str) -> Slice:
    """The slice a topology (`v5e:4x4`) or accelerator type (`v5litepod-16`, `v4-32`) names;
    a ValueError naming the choices for anything else."""
    match = re.fullmatch(r"(v\w+):(\d+(?:x\d+){1,2})", name)
    if match and match.group(1) in CHIPS:
        chip = CHIPS[match.group(1)]
        if match.group(2).count("x") + 1 != len(chip.shapes[0].split("x")):
            raise ValueError(f"topology {name!r}: a {chip.name} slice has "
                             f"{len(chip.shapes[0].split('x'))} axes, e.g. {chip.shapes[3]}")
        if match.group(2) not in chip.shapes:
            raise ValueError(f"topology {name!r} is not a standard {chip.name} slice; choose "
                             f"one of {[f'{chip.name}:{shape}' for shape in chip.shapes]}")
        return Slice(chip, match.group(2))
    match = re.fullmatch(r"(v\w+)-(\d+)", name)
    if match and match.group(1) in _ACCELERATOR_PREFIXES:
        chip = CHIPS[_ACCELERATOR_PREFIXES[match.group(1)]]
        count, cores = int(match.group(2)), chip.cores_per_chip
        for shape in chip.shapes:
            if Slice(chip, shape).num_chips * cores == count:
                return Slice(chip, shape)
        raise ValueError(f"accelerator type {name!r} is not a standard {chip.name} slice; "
                         f"choose one of "
                         f"{[f'{match.group(1)}-{Slice(chip, s).num_chips * cores}' for s in chip.shapes]}")
    raise ValueError(f"unknown topology {name!r}; give one such as v5e:16x16, v4:2x2x4, "
                     f"v5p:4x4x4, v6e:8x8, or an accelerator type such as v5litepod-256, "
                     f"v4-32, v5p-128 (chips: {sorted(CHIPS)})")


def larger_slices(tpu_slice: Slice, count: int) -> list[Slice]:
    """The next `count` standard slices of the same chip with more chips."""
    bigger = [Slice(tpu_slice.chip, s) for s in tpu_slice.chip.shapes
              if Slice(tpu_slice.chip, s).num_chips > tpu_slice.num_chips]
    return bigger[:count]


def slice_devices(tpu_slice: Slice) -> list:
    """The slice's devices, one per chip, from libtpu's topology description."""
    from jax.experimental import topologies
    # Compiling touches no TPU, so several processes may hold libtpu at once (else the second
    # waits on /tmp/libtpu_lockfile and fails).
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    try:
        topology = topologies.get_topology_desc(
            topology_name=f"{_LIBTPU_NAMES.get(tpu_slice.chip.name, tpu_slice.chip.name)}:"
                          f"{tpu_slice.shape}",
            platform="tpu", chip_config_name=tpu_slice.chip.config_name)
    except Exception as error:  # No libtpu, or a shape it does not know.
        raise ValueError(f"cannot describe TPU slice {tpu_slice.name} ({_first_line(error)}); "
                         "is libtpu installed? pip install -e '.[aot]'") from error
    devices = list(topology.devices)
    if len(devices) != tpu_slice.num_chips:
        raise ValueError(f"libtpu describes {tpu_slice.name} with {len(devices)} devices, "
                         f"expected {tpu_slice.num_chips}")
    return devices


def available_hbm_bytes(device) -> float | None:
    """The HBM the compiler lets a program use on `device`'s chip, read from its own
    out-of-memory message for a program that needs 256 GiB; None if it does not say."""
    mesh = Mesh(np.asarray([device]), ("probe",))
    replicated = NamedSharding(mesh, PartitionSpec())
    size = 2**18  # A [size, size] float32 running sum: 256 GiB of temporaries.

    def needs_256_gib(x):
        return jnp.cumsum(jnp.broadcast_to(x, (size, size)) * jnp.arange(size, dtype=x.dtype),
                          axis=0).sum()

    try:
        jax.jit(needs_256_gib, out_shardings=replicated).lower(
            jax.ShapeDtypeStruct((size,), jnp.float32, sharding=replicated)).compile()
    except Exception as error:
        parsed = parse_out_of_memory(str(error))
        return parsed.available if parsed else None
    return None


_SIZE = r"([\d.]+)\s*([KMGT]?)i?B?"
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def _bytes(number: str, unit: str) -> float:
    return float(number) * _UNITS[unit]


class OutOfMemory(NamedTuple):
    needed: float  # Bytes the compiler says the program needs,
    includes_arguments: bool  # ... counting its arguments, or its temporaries alone.
    available: float  # Bytes of HBM the compiler lets a program use.


def parse_out_of_memory(message: str) -> OutOfMemory | None:
    """What an XLA TPU out-of-memory message says, in its two known forms ("the total memory
    required for HLO temporaries (X) exceeds available HBM (Y)", "Used X of Y hbm"); None if
    the message is not one of them."""
    needed = re.search(r"required for HLO temporaries \(" + _SIZE + r"\)", message)
    available = re.search(r"available HBM \(" + _SIZE + r"\)", message)
    if needed and available:
        return OutOfMemory(_bytes(*needed.groups()), False, _bytes(*available.groups()))
    used = re.search(r"Used " + _SIZE + " of " + _SIZE + " hbm", message)
    if used:
        return OutOfMemory(_bytes(*used.groups()[:2]), True, _bytes(*used.groups()[2:]))
    return None


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__
