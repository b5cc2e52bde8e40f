"""Compile a config's train step for a TPU slice on any host, and read what the compiler says.

`compile_step(config, tpu_slice)` builds the state and the step as training does
(`train_step.build_program`: the same model, optimizer, state shardings, `parallel`, scan / remat,
`grad_cache_chunks`, dtype) from shapes alone, lowers the step for the slice's devices and
compiles it with libtpu. It returns the per-chip memory (arguments, temporaries, code; the
state's buffers are donated, as in training), whether that fits the chip's HBM, the FLOPs of the
step's matrix products (`flops.jaxpr_flops`), the collectives in the compiled program with
their sizes, and a roofline estimate of the step time. When the compiler runs out of memory, the
figures come from its message. The engine of `python -m contrastive_jax.aot`.
"""

from __future__ import annotations

import math
import os
import re
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from contrastive_jax import config_checks, parallel, train_step
from contrastive_jax.compilation import flops, tpu_topology
from contrastive_jax.compilation.tpu_topology import GIB, Slice
from contrastive_jax.parallel.layout import Layout

# Classes of TFDS datasets the configs name, so a slice check needs no dataset on disk; other
# sources are looked up without reading data (folder: its class folders), or `num_classes`.
KNOWN_NUM_CLASSES = {"imagenet2012": 1000, "cifar10": 10, "cifar100": 100, "mnist": 10,
                     "coco_captions": 0}
# The schedule's length changes constants in the program, not its shapes or memory: a config
# that counts epochs is compiled with this many steps.
NOMINAL_STEPS = 10_000
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "collective-permute",
               "all-to-all")
# Bytes each chip sends over ICI per byte of an op's largest buffer, for ring algorithms over n
# chips: an all-reduce is a reduce-scatter then an all-gather.
_TRAFFIC = {"all-reduce": lambda n: 2 * (n - 1) / n, "all-gather": lambda n: (n - 1) / n,
            "reduce-scatter": lambda n: (n - 1) / n, "all-to-all": lambda n: (n - 1) / n,
            "collective-permute": lambda n: 1.0}


def num_classes_without_data(data_config: ml_collections.ConfigDict) -> int:
    """The number of classes of `data.source`, found without reading any data."""
    source = data_config.source
    kind, _, rest = source.partition(":")
    if kind == "tfds":
        name = rest.split(":")[0].split("/")[0]
        if name in KNOWN_NUM_CLASSES:
            return KNOWN_NUM_CLASSES[name]
    elif kind == "folder":
        split_dir = os.path.join(rest, data_config.train_split)
        if os.path.isdir(split_dir):
            return sum(os.path.isdir(os.path.join(split_dir, d)) for d in os.listdir(split_dir))
    elif source in ("demo", "synthetic"):
        return 10
    raise ValueError(f"cannot tell the number of classes of data.source={source!r} without "
                     "its data; pass --num_classes")


def slice_config(config: ml_collections.ConfigDict, num_chips: int
                 ) -> ml_collections.ConfigDict:
    """`config` as it is compiled for a slice: concrete step counts (`NOMINAL_STEPS` where it
    counts epochs) and, for "pmap", the same per-device step under shard_map (pmap cannot be
    lowered for devices this host does not have); refused as training would refuse it."""
    config = ml_collections.ConfigDict(config.to_dict())
    if config.parallel == "pmap":
        config.parallel = "shard_map"
    epochs = config.num_epochs or 1.0
    nominal_examples = config.batch_size * math.ceil(NOMINAL_STEPS / epochs)
    config = config_checks.resolve_steps(config, nominal_examples)
    config_checks.check_ranges(config)
    train_step.validate(config, num_chips)
    return config


def abstract_arguments(program: train_step.Program, config: ml_collections.ConfigDict,
                       layout: Layout):
    """(state, batch, rng) as `jax.ShapeDtypeStruct`s laid out as training lays them out: the
    state by its shardings, the global batch split over the `data` axis, the key replicated."""
    state = jax.tree.map(lambda s, sharding: jax.ShapeDtypeStruct(s.shape, s.dtype,
                                                                  sharding=sharding),
                         program.state_shapes, program.state_shardings)
    split = NamedSharding(layout.mesh, PartitionSpec(parallel.AXIS))
    batch = {name: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=split)
             for name, s in program.method.batch_shapes(config, config.batch_size).items()}
    key = jax.eval_shape(lambda: jax.random.PRNGKey(0))
    rng = jax.ShapeDtypeStruct(key.shape, key.dtype,
                               sharding=NamedSharding(layout.mesh, PartitionSpec()))
    return state, batch, rng


def per_chip_bytes(tree) -> int:
    """Bytes of one chip's shard of every leaf (the largest shard where they differ)."""
    return sum(math.prod(leaf.sharding.shard_shape(leaf.shape)) * np.dtype(leaf.dtype).itemsize
               for leaf in jax.tree.leaves(tree))


_SHAPE = re.compile(r"\b(pred|[suf]\d+|bf16|f8e\w+|c64|c128)\[([\d,]*)\]")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+) = (.*?)\s(" + "|".join(COLLECTIVES)
                          + r")(?:-start)?\(")
_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
_LOOP_BODY = re.compile(r"\swhile\(.*\bbody=%?([\w.\-]+)")
_CALLEE = re.compile(r"\b(?:calls|to_apply|body|condition|true_computation|false_computation)"
                     r"=%?([\w.\-]+)|branch_computations=\{([^}]*)\}")


def _largest_buffer_bytes(type_text: str) -> int:
    sizes = [math.prod(int(d) for d in dims.split(",") if d) * _itemsize(dtype)
             for dtype, dims in _SHAPE.findall(type_text)]
    return max(sizes, default=0)


def _itemsize(dtype: str) -> int:
    if dtype in ("pred", "s8", "u8") or dtype.startswith("f8"):
        return 1
    if dtype == "bf16":
        return 2
    if dtype in ("c64", "c128"):
        return int(dtype[1:]) // 8
    return max(int(dtype[1:]) // 8, 1)


def _computations(hlo_text: str) -> tuple[dict[str, list[str]], str | None]:
    """The instruction lines of each computation of an HLO module's text, and the entry's
    name."""
    computations: dict[str, list[str]] = {}
    entry, current = None, None
    for line in hlo_text.splitlines():
        header = _COMPUTATION.match(line)
        if header and not line.startswith(" "):
            current = header.group(1)
            computations[current] = []
            entry = current if line.startswith("ENTRY") else entry
        elif current is not None:
            computations[current].append(line)
    return computations, entry


def collectives(hlo_text: str) -> list[dict[str, Any]]:
    """The collective ops of a compiled HLO module: kind, the bytes of its largest buffer, and
    whether it sits in a loop body. The TPU compiler's HLO does not say how often a loop runs,
    so an op in a loop (the SigLIP ring's permutes, scanned layers' gathers) counts once."""
    computations, entry = _computations(hlo_text)
    in_loop: dict[str, bool] = {}

    def visit(name: str, looping: bool) -> None:
        if name not in computations or in_loop.get(name, False) or (
                name in in_loop and not looping):
            return
        in_loop[name] = looping
        for line in computations[name]:
            loop = _LOOP_BODY.search(line)
            for callee, branches in _CALLEE.findall(line):
                for inner in ([b.strip().lstrip("%") for b in branches.split(",")]
                              if branches else [callee]):
                    visit(inner, looping or bool(loop and inner == loop.group(1)))

    if entry is not None:
        visit(entry, False)
    found = []
    for name, lines in computations.items():
        for line in lines:
            op = _INSTRUCTION.match(line)
            if op:
                found.append({"op": op.group(3), "name": op.group(1),
                              "bytes": _largest_buffer_bytes(op.group(2)),
                              "in_loop": in_loop.get(name, False)})
    return found


def collective_summary(ops: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Per kind of collective: how many the program holds, their bytes in all, and how many of
    them sit in loops (and so run more often than counted)."""
    summary: dict[str, dict[str, int]] = {}
    for op in ops:
        entry = summary.setdefault(op["op"], {"count": 0, "bytes": 0, "in_loops": 0})
        entry["count"] += 1
        entry["bytes"] += op["bytes"]
        entry["in_loops"] += op["in_loop"]
    return summary


def roofline(chip: tpu_topology.Chip, num_chips: int, flops_per_step: float,
             hbm_bytes_accessed: float | None, ops: list[dict[str, Any]] | None
             ) -> dict[str, float]:
    """Lower bounds on the step time, seconds: the chips' matrix units at their bf16 peak, each
    chip's HBM traffic (the compiler's cost analysis) at its bandwidth, and each chip's ICI
    traffic of ring collectives at its bidirectional bandwidth, each counted once (where the
    program and the chip's figures give them). The estimate is the largest."""
    times = {"compute_seconds": flops_per_step / num_chips / (chip.peak_bf16_tflops * 1e12)}
    if hbm_bytes_accessed is not None:
        times["hbm_seconds"] = hbm_bytes_accessed / (chip.hbm_gbytes_per_sec * 1e9)
    if ops is not None and chip.ici_gbytes_per_sec is not None and num_chips > 1:
        traffic = sum(op["bytes"] * _TRAFFIC[op["op"]](num_chips) for op in ops)
        times["ici_seconds"] = traffic / (chip.ici_gbytes_per_sec * 1e9)
    times["step_seconds_estimate"] = max(times.values())
    return times


def _bytes_accessed(compiled) -> float | None:
    analysis = compiled.cost_analysis()
    analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
    value = (analysis or {}).get("bytes accessed")
    return float(value) if value is not None and value >= 0 else None


def compile_step(config: ml_collections.ConfigDict, tpu_slice: Slice, devices: list,
                 hbm_bytes: float, num_classes: int) -> dict[str, Any]:
    """Compiles `config`'s train step for `tpu_slice` (its `devices`); the report as a dict
    (see the module docstring). `config` comes from `slice_config`."""
    layout = Layout.from_config(config, devices)
    program = train_step.build_program(config, num_classes, layout)
    state, batch, rng = abstract_arguments(program, config, layout)
    started = time.perf_counter()
    traced = jax.jit(program.step, donate_argnums=0).trace(state, batch, rng)
    report: dict[str, Any] = {
        "topology": tpu_slice.name, "chips": tpu_slice.num_chips, "method": config.method,
        "parallel": config.parallel, "batch_size": config.batch_size,
        "examples_per_chip": config.batch_size // tpu_slice.num_chips,
        "dtype": config.model.dtype,
        "grad_cache_chunks": config.grad_cache_chunks,
        "remat_policy": config.model.get("remat_policy", "none"),
        "flops_per_step": flops.jaxpr_flops(traced.jaxpr), "hbm_bytes": hbm_bytes}
    argument_bytes = per_chip_bytes((state, batch, rng))
    try:
        compiled = traced.lower().compile()
    except Exception as error:  # XLA reports running out of memory as a runtime error.
        out_of_memory = tpu_topology.parse_out_of_memory(str(error))
        if out_of_memory is None:
            raise
        report.update(_out_of_memory_report(out_of_memory, argument_bytes))
        ops, bytes_accessed = None, None  # Not compiled: no program to read them from.
    else:
        memory = compiled.memory_analysis()
        total = (memory.argument_size_in_bytes + memory.output_size_in_bytes
                 - memory.alias_size_in_bytes + memory.temp_size_in_bytes
                 + memory.generated_code_size_in_bytes)
        report.update(argument_bytes=memory.argument_size_in_bytes,
                      output_bytes=memory.output_size_in_bytes - memory.alias_size_in_bytes,
                      temp_bytes=memory.temp_size_in_bytes,
                      code_bytes=memory.generated_code_size_in_bytes, per_chip_bytes=total,
                      fits=total <= hbm_bytes)
        ops, bytes_accessed = collectives(compiled.as_text()), _bytes_accessed(compiled)
    report["compile_seconds"] = round(time.perf_counter() - started, 1)
    report["collectives"] = collective_summary(ops or [])
    report.update(roofline(tpu_slice.chip, tpu_slice.num_chips, report["flops_per_step"],
                           bytes_accessed, ops))
    return report


def _out_of_memory_report(out_of_memory: tpu_topology.OutOfMemory, argument_bytes: int
                          ) -> dict[str, Any]:
    temp = out_of_memory.needed - (argument_bytes if out_of_memory.includes_arguments else 0)
    total = argument_bytes + temp
    return {"argument_bytes": argument_bytes, "output_bytes": 0, "temp_bytes": temp,
            "code_bytes": 0, "per_chip_bytes": total, "fits": False,
            "compiler_available_bytes": out_of_memory.available}


def alternatives(config: ml_collections.ConfigDict, tpu_slice: Slice
                 ) -> list[tuple[str, ml_collections.ConfigDict, Slice]]:
    """Single changes that lower per-chip memory, to try when a config does not fit: fsdp,
    remat of the transformer blocks, more gradient-caching chunks, and larger slices."""
    from contrastive_jax import methods
    method = methods.get(config.method)
    splits_at_embeddings = method.loss_parts is not None
    options: list[tuple[str, dict, Slice]] = []
    if splits_at_embeddings and config.parallel != "fsdp":
        options.append(("--config.parallel=fsdp", {"parallel": "fsdp"}, tpu_slice))
    if config.model.get("remat_policy", None) == "none":
        options.append(("--config.model.remat_policy=nothing_saveable",
                        {"model.remat_policy": "nothing_saveable"}, tpu_slice))
    per_chip = config.batch_size // tpu_slice.num_chips
    chunks = config.grad_cache_chunks
    if splits_at_embeddings and config.model.get("text_dropout", 0.0) == 0.0:
        for more in (2 * chunks, 4 * chunks):
            if per_chip % more == 0:
                options.append((f"--config.grad_cache_chunks={more}",
                                {"grad_cache_chunks": more}, tpu_slice))
    for larger in tpu_topology.larger_slices(tpu_slice, 2):
        if config.batch_size % larger.num_chips == 0:
            options.append((f"--topology={larger.name}", {}, larger))
    result = []
    for label, overrides, target in options:
        changed = ml_collections.ConfigDict(config.to_dict())
        for key, value in overrides.items():
            parent, _, leaf = key.rpartition(".")
            (changed[parent] if parent else changed)[leaf] = value
        result.append((label, changed, target))
    return result


def gib(num_bytes: float) -> float:
    return round(num_bytes / GIB, 2)
