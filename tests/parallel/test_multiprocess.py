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

from support import REPO


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


TRAIN_ARGS = ["--config=configs/demo.py", "--config.data.source=synthetic",
              "--config.data.synthetic_num_examples=64", "--config.data.image_size=8",
              "--config.model.base_width=2", "--config.batch_size=8", "--config.total_steps=3",
              "--config.checkpoint_every=3", "--config.eval_every=-1",
              "--config.optimizer.warmup_steps=1", "--config.data.augment_on=device"]


def train_cli(workdir: str, num_processes: int) -> None:
    """The training CLI on 2 CPU devices: one process holding both, or two holding one each."""
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={2 // num_processes}")
    # Without the shared compilation cache: a process that finds its programs there starts its
    # first step 20 to 40 s before one that compiles, and gloo's reads time out after 30 s.
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    port = free_port()
    distributed = lambda i: ([f"--coordinator_address=127.0.0.1:{port}",  # noqa: E731
                              f"--num_processes={num_processes}", f"--process_id={i}"]
                             if num_processes > 1 else [])
    procs = [subprocess.Popen([sys.executable, "-m", "contrastive_jax.main",
                               f"--workdir={workdir}", *TRAIN_ARGS, *distributed(i)],
                              cwd=REPO, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
             for i in range(num_processes)]
    for proc in procs:
        _, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr[-3000:]


def test_two_processes_train_as_one_process_with_the_same_devices(tmp_path):
    """augment_on=device draws each batch from one global order by (seed, epoch, index), so a
    run on 2 processes x 1 device ends with the parameters of a run on 1 process x 2 devices.
    (With augment_on=host each process reads its own shard of the files, so the order depends
    on the process count, as in big_vision.)"""
    import orbax.checkpoint as ocp

    on_this_device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    params = {}
    for num_processes in (1, 2):
        workdir = str(tmp_path / f"processes_{num_processes}")
        train_cli(workdir, num_processes)
        assert ocp.CheckpointManager(os.path.join(workdir, "checkpoints")).latest_step() == 3
        # Saved over other devices: restored onto this process's first.
        path = os.path.join(workdir, "checkpoints", "3", "default")
        checkpointer = ocp.StandardCheckpointer()
        target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype,
                                                             sharding=on_this_device),
                              checkpointer.metadata(path).item_metadata)
        params[num_processes] = checkpointer.restore(path, target)["params"]
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                 params[1], params[2])
