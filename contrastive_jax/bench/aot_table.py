"""Per-chip memory and step estimates of configs on TPU slices, compiled here (README's table).

    JAX_PLATFORMS=cpu python -m contrastive_jax.bench.aot_table \
        --configs=configs/simclr_imagenet.py,configs/siglip_vit_b16.py \
        --topologies=v5e:2x4,v5e:4x4,v4:2x2x2

For each config and slice, `compile_report.compile_step` as `python -m contrastive_jax.aot`
runs it (no alternatives), one JSON line per case: per-chip GiB, fits, the roofline estimate,
the FLOPs per step and the compile time. A case the config cannot run on (a batch that does not
divide over the chips) is a line with its `error`. With `--until_fits`, the slices of each chip
are tried in the order given and the first that fits ends that chip's search: a step that runs
out of memory fails to compile in seconds, one that fits takes minutes on 2 cores, and a
larger slice of the same chip only lowers the per-chip batch. Needs '.[aot]' (libtpu).
"""

from __future__ import annotations

import importlib.util
import json
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from absl import app, flags  # noqa: E402

from contrastive_jax import cli  # noqa: E402
from contrastive_jax.compilation import compile_report, tpu_topology

flags.DEFINE_list("configs", [], "Config files (configs/NAME.py[:ARG]).")
flags.DEFINE_list("topologies", [], "TPU slices, e.g. v5e:4x4,v4:2x2x2,v5p:2x2x4.")
flags.DEFINE_bool("until_fits", False, "Per config and chip, stop at the first slice that fits.")
FLAGS = flags.FLAGS


def load_config(path: str):
    """The config of `configs/NAME.py[:ARG]`, as `--config=` would load it."""
    file_name, _, arg = path.partition(":")
    spec = importlib.util.spec_from_file_location("config_module", file_name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg or None)


def main(argv) -> None:
    del argv
    hbm_by_chip: dict[str, float] = {}
    for path in FLAGS.configs:
        fitted: set[str] = set()
        for name in FLAGS.topologies:
            tpu_slice = tpu_topology.parse_slice(name)
            if tpu_slice.chip.name in fitted:
                continue
            row = {"config": path, "topology": tpu_slice.name, "chips": tpu_slice.num_chips}
            try:
                config = compile_report.slice_config(load_config(path), tpu_slice.num_chips)
            except ValueError as error:
                print(json.dumps({**row, "error": str(error)}), flush=True)
                continue
            devices = tpu_topology.slice_devices(tpu_slice)
            if tpu_slice.chip.name not in hbm_by_chip:
                hbm_by_chip[tpu_slice.chip.name] = tpu_topology.available_hbm_bytes(devices[0])
            report = compile_report.compile_step(
                config, tpu_slice, devices, hbm_by_chip[tpu_slice.chip.name],
                compile_report.num_classes_without_data(config.data))
            row.update({key: report[key] for key in (
                "method", "batch_size", "examples_per_chip", "parallel", "dtype", "fits",
                "flops_per_step", "step_seconds_estimate", "compile_seconds")})
            row["per_chip_gib"] = compile_report.gib(report["per_chip_bytes"])
            row["hbm_gib"] = compile_report.gib(report["hbm_bytes"])
            row["temp_gib"] = compile_report.gib(report["temp_bytes"])
            print(json.dumps(row), flush=True)
            if FLAGS.until_fits and report["fits"]:
                fitted.add(tpu_slice.chip.name)


if __name__ == "__main__":
    app.run(cli.with_one_line_errors(main), flags_parser=cli.absl_flags_parser)
