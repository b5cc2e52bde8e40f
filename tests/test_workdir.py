"""One run owns a workdir: a second launch is refused naming the owner, an owner that has
ended is taken over, and the owner file goes when the run ends."""

import json
import os
import signal
import socket
import subprocess
import sys

import pytest

from contrastive_jax import workdir
from support import REPO, long_run


def write_owner(directory, pid: int, host: str | None = None) -> None:
    (directory / workdir.OWNER_FILE).write_text(json.dumps(
        {"pid": pid, "host": host or socket.gethostname(), "since": 0}))


def test_a_live_owner_refuses_and_an_ended_one_is_taken_over(tmp_path):
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        write_owner(tmp_path, other.pid)
        with pytest.raises(workdir.WorkdirBusyError, match=f"in use by pid {other.pid} on"):
            workdir.claim(str(tmp_path))
    finally:
        other.kill()
        other.wait()
    path = workdir.claim(str(tmp_path))  # The owner's process has ended.
    assert json.loads(open(path).read())["pid"] == os.getpid()
    workdir.release(path)
    assert not os.path.exists(path)


def test_an_owner_on_another_host_is_refused_with_how_to_take_over(tmp_path):
    write_owner(tmp_path, 1, host="another-host")
    with pytest.raises(workdir.WorkdirBusyError, match="on another-host since .*; if that run "
                       "is gone, remove .*owner.json and run again"):
        workdir.claim(str(tmp_path))


def test_a_half_written_owner_file_is_an_owner_that_has_ended(tmp_path):
    (tmp_path / workdir.OWNER_FILE).write_text('{"pid": 12')
    path = workdir.claim(str(tmp_path))
    assert json.loads(open(path).read())["pid"] == os.getpid()


def test_a_second_launch_on_a_running_workdir_is_refused(tmp_path):
    run = str(tmp_path / "run")
    first = long_run(run)
    try:
        for line in first.stderr:
            if "step 1/" in line:
                break
        second = subprocess.run(first.args, cwd=REPO, env=dict(os.environ, XLA_FLAGS="",
                                                              JAX_PLATFORMS="cpu"),
                                capture_output=True, text=True, timeout=120)
        assert second.returncode == 1
        assert second.stderr.strip().splitlines()[-1].startswith(
            f"error: workdir {run} is in use by pid {first.pid} on {socket.gethostname()} "
            "since "), second.stderr[-2000:]
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=120)
    assert first.returncode == 0
    assert not os.path.exists(os.path.join(run, workdir.OWNER_FILE))
    steps = [json.loads(line)["step"] for line in open(os.path.join(run, "metrics.jsonl"))]
    assert len(steps) == len(set(steps))  # One run wrote the rows: no step twice.
