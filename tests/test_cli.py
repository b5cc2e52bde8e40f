"""Every command's bad input: one `error: ...` line (the last), exit status 1, no traceback."""

import os
import subprocess
import sys

import pytest

from contrastive_jax import cli, plot, show_views
from contrastive_jax.bench import input_pipeline as input_pipeline_bench
from contrastive_jax.tools import make_imagenet_names

from support import REPO


def run_module(module: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("module,args,message", [
    ("contrastive_jax.bench.train_step", ["--config=configs/demo.py", "--config.nosuchkey=1"],
     "error: unknown config key 'nosuchkey'"),
    ("contrastive_jax.bench.loss_memory", ["--sizes=8", "--nosuchflag"],
     "error: Unknown command line flag 'nosuchflag'"),
    ("contrastive_jax.bench.aot_table", ["--configs=configs/demo.py", "--topologies=tpu-16"],
     "error: unknown topology 'tpu-16'"),
    ("contrastive_jax.bench.torch_simclr_step", ["--batch_size=x"],
     "error: flag --batch_size=x: invalid literal for int() with base 10: 'x'"),
])
def test_an_absl_command_s_bad_input_is_one_error_line(module, args, message):
    proc = run_module(module, *args)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith(message), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


def error_line_of(capsys, main, argv) -> str:
    """The stderr of `main(argv)`, which must exit with status 1."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 1
    return capsys.readouterr().err.strip()


@pytest.mark.parametrize("main,argv,message", [
    (show_views.main, ["--nosuch"], "error: unrecognized arguments: --nosuch"),
    (show_views.main, ["--rows=0"], "error: --rows must be >= 1, got 0"),
    (show_views.main, ["--solarize_prob=2"], "error: --solarize_prob must be in [0, 1], got 2.0"),
    (show_views.main, ["--image=/nonexistent.png"],
     "error: cannot read --image=/nonexistent.png: no such file"),
    (show_views.main, ["--out=/nonexistent/dir/views.png", "--num_views=1", "--rows=1"],
     "error: cannot write /nonexistent/dir/views.png: No such file or directory"),
    (plot.main, [], "error: the following arguments are required: workdir"),
    (input_pipeline_bench.main, ["--batch_size=abc"],
     "error: argument --batch_size: invalid int value: 'abc'"),
    (input_pipeline_bench.main, ["--cases=reference_two_views", "--steps=1", "--warmup=0"],
     "error: case reference_two_views needs --reference_data_util=PATH"),
    (make_imagenet_names.main, ["--wheel=/nonexistent.whl"],
     "error: [Errno 2] No such file or directory: '/nonexistent.whl'"),
])
def test_an_argparse_command_s_bad_input_is_one_error_line(capsys, main, argv, message):
    assert error_line_of(capsys, cli.with_one_line_errors(main), argv) == message


def test_a_file_that_is_not_an_image_is_named(capsys, tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("not an image")
    line = error_line_of(capsys, cli.with_one_line_errors(show_views.main),
                         [f"--image={path}", f"--out={tmp_path / 'views.png'}"])
    assert line.startswith(f"error: cannot read --image={path}: ")
    assert not (tmp_path / "views.png").exists()
