"""Does a config fit a TPU slice, and how fast might it step? Compiled here, for the slice.

    JAX_PLATFORMS=cpu python -m contrastive_jax.aot --config=configs/siglip_vit_b16.py \
        --topology=v5e:16x16 [--config.key=value ...]      # pip install -e '.[aot]'

Builds the state and the train step exactly as training does, from shapes only (no data read,
no parameters made), and compiles the step with libtpu for the slice's chips
(`compile_report.compile_step`). Prints a short table and, last, one JSON line: `topology`,
`chips`, `per_chip_bytes` (arguments, temporaries and code on one chip), `hbm_bytes` (what the
compiler lets a program use), `fits`, `flops_per_step`, the collectives with their sizes and
`step_seconds_estimate` (a roofline lower bound). When the step does not fit, one line says by
how much, and each single change that might help (fsdp, remat, more gradient-caching chunks,
larger slices) is compiled in turn; those that fit are listed. Bad input (an unknown topology, a
batch that does not divide over the chips, an unknown config key) is one `error:` line and
exit status 1.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Sequence

from absl import flags
from ml_collections import config_flags

from contrastive_jax import cli

# Compiling for a slice needs no accelerator here, and should not grab one.
os.environ.setdefault("JAX_PLATFORMS", "cpu")


def parse_flags(argv: Sequence[str]) -> flags.FlagValues:
    """The command line's flags, in their own FlagValues (no global flags on import)."""
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "Experiment config (configs/*.py[:ARG]).",
                                    flag_values=values, lock_config=True)
    flags.DEFINE_string("topology", None, "TPU slice: v5e:16x16, v4:2x2x4, v5p:4x4x4, v6e:8x8, "
                        "or an accelerator type such as v5litepod-256, v4-32.",
                        flag_values=values)
    flags.DEFINE_integer("num_classes", None, "Classes of the training data, where the source "
                         "cannot tell without its data.", flag_values=values)
    flags.DEFINE_bool("alternatives", True, "When the step does not fit, compile single "
                      "changes that might make it fit.", flag_values=values)
    flags.mark_flags_as_required(["config", "topology"], flag_values=values)
    cli.parse_absl_flags(argv, values)
    return values


def _size(num_bytes: float) -> str:
    return (f"{num_bytes / 2**30:.2f} GiB" if num_bytes >= 2**30 / 10
            else f"{num_bytes / 2**20:.1f} MiB")


def _table(report: dict[str, Any]) -> str:
    lines = [
        f"slice       {report['topology']}: {report['chips']} chips, "
        f"{report['examples_per_chip']} examples per chip ({report['method']}, "
        f"{report['parallel']}, {report['dtype']}, grad_cache_chunks "
        f"{report['grad_cache_chunks']}, remat {report['remat_policy']})",
        f"per chip    {_size(report['per_chip_bytes'])} = arguments "
        f"{_size(report['argument_bytes'])} + outputs {_size(report['output_bytes'])} + "
        f"temporaries {_size(report['temp_bytes'])} + code {_size(report['code_bytes'])}, of "
        f"{_size(report['hbm_bytes'])} HBM: {'fits' if report['fits'] else 'DOES NOT FIT'}",
        f"FLOPs       {report['flops_per_step']:.3g} per step (matrix products)",
    ]
    for op, entry in sorted(report["collectives"].items()):
        loops = f", {entry['in_loops']} of them in loops (counted once)" if entry["in_loops"] else ""
        lines.append(f"collective  {op}: {entry['count']} ops, {_size(entry['bytes'])}{loops}")
    parts = ", ".join(f"{name.split('_')[0]} {report[name]:.3g} s" for name in
                      ("compute_seconds", "hbm_seconds", "ici_seconds") if name in report)
    lines.append(f"step        >= {report['step_seconds_estimate']:.3g} s ({parts}; roofline)")
    return "\n".join(lines)


def check(values: flags.FlagValues) -> dict[str, Any]:
    """Compiles the config for the slice (and, if it does not fit, its alternatives); prints
    the table and returns the report, with `alternatives_that_fit`."""
    from contrastive_jax.compilation import compile_report, tpu_topology
    tpu_slice = tpu_topology.parse_slice(values.topology)
    config = compile_report.slice_config(values.config, tpu_slice.num_chips)
    num_classes = (values.num_classes if values.num_classes is not None
                   else compile_report.num_classes_without_data(config.data))
    devices = tpu_topology.slice_devices(tpu_slice)
    hbm = tpu_topology.available_hbm_bytes(devices[0]) or tpu_slice.chip.hbm_gib * 2**30
    if values.config.parallel == "pmap":
        print("parallel    the config's pmap is compiled as shard_map: the same per-device step",
              flush=True)
    report = compile_report.compile_step(config, tpu_slice, devices, hbm, num_classes)
    print(_table(report), flush=True)
    if not report["fits"]:
        over = compile_report.gib(report["per_chip_bytes"] - report["hbm_bytes"])
        print(f"does not fit: {over} GiB per chip over the {compile_report.gib(hbm)} GiB of "
              f"{tpu_slice.chip.name} HBM", flush=True)
        report["alternatives_that_fit"] = (
            _fitting_alternatives(config, tpu_slice, num_classes) if values.alternatives
            else [])
    return report


def _fitting_alternatives(config, tpu_slice, num_classes: int) -> list[dict[str, Any]]:
    from contrastive_jax.compilation import compile_report, tpu_topology
    fitting = []
    for label, changed, target in compile_report.alternatives(config, tpu_slice):
        try:
            changed = compile_report.slice_config(changed, target.num_chips)
        except ValueError as error:
            print(f"  {label}: not possible ({error})", flush=True)
            continue
        devices = tpu_topology.slice_devices(target)
        hbm = tpu_topology.available_hbm_bytes(devices[0]) or target.chip.hbm_gib * 2**30
        report = compile_report.compile_step(changed, target, devices, hbm, num_classes)
        verdict = "fits" if report["fits"] else "does not fit"
        print(f"  {label}: {compile_report.gib(report['per_chip_bytes'])} GiB per chip, "
              f"{verdict}, >= {report['step_seconds_estimate']:.4f} s per step", flush=True)
        if report["fits"]:
            fitting.append({"change": label, "per_chip_bytes": report["per_chip_bytes"],
                            "step_seconds_estimate": report["step_seconds_estimate"]})
    return fitting


def main(argv: Sequence[str]) -> None:
    """The table and one JSON line; bad input is one `error:` line and exit status 1."""
    with cli.errors_as_one_line():
        report = check(parse_flags(argv))
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main(sys.argv)
