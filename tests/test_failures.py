"""Bad input and broken runs: each ends with one `error:` line and exit status 1, or (SIGTERM)
with a checkpoint and status 0, and nothing that was saved is lost. The command line runs in
subprocesses; the restore paths run in-process on the 8 simulated CPU devices."""

import concurrent.futures
import json
import logging
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest

from contrastive_jax import checkpoints, train
from contrastive_jax.logging import read_metrics
from support import REPO, assert_trees_equal, final_params, long_run, tiny_config


def last_line(stderr: str) -> str:
    return stderr.strip().splitlines()[-1]


def run_cli(*args: str, cwd: str = REPO) -> subprocess.CompletedProcess:
    env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", "contrastive_jax.main", *args], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args,message", [
    (["--config.nosuchkey=1"], "error: unknown config key 'nosuchkey'"),
    (["--config=configs/no_such_config.py"],
     "error: cannot load --config=configs/no_such_config.py: [Errno 2] No such file"),
    (["--config.log_every=0"], "error: config.log_every must be >= 1, got 0"),
    (["--config.checkpoint_every=0"], "error: config.checkpoint_every must be >= 1, got 0"),
    (["--config.data.image_size=0"], "error: config.data.image_size must be >= 1, got 0"),
    (["--config.keep_checkpoints=-1"], "error: config.keep_checkpoints must be >= 1, got -1"),
])
def test_cli_bad_input_is_one_error_line(tmp_path, args, message):
    proc = run_cli("--config=configs/demo.py", f"--workdir={tmp_path / 'run'}", *args)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert last_line(proc.stderr).startswith(message), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


def test_workdir_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("not a directory")
    proc = run_cli("--config=configs/demo.py", f"--workdir={tmp_path / 'file'}")
    assert proc.returncode == 1
    assert last_line(proc.stderr) == (f"error: {tmp_path / 'file'} is a file, not a directory; "
                                      "use another --workdir")
    assert (tmp_path / "file").read_text() == "not a directory"


def test_keep_checkpoints_0_is_refused_and_deletes_nothing(tmp_path):
    checkpoint = tmp_path / "run" / "checkpoints" / "2"
    checkpoint.mkdir(parents=True)
    (checkpoint / "marker").write_text("saved")
    proc = run_cli("--config=configs/demo.py", f"--workdir={tmp_path / 'run'}",
                   "--config.keep_checkpoints=0")
    assert proc.returncode == 1
    assert last_line(proc.stderr) == "error: config.keep_checkpoints must be >= 1, got 0"
    assert (checkpoint / "marker").read_text() == "saved"


def _limit_file_size():
    resource.setrlimit(resource.RLIMIT_FSIZE, (16_000, resource.RLIM_INFINITY))


def test_full_disk_is_one_error_line_without_a_hang(tmp_path):
    """Files over 16 kB fail to write (EFBIG, as on a full disk): the first checkpoint's."""
    workdir = tmp_path / "run"
    env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "contrastive_jax.main", "--config=configs/demo.py",
         f"--workdir={workdir}", "--config.data.source=synthetic",
         "--config.data.synthetic_num_examples=64", "--config.data.image_size=8",
         "--config.model.base_width=2", "--config.batch_size=16", "--config.total_steps=3",
         "--config.checkpoint_every=1", "--config.eval_every=-1",
         "--config.optimizer.warmup_steps=1"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=200,
        preexec_fn=_limit_file_size)
    assert time.monotonic() - start < 150
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert last_line(proc.stderr).startswith(
        f"error: cannot write a checkpoint in {workdir / 'checkpoints'} (disk full or "
        "read-only?): "), proc.stderr[-3000:]
    assert "File too large" in last_line(proc.stderr)
    assert "Traceback" not in proc.stderr  # Orbax's threads' reports are the one line.
    assert ocp.CheckpointManager(str(workdir / "checkpoints")).all_steps() == []


def test_sigterm_before_training_exits_0(tmp_path):
    """SIGTERM as soon as JAX is up (before the state is built and compiled)."""
    env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
    proc = subprocess.Popen(
        [sys.executable, "-m", "contrastive_jax.main", "--config=configs/demo.py",
         f"--workdir={tmp_path / 'run'}"], cwd=REPO, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    stderr = []
    for line in proc.stderr:
        stderr.append(line)
        if "process 0 of 1" in line:
            proc.send_signal(signal.SIGTERM)
            break
    stdout, rest = proc.communicate(timeout=120)
    stderr = "".join(stderr) + rest
    assert proc.returncode == 0, stderr[-2000:]
    assert "SIGTERM before training began: nothing new to save; exiting" in stderr
    assert "Traceback" not in stderr and "preempted" not in stdout


# -- restoring -----------------------------------------------------------------------------------


class _Warnings(logging.Handler):
    """Collects the messages of absl warnings (absl logs through the `absl` Python logger)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())

    def __enter__(self):
        logging.getLogger("absl").addHandler(self)
        return self

    def __exit__(self, *exc):
        logging.getLogger("absl").removeHandler(self)


def config_4_steps(**overrides):
    return tiny_config(eval_every=-1, **overrides)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 4-step run with checkpoints at steps 2 and 4 and metrics rows 1..4."""
    workdir = str(tmp_path_factory.mktemp("trained"))
    train.train_and_evaluate(config_4_steps(), workdir)
    return workdir


def copy_of(workdir, tmp_path) -> str:
    return shutil.copytree(workdir, str(tmp_path / "copy"))


@pytest.fixture(scope="module")
def resumed_over_corrupt(trained, tmp_path_factory):
    """`trained` with checkpoint 4's files cut in half and a partial metrics line, run again:
    (workdir, warnings)."""
    workdir = shutil.copytree(trained, str(tmp_path_factory.mktemp("corrupt") / "run"))
    for root, _, files in os.walk(os.path.join(workdir, "checkpoints", "4")):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "r+b") as f:
                f.truncate(os.path.getsize(path) // 2)
    with open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8") as f:
        f.write('{"step": 5, "loss": 4.1')  # A crash in the middle of a row.
    with _Warnings() as warnings:
        train.train_and_evaluate(config_4_steps(), workdir)
    return workdir, warnings.messages


def test_corrupt_newest_checkpoint_falls_back_to_the_previous(trained, resumed_over_corrupt):
    workdir, warnings = resumed_over_corrupt
    set_aside = os.path.join(workdir, "unrestorable_checkpoints", "4")
    assert any(message.startswith("checkpoint 4 does not restore") and set_aside in message
               for message in warnings), warnings
    assert os.path.isdir(set_aside)
    # Steps 3 and 4 trained again from checkpoint 2 equal the run that was never broken.
    step, params = final_params(workdir)
    want_step, want_params = final_params(trained)
    assert step == want_step == 4
    assert_trees_equal(params, want_params)


def test_an_empty_step_directory_is_set_aside_and_the_run_resumes(trained, tmp_path):
    """The newest checkpoint's directory is empty (a copy interrupted): it is moved aside, the
    run resumes from checkpoint 2 and ends with the parameters of the run that was never
    broken."""
    workdir = copy_of(trained, tmp_path)
    shutil.rmtree(os.path.join(workdir, "checkpoints", "4"))
    os.makedirs(os.path.join(workdir, "checkpoints", "4"))
    with _Warnings() as warnings:
        train.train_and_evaluate(config_4_steps(), workdir)
    assert any(message.startswith("checkpoint 4 does not restore")
               for message in warnings.messages), warnings.messages
    assert os.path.isdir(os.path.join(workdir, "unrestorable_checkpoints", "4"))
    (step, params), (want_step, want) = final_params(workdir), final_params(trained)
    assert step == want_step == 4
    assert_trees_equal(params, want)


def test_resume_leaves_one_metrics_row_per_step(trained, resumed_over_corrupt):
    workdir, warnings = resumed_over_corrupt
    rows = read_metrics(workdir)
    assert [row["step"] for row in rows] == [1, 2, 3, 4]
    np.testing.assert_allclose([row["loss"] for row in rows],
                               [row["loss"] for row in read_metrics(trained)], rtol=1e-6)
    assert any("is not a JSON row" in message for message in warnings), warnings
    with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
        assert [json.loads(line)["step"] for line in f] == [1, 2, 3, 4]


def test_partial_last_metrics_line_does_not_break_the_summary(tmp_path):
    from contrastive_jax.main import summary_table
    with open(tmp_path / "metrics.jsonl", "w", encoding="utf-8") as f:
        f.write(json.dumps({"step": 4, "knn_top1": 0.25}) + "\n" + '{"step": 5, "knn_to')
    assert summary_table(str(tmp_path)).splitlines()[1].split()[-1] == "0.2500"


def test_checkpoint_that_does_not_fit_is_one_error_and_moves_nothing(trained, tmp_path):
    workdir = copy_of(trained, tmp_path)
    config = config_4_steps(**{"model.head_out_dim": 8})
    with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
        f.write(config.to_json())  # As if the checkpoints were copied in from another run.
    trainer = train.Trainer(config, workdir)
    with pytest.raises(checkpoints.CheckpointError,
                       match=r"no checkpoint in .* restores with this config \(step 4: .*; "
                             r"step 2: .*\)"):
        trainer.initial_state()
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "4"]


def test_batch_larger_than_data_and_changed_batch_warn(trained, tmp_path):
    with _Warnings() as warnings:
        train.Trainer(config_4_steps(batch_size=128), str(tmp_path / "new"))
        train.Trainer(config_4_steps(batch_size=32), copy_of(trained, tmp_path)).initial_state()
    assert any("global batch (128) is larger than the training set (64 examples)" in message
               for message in warnings.messages), warnings.messages
    assert any("resuming from step 4 with global batch 32; the workdir's run used 16" in message
               for message in warnings.messages), warnings.messages


# -- SIGTERM with two processes ------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_two_processes(workdir: str, signal_ids: list[int],
                      cache: str) -> list[tuple[int, str, str]]:
    """The CLI as 2 processes of 1 CPU device each; once process 0 has logged 3 steps, SIGTERM
    goes to the processes in `signal_ids`, 0.6 s apart. Returns (exit status, stdout, stderr).
    Compiled programs go to JAX's persistent cache in `cache`, so a second run skips compiling."""
    env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=cache,
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    port = free_port()
    args = ["--config.data.source=synthetic", "--config.data.synthetic_num_examples=64",
            "--config.data.image_size=8", "--config.model.base_width=2",
            "--config.batch_size=16", "--config.total_steps=100000", "--config.log_every=1",
            "--config.checkpoint_every=100000", "--config.eval_every=-1",
            "--config.optimizer.warmup_steps=1"]
    procs = [subprocess.Popen(
        [sys.executable, "-m", "contrastive_jax.main", "--config=configs/demo.py",
         f"--workdir={workdir}", f"--coordinator_address=127.0.0.1:{port}",
         "--num_processes=2", f"--process_id={i}", *args], cwd=REPO, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    # Process 1's output is read in the background: a full pipe would stall it, and process 0
    # with it, in the next collective.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        second = pool.submit(procs[1].communicate, timeout=240)
        stderr0 = []
        for line in procs[0].stderr:
            stderr0.append(line)
            if sum("/100000 |" in logged for logged in stderr0) == 3:
                for n, i in enumerate(signal_ids):
                    if n:
                        time.sleep(0.6)  # The scenario: signals that do not arrive together.
                    procs[i].send_signal(signal.SIGTERM)
                break
        stdout0, rest = procs[0].communicate(timeout=240)
        stdout1, stderr1 = second.result()
    return [(procs[0].returncode, stdout0, "".join(stderr0) + rest),
            (procs[1].returncode, stdout1, stderr1)]


def saved_step(result) -> int:
    code, stdout, stderr = result
    assert code == 0, stderr[-3000:]
    return int(stdout.split("preempted: checkpoint saved at step ")[1].split(";")[0])


def test_sigterm_to_one_or_both_of_two_processes_saves_one_agreed_step(tmp_path):
    workdir = str(tmp_path / "run")
    cache = str(tmp_path / "jax_cache")
    first = run_two_processes(workdir, signal_ids=[1], cache=cache)
    step = saved_step(first[0])
    assert step >= 3 and saved_step(first[1]) == step
    assert ocp.CheckpointManager(os.path.join(workdir, "checkpoints")).all_steps() == [step]
    resumed = run_two_processes(workdir, signal_ids=[0, 1], cache=cache)
    assert f"Restored checkpoint at step {step}" in resumed[0][2]
    again = saved_step(resumed[0])
    assert again > step and saved_step(resumed[1]) == again
    assert ocp.CheckpointManager(os.path.join(workdir, "checkpoints")).all_steps() == [step,
                                                                                       again]


@pytest.mark.parametrize("override,message", [
    ("--config.optimizer.learning_rate=-0.1",
     "error: config.optimizer.learning_rate must be >= 0, got -0.1"),
    ("--config.optimizer.learning_rate=nan",
     "error: config.optimizer.learning_rate must be a finite number, got nan"),
    ("--config.loss.temperature=inf", "error: config.loss.temperature must be a finite number"),
    ("--config.loss.temperature=nan", "error: config.loss.temperature must be a finite number"),
    ("--config.data.crop_area_min=1.5",
     "error: config.data.crop_area_min must be > 0 and <= 1, got 1.5"),
    ("--config.data.grayscale_prob=-1", "error: config.data.grayscale_prob must be >= 0 and <= 1"),
    ("--config.optimizer.momentum=1.0",
     "error: config.optimizer.momentum must be >= 0 and < 1, got 1.0"),
    ("--config.batch_size=0", "error: config.batch_size must be >= 1, got 0"),
    ("--config.num_epochs=0.0001", "error: config.num_epochs=0.0001 gives no training step"),
])
def test_numeric_fields_out_of_range_are_refused_by_name(tmp_path, override, message):
    workdir = tmp_path / "run"
    proc = run_cli("--config=configs/demo.py", f"--workdir={workdir}", override)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert last_line(proc.stderr).startswith(message), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not (workdir / "checkpoints").exists() or not os.listdir(workdir / "checkpoints")


def test_a_diverged_update_is_never_checkpointed(tmp_path):
    """A learning rate of 1e40 (inf in float32): the loss of step 1 is finite, the update makes
    the parameters NaN; the run stops before saving them."""
    workdir = tmp_path / "run"
    proc = run_cli("--config=configs/demo.py", f"--workdir={workdir}",
                   "--config.optimizer.learning_rate=1e40", "--config.total_steps=3",
                   "--config.checkpoint_every=1", "--config.eval_every=-1",
                   "--config.model.base_width=2", "--config.batch_size=32")
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert last_line(proc.stderr).startswith(
        "error: the parameters are not all finite after step 1"), proc.stderr[-2000:]
    assert os.listdir(workdir / "checkpoints") == []


def test_a_config_without_get_config_and_a_stray_argument_are_named(tmp_path):
    config = tmp_path / "no_get_config.py"
    config.write_text("x = 1\n")
    proc = run_cli(f"--config={config}", f"--workdir={tmp_path / 'run'}")
    assert proc.returncode == 1
    assert last_line(proc.stderr) == (f"error: cannot load --config={config}: the file defines "
                                      "no get_config()")
    proc = run_cli("--config=configs/demo.py", f"--workdir={tmp_path / 'run'}", "stray")
    assert proc.returncode == 1
    assert last_line(proc.stderr) == ("error: unexpected arguments: stray (flags take the form "
                                      "--name=value)")


def test_sigint_saves_a_checkpoint_and_exits_0_as_sigterm_does(tmp_path):
    run = str(tmp_path / "run")
    proc = long_run(run)
    for line in proc.stderr:
        if "step 2/" in line:
            proc.send_signal(signal.SIGINT)
            break
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr[-2000:]
    assert "preempted: checkpoint saved at step" in stdout
    assert ocp.CheckpointManager(os.path.join(run, "checkpoints")).all_steps()
    # Orbax's INFO lines (some 40 a checkpoint) stay out of the console without --library_logs.
    assert not [line for line in stderr.splitlines() if "orbax" in line.lower()
                or "checkpoint_manager.py" in line], stderr[-3000:]


def test_checkpoints_without_config_json_are_refused_and_left_alone(trained, tmp_path):
    workdir = copy_of(trained, tmp_path)
    os.remove(os.path.join(workdir, "config.json"))
    before = sorted(os.listdir(workdir))
    with pytest.raises(checkpoints.ConfigMismatchError,
                       match="holds checkpoints but no config.json"):
        train.train_and_evaluate(config_4_steps(), workdir)
    assert sorted(os.listdir(workdir)) == before  # config.json was not written.
