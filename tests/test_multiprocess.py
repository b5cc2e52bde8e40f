"""Two processes x two CPU devices (jax.distributed on 127.0.0.1, gloo collectives): the global
loss computed from each host's local half equals the single-process value, on both wrappers."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np

import multiprocess_worker as worker


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_two_processes() -> list[dict]:
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
               JAX_PLATFORMS="cpu")
    port = free_port()
    script = Path(__file__).with_name("multiprocess_worker.py")
    procs = [subprocess.Popen([sys.executable, str(script), str(port), str(i)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    outputs = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=240)
        assert proc.returncode == 0, stderr[-3000:]
        outputs.append(json.loads(stdout.strip().splitlines()[-1]))
    return outputs


def test_two_hosts_compute_the_single_process_loss_and_gradient():
    a, b, scale = worker.global_inputs()
    outputs = run_two_processes()
    assert outputs[0] == outputs[1]
    for key, (loss, grad) in outputs[0].items():
        loss_fn = worker.LOSSES[key.split("/")[0]]
        want_loss, want_grad = jax.value_and_grad(lambda s: loss_fn(a, b, s, None))(scale)
        np.testing.assert_allclose(loss, want_loss, rtol=1e-5, err_msg=key)
        np.testing.assert_allclose(grad, want_grad, rtol=1e-5, err_msg=key)
    assert set(outputs[0]) == {f"{n}/{k}" for n in worker.LOSSES for k in ("pmap", "shard_map")}
