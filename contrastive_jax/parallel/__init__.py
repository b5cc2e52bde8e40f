"""One per-device function, run under `jax.pmap` or under `jax.jit(jax.shard_map(...))`.

A per-device function sees this device's slice of the batch and a full copy of the replicated
state, and talks to the other devices only through named-axis collectives over `AXIS`
("data"): `all_gather` for a loss's candidates, `pmean` for gradients and BatchNorm statistics.
The two wrappers hold their arrays differently:

- "pmap": every argument and result carries a leading axis of local devices; replicated values
  are stacked copies (the flax examples' convention), per-device batches are
  `[local_devices, per_device, ...]`.
- "shard_map": arrays are global `jax.Array`s over a one-axis mesh; replicated values have
  `PartitionSpec()` and batches `PartitionSpec("data")` on their first axis (what pjit users
  know as jit with in/out shardings).

shard_map runs with `check_vma=False`, pmap's semantics: the gradient of a replicated input is
each device's own (with the check on, JAX would `psum` it behind the step's back), so the one step
function means the same under both wrappers: it `pmean`s its gradients itself.

`host_batch_to_devices`, `replicate` and `unreplicate` convert host data to and from either form,
on one process or many, so callers never branch on the wrapper. A run holds them, with its mesh
and where its state lives, in one `layout.Layout`; `fsdp` splits the state over the devices and
`grad_cache` computes a step's gradient chunk by chunk.
"""

from __future__ import annotations

import collections
import itertools
from typing import Any, Callable, Iterable, Iterator, Literal, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

AXIS = "data"
Kind = Literal["pmap", "shard_map"]
KINDS = ("pmap", "shard_map")
PyTree = Any


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"parallel must be one of {KINDS}, got {kind!r}")


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A one-axis mesh named `AXIS` over `devices` (default: every device of every process)."""
    return Mesh(np.asarray(devices if devices is not None else jax.devices()), (AXIS,))


def per_device_batch_size(global_batch_size: int, num_devices: int | None = None) -> int:
    """The per-device batch, or a clear error if the global batch does not divide evenly."""
    num_devices = num_devices or jax.device_count()
    if global_batch_size <= 0 or global_batch_size % num_devices:
        raise ValueError(f"batch_size {global_batch_size} does not divide over {num_devices} "
                         "devices; choose a positive multiple of the device count")
    return global_batch_size // num_devices


def wrap(fn: Callable, kind: Kind, mesh: Mesh, in_specs: PyTree, out_specs: PyTree,
         donate_argnums: int | Sequence[int] = ()) -> Callable:
    """Wraps a per-device function as pmap or as jit(shard_map) over the `AXIS` mesh.

    `in_specs` / `out_specs` are `PartitionSpec` trees for the shard_map path (`P()` for
    replicated, `P(AXIS)` for split along the first axis); the pmap path maps every argument
    and result over its leading local-device axis.
    """
    _check_kind(kind)
    if kind == "pmap":
        return jax.pmap(fn, axis_name=AXIS, devices=list(mesh.devices.flat),
                        donate_argnums=donate_argnums)
    mapped = jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs,
                           check_vma=False)
    return jax.jit(mapped, donate_argnums=donate_argnums)


def wrap_step(step: Callable, kind: Kind, mesh: Mesh) -> Callable:
    """Wraps `step(state, batch, rng) -> (state, metrics)`: state and rng replicated, batch
    split over devices, the returned state and (already `pmean`-ed) metrics replicated.
    The incoming state's buffers are donated to the new state."""
    replicated, split = PartitionSpec(), PartitionSpec(AXIS)
    return wrap(step, kind, mesh, in_specs=(replicated, split, replicated),
                out_specs=(replicated, replicated), donate_argnums=0)


def _local_mesh(mesh: Mesh) -> Mesh:
    """The mesh's devices that belong to this process, in mesh order (what pmap maps over)."""
    local = [d for d in mesh.devices.flat if d.process_index == jax.process_index()]
    return Mesh(np.asarray(local), (AXIS,))


def host_batch_to_devices(batch: PyTree, kind: Kind, mesh: Mesh) -> PyTree:
    """Turns this host's slice of the global batch (numpy, leading axis = host examples) into
    what the wrapped function takes: a global array split over `AXIS` (shard_map) or a
    `[local_devices, per_device, ...]` array (pmap)."""
    _check_kind(kind)
    if kind == "shard_map":
        sharding = NamedSharding(mesh, PartitionSpec(AXIS))
        return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)
    local = _local_mesh(mesh)
    num_local = local.devices.size
    sharding = NamedSharding(local, PartitionSpec(AXIS))

    def split(x):
        x = np.asarray(x)
        if x.shape[0] % num_local:
            raise ValueError(f"host batch of {x.shape[0]} does not divide over {num_local} "
                             "local devices")
        return jax.device_put(x.reshape(num_local, x.shape[0] // num_local, *x.shape[1:]),
                              sharding)

    return jax.tree.map(split, batch)


def shard_rows(arrays: PyTree, kind: Kind, mesh: Mesh) -> tuple[PyTree, int]:
    """Splits arrays [N, ...] (the same on every process) over the mesh's devices by rows, for a
    wrapped function to take split over `AXIS`: device i holds rows [i m, (i + 1) m), the last
    device's tail padded with zeros. Returns (the sharded arrays, m)."""
    num_devices = mesh.devices.size
    num_rows = len(jax.tree.leaves(arrays)[0])
    rows_per_device = -(-num_rows // num_devices)
    positions = [i for i, d in enumerate(mesh.devices.flat)
                 if d.process_index == jax.process_index()]
    if positions != list(range(positions[0], positions[0] + len(positions))):
        raise ValueError("this process's devices are not contiguous in the mesh")
    mine = slice(positions[0] * rows_per_device, (positions[-1] + 1) * rows_per_device)

    def pad_and_take(x):
        x = np.asarray(x)
        padding = np.zeros((rows_per_device * num_devices - num_rows, *x.shape[1:]), x.dtype)
        return np.concatenate([x, padding])[mine]

    return host_batch_to_devices(jax.tree.map(pad_and_take, arrays), kind, mesh), rows_per_device


def prefetch_to_devices(batches: Iterable[PyTree], kind: Kind, mesh: Mesh, size: int = 2
                        ) -> Iterator[PyTree]:
    """`host_batch_to_devices` of each host batch, `size` batches ahead of the consumer.

    Transfers are asynchronous, so while the step runs on batch k, batches k + 1 .. k + size are
    already on their way to the devices (the flax examples' `prefetch_to_device`, for both
    wrappers).
    """
    iterator = iter(batches)
    queue: collections.deque = collections.deque()

    def enqueue(count: int) -> None:
        for batch in itertools.islice(iterator, count):
            queue.append(host_batch_to_devices(batch, kind, mesh))

    enqueue(size)
    while queue:
        batch = queue.popleft()
        enqueue(1)
        yield batch


def replicate(tree: PyTree, kind: Kind, mesh: Mesh) -> PyTree:
    """Places one copy of `tree` (identical on every process) on every device."""
    _check_kind(kind)
    if kind == "shard_map":
        sharding = NamedSharding(mesh, PartitionSpec())

        def put(x):
            x = np.asarray(x)
            return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

        return jax.tree.map(put, tree)
    local = _local_mesh(mesh)
    sharding = NamedSharding(local, PartitionSpec(AXIS))
    stack = lambda x: np.broadcast_to(np.asarray(x), (local.devices.size, *np.shape(x)))
    return jax.tree.map(lambda x: jax.device_put(stack(x), sharding), tree)


def unreplicate(tree: PyTree, kind: Kind) -> PyTree:
    """One copy of a replicated tree, as host numpy arrays, on any process."""
    _check_kind(kind)
    if kind == "pmap":
        return jax.tree.map(lambda x: np.asarray(x.addressable_data(0))[0], tree)
    return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), tree)


def per_device_values(tree: PyTree, kind: Kind) -> PyTree:
    """Gathers per-device results (out spec `P(AXIS)`, leading axis over devices) from every
    process into host numpy arrays of the global extent."""
    _check_kind(kind)
    if jax.process_count() == 1:
        return jax.tree.map(np.asarray, tree)
    from jax.experimental import multihost_utils
    tiled = kind == "shard_map"
    return jax.tree.map(lambda x: np.asarray(multihost_utils.process_allgather(x, tiled=tiled)),
                        tree)
