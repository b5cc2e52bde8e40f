"""One process of the 2-process test: computes global losses from this host's half of a batch.

Run by test_multiprocess.py as `python multiprocess_worker.py PORT PROCESS_ID`; prints one JSON
line of {"<loss>/<wrapper>": [loss, d loss / d scale]} for the parent to compare.
"""

import json
import sys

import jax
import numpy as np
from jax.sharding import PartitionSpec as P

from contrastive_jax import losses, parallel

AXIS = parallel.AXIS
GLOBAL_BATCH, DIM = 8, 5

# name: loss(a, b, scale, axis_name), differentiated w.r.t. the shared scale
LOSSES = {
    "nt_xent": lambda a, b, s, ax: losses.nt_xent(a, b, 1.0 / s, axis_name=ax),
    "clip": lambda a, b, s, ax: losses.clip_loss(a, b, s, axis_name=ax),
    "siglip_ring": lambda a, b, s, ax: losses.siglip_loss(a, b, s, -2.0, axis_name=ax,
                                                          impl="ring"),
}


def global_inputs():
    rng = np.random.default_rng(0)
    return (rng.normal(size=(GLOBAL_BATCH, DIM)).astype(np.float32),
            rng.normal(size=(GLOBAL_BATCH, DIM)).astype(np.float32), np.float32(3.0))


def main(port: int, process_id: int) -> None:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2,
                               process_id=process_id)
    assert jax.process_count() == 2 and jax.device_count() == 4, jax.devices()
    a, b, scale = global_inputs()
    host = slice(process_id * GLOBAL_BATCH // 2, (process_id + 1) * GLOBAL_BATCH // 2)
    mesh = parallel.make_mesh()
    results = {}
    for name, loss_fn in LOSSES.items():
        def per_device(a, b, s, loss_fn=loss_fn):
            loss, grad = jax.value_and_grad(loss_fn, argnums=2)(a, b, s, AXIS)
            return jax.lax.pmean(loss, AXIS), jax.lax.pmean(grad, AXIS)

        for kind in parallel.KINDS:
            fn = parallel.wrap(per_device, kind, mesh, in_specs=(P(AXIS), P(AXIS), P()),
                               out_specs=(P(), P()))
            out = fn(parallel.host_batch_to_devices(a[host], kind, mesh),
                     parallel.host_batch_to_devices(b[host], kind, mesh),
                     parallel.replicate(scale, kind, mesh))
            results[f"{name}/{kind}"] = [float(x) for x in parallel.unreplicate(out, kind)]
    print(json.dumps(results), flush=True)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
