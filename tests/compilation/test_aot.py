"""Compiling for a TPU slice on this CPU host (libtpu, no TPU): the report against the compiled
object, a step that does not fit, the collectives parser, the slice names and the command."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from contrastive_jax import config_defaults, train_step
from contrastive_jax.compilation import compile_report, tpu_topology
from contrastive_jax.parallel.layout import Layout

from support import REPO

SLICE = tpu_topology.parse_slice("v5e:2x2")


def tiny_config(batch_size: int = 16, image_size: int = 8) -> ml_collections.ConfigDict:
    config = config_defaults.base("simclr")
    config.data.source = "synthetic"
    config.batch_size, config.data.image_size = batch_size, image_size
    config.model.base_width, config.model.head_out_dim = 2, 8
    config.model.dtype = "bfloat16"
    config.total_steps = 10
    return config


@pytest.fixture(scope="module")
def devices():
    return tpu_topology.slice_devices(SLICE)


def test_report_equals_the_compiled_programs_own_figures(devices):
    config = compile_report.slice_config(tiny_config(), SLICE.num_chips)
    report = compile_report.compile_step(config, SLICE, devices, 16 * 2**30, num_classes=10)

    layout = Layout.from_config(config, devices)
    program = train_step.build_program(config, 10, layout)
    args = compile_report.abstract_arguments(program, config, layout)
    memory = jax.jit(program.step, donate_argnums=0).lower(*args).compile().memory_analysis()
    assert report["argument_bytes"] == memory.argument_size_in_bytes
    assert report["temp_bytes"] == memory.temp_size_in_bytes
    assert report["per_chip_bytes"] == (
        memory.argument_size_in_bytes + memory.output_size_in_bytes - memory.alias_size_in_bytes
        + memory.temp_size_in_bytes + memory.generated_code_size_in_bytes)
    assert report["fits"] and report["chips"] == 4 and report["examples_per_chip"] == 4
    # The donated state is not counted twice: the outputs beyond the aliased state are small.
    state_bytes = compile_report.per_chip_bytes(args[0])
    assert memory.alias_size_in_bytes >= state_bytes > 0
    # The arguments are one chip's share (the replicated state and a quarter of the batch),
    # padded to the TPU's tiles.
    assert report["argument_bytes"] >= compile_report.per_chip_bytes(args)
    assert report["collectives"]["all-reduce"]["count"] >= 1  # The gradient pmean.
    assert report["step_seconds_estimate"] == max(
        report[k] for k in ("compute_seconds", "hbm_seconds", "ici_seconds"))


def test_a_step_that_does_not_fit_reports_the_compilers_figures(devices):
    """65,536 examples per chip: NT-Xent's logits against the 2 x 262,144 views of the global
    batch alone take 128 GiB per chip."""
    config = compile_report.slice_config(tiny_config(batch_size=2**18), SLICE.num_chips)
    hbm = tpu_topology.available_hbm_bytes(devices[0])
    assert hbm == pytest.approx(15.75 * 2**30, rel=1e-3)  # v5e: 16 GiB less the runtime's.
    report = compile_report.compile_step(config, SLICE, devices, hbm, num_classes=10)
    assert not report["fits"]
    assert report["compiler_available_bytes"] == hbm
    assert report["temp_bytes"] > 2**16 * 2 * 2**18 * 4 > hbm
    # Two float32 views of 8 x 8 x 3 for each of the chip's 65,536 examples.
    assert report["argument_bytes"] >= 2 * 2**16 * 8 * 8 * 3 * 4
    assert report["per_chip_bytes"] == report["argument_bytes"] + report["temp_bytes"]
    labels = [label for label, _, _ in compile_report.alternatives(config, SLICE)]
    assert labels[:2] == ["--config.parallel=fsdp", "--config.grad_cache_chunks=2"]
    assert "--topology=v5e:2x4" in labels


def test_out_of_memory_messages_in_both_forms():
    first = tpu_topology.parse_out_of_memory(
        "RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
        "temporaries (97.62G) exceeds available HBM (15.75G).")
    assert first == (97.62 * 2**30, False, 15.75 * 2**30)
    second = tpu_topology.parse_out_of_memory(
        "RESOURCE_EXHAUSTED: XLA:TPU compile permanent error. Ran out of memory in memory space "
        "hbm. Used 20.5G of 15.48G hbm. Exceeded hbm capacity by 5.02G.")
    assert second == (20.5 * 2**30, True, 15.48 * 2**30)
    assert tpu_topology.parse_out_of_memory("INVALID_ARGUMENT: shapes differ") is None


def test_collectives_in_the_compiled_program(devices):
    """A ring of 3 ppermutes in a fori_loop, then one psum: the permute is found in the loop's
    body (once: the compiled HLO does not say how often a loop runs), the psum outside."""
    mesh = Mesh(np.asarray(devices), ("data",))

    def per_device(x):
        shift = [(i, (i + 1) % 4) for i in range(4)]
        x = jax.lax.fori_loop(0, 3, lambda _, y: jax.lax.ppermute(y, "data", shift), x)
        return jax.lax.psum(x, "data")

    fn = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=P("data"), out_specs=P()))
    x = jax.ShapeDtypeStruct((4 * 256, 128), jnp.float32,
                             sharding=NamedSharding(mesh, P("data")))
    summary = compile_report.collective_summary(
        compile_report.collectives(fn.lower(x).compile().as_text()))
    assert summary["collective-permute"] == {"count": 1, "bytes": 256 * 128 * 4, "in_loops": 1}
    assert summary["all-reduce"] == {"count": 1, "bytes": 256 * 128 * 4, "in_loops": 0}


def test_collectives_parser_on_hlo_text():
    hlo = "\n".join([
        "%inner (q: f32[16]) -> f32[16] {",
        "  %ag = (f32[4]{0}, f32[16]{0}) all-gather-start(f32[4]{0} %q), dimensions={0}",
        "}",
        "%body (p: (s32[], f32[8])) -> (s32[], f32[8]) {",
        "  %cp = f32[8]{0} collective-permute-start(f32[8]{0} %x), channel_id=1",
        "  %c = f32[16]{0} call(%p), to_apply=%inner",
        "}",
        "ENTRY %main (a: f32[4,8]) -> f32[4,8] {",
        "  %w = (s32[], f32[8]) while(%t), condition=%cond, body=%body",
        "  ROOT %ar = bf16[4,8]{1,0} all-reduce(bf16[4,8]{1,0} %a), to_apply=%add",
        "}"])
    ops = compile_report.collectives(hlo)
    assert sorted((op["op"], op["bytes"], op["in_loop"]) for op in ops) == [
        ("all-gather", 64, True), ("all-reduce", 64, False), ("collective-permute", 32, True)]


@pytest.mark.parametrize("name,expected", [
    ("v5e:16x16", ("v5e", 256)), ("v5litepod-16", ("v5e", 16)), ("v4-32", ("v4", 16)),
    ("v4:2x2x4", ("v4", 16)), ("v5p-128", ("v5p", 64)), ("v6e:8x8", ("v6e", 64))])
def test_slice_names(name, expected):
    tpu_slice = tpu_topology.parse_slice(name)
    assert (tpu_slice.chip.name, tpu_slice.num_chips) == expected


@pytest.mark.parametrize("name,message", [
    ("v9:4x4", "unknown topology"), ("v5e:4x4x4", "2 axes"), ("v4-12", "not a standard")])
def test_bad_slice_names(name, message):
    with pytest.raises(ValueError, match=message):
        tpu_topology.parse_slice(name)


def test_larger_slices():
    assert [s.name for s in tpu_topology.larger_slices(SLICE, 2)] == ["v5e:2x4", "v5e:4x4"]


def _aot(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "contrastive_jax.aot", "--config=configs/demo.py",
                           *args], capture_output=True, text=True, timeout=300,
                          cwd=REPO)


def test_command_prints_the_table_then_one_json_line():
    result = _aot("--topology=v5e:2x2", "--config.batch_size=16", "--config.data.image_size=8",
                  "--config.model.base_width=2")
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    report = json.loads(lines[-1])
    assert report["topology"] == "v5e:2x2" and report["fits"] is True
    assert report["per_chip_bytes"] < report["hbm_bytes"] and report["flops_per_step"] > 0
    assert any(line.startswith("per chip") and "fits" in line for line in lines[:-1])


@pytest.mark.parametrize("args,message", [
    (("--topology=v5e:3x3",), "error: topology 'v5e:3x3' is not a standard v5e slice"),
    (("--topology=tpu-16",), "error: unknown topology 'tpu-16'"),
    (("--topology=v5e:2x4", "--config.batch_size=20"),
     "error: batch_size 20 does not divide over 8 devices"),
    (("--topology=v5e:2x2", "--config.nosuchkey=1"), "error: unknown config key"),
])
def test_command_bad_input_is_one_error_line(args, message):
    result = _aot(*args)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith(message), result.stderr[-1000:]
    assert "Traceback" not in result.stderr


def _pod_script(tmp_path, *overrides: str) -> tuple[subprocess.CompletedProcess, str]:
    """launch/tpu_pod.sh with a stand-in `gcloud` that records its arguments."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "gcloud_calls"
    (bin_dir / "gcloud").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    (bin_dir / "gcloud").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.path.dirname(sys.executable)}:"
                                  f"{os.environ['PATH']}",
           "TPU_NAME": "test", "ZONE": "nowhere", "ACCELERATOR": "v5litepod-4"}
    result = subprocess.run(["bash", os.path.join(REPO, "launch", "tpu_pod.sh"),
                             "configs/demo.py", "gs://bucket/run", "--config.data.image_size=8",
                             "--config.model.base_width=2", *overrides],
                            capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    return result, calls.read_text() if calls.exists() else ""


def test_pod_script_creates_no_slice_for_a_step_that_does_not_fit(tmp_path):
    result, calls = _pod_script(tmp_path, f"--config.batch_size={2**18}")
    assert result.returncode == 1
    assert "error: configs/demo.py does not fit v5litepod-4" in result.stderr
    assert calls == ""  # gcloud was never called.


def test_pod_script_checks_the_fit_then_creates_the_slice(tmp_path):
    result, calls = _pod_script(tmp_path, "--config.batch_size=16")
    assert result.returncode == 0, result.stderr[-2000:]
    assert calls.splitlines()[0].startswith(
        "compute tpus tpu-vm create test --zone=nowhere --accelerator-type=v5litepod-4")
    assert "--worker=all" in calls
