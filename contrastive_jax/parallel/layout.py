"""The Layout: how a run's arrays lie on the devices, built once from the config.

A run has one layout, chosen by `config.parallel`:

- "pmap" and "shard_map": the state is replicated and the one per-device step runs under the
  wrapper of that name (see `contrastive_jax.parallel`); BatchNorm averages over `AXIS`.
- "fsdp": the state is split over the devices (`fsdp`), and batches, keys and metrics are held
  as shard_map holds them (global arrays over the "data" mesh); the model runs on global arrays,
  so BatchNorm needs no axis.

Everything that places, wraps or reads back arrays (the Trainer, the evaluators, the linear
protocol, device-resident input, the benches) takes the Layout and calls its methods, so no caller
branches on the wrapper or rebuilds the mesh.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Iterable, Iterator, Sequence

import jax
import ml_collections
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from contrastive_jax import parallel
from contrastive_jax.parallel import fsdp

PyTree = Any
PARALLEL = (*parallel.KINDS, "fsdp")  # The values of config.parallel.


@dataclasses.dataclass(frozen=True)
class Layout:
    """The wrapper kind, the mesh and where the state lives, for one run."""

    kind: parallel.Kind  # How batches, keys, metrics and replicated values are held.
    mesh: Mesh  # One axis, `parallel.AXIS`, over every device of every process.
    fsdp_size: int | None = None  # None: the state is replicated; else fsdp's F (0: all).

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict,
                    devices: Sequence[jax.Device] | None = None) -> Layout:
        """The layout `config.parallel` names, over `devices` (default: all of them)."""
        if config.parallel not in PARALLEL:
            raise ValueError(f"config.parallel must be one of {PARALLEL}, got "
                             f"{config.parallel!r}")
        mesh = parallel.make_mesh(devices)
        if config.parallel == "fsdp":
            return cls("shard_map", mesh, fsdp_size=config.fsdp_size)
        return cls(config.parallel, mesh)

    @property
    def is_fsdp(self) -> bool:
        return self.fsdp_size is not None

    @property
    def bn_axis(self) -> str | None:
        """The axis the training model's BatchNorm averages over: none under fsdp, whose model
        runs on global arrays and so sees the whole batch."""
        return None if self.is_fsdp else parallel.AXIS

    def fsdp_mesh(self) -> Mesh:
        """fsdp's ("data", "fsdp") mesh over the same devices, in the same order."""
        return fsdp.make_mesh(self.fsdp_size or 0, list(self.mesh.devices.flat))

    # -- wrapping per-device functions ------------------------------------------------------------

    def wrap(self, fn: Callable, in_specs: PyTree, out_specs: PyTree,
             donate_argnums: int | Sequence[int] = ()) -> Callable:
        """`parallel.wrap` of a per-device function in this layout's wrapper."""
        return parallel.wrap(fn, self.kind, self.mesh, in_specs, out_specs, donate_argnums)

    # -- placing and reading back -----------------------------------------------------------------

    def to_devices(self, batch: PyTree) -> PyTree:
        """This host's slice of a global batch, as the wrapped functions take it."""
        return parallel.host_batch_to_devices(batch, self.kind, self.mesh)

    def prefetch(self, batches: Iterable[PyTree], size: int = 2) -> Iterator[PyTree]:
        """`to_devices` of each host batch, `size` batches ahead."""
        return parallel.prefetch_to_devices(batches, self.kind, self.mesh, size)

    def shard_rows(self, arrays: PyTree) -> tuple[PyTree, int]:
        """`parallel.shard_rows`: arrays the same on every process, split by rows."""
        return parallel.shard_rows(arrays, self.kind, self.mesh)

    def replicate(self, tree: PyTree) -> PyTree:
        """One copy of `tree` (the same on every process) on every device."""
        return parallel.replicate(tree, self.kind, self.mesh)

    def unreplicate(self, tree: PyTree) -> PyTree:
        """One copy of a replicated tree, as host numpy arrays."""
        return parallel.unreplicate(tree, self.kind)

    def per_device_values(self, tree: PyTree) -> PyTree:
        """Per-device results of every process, as host numpy arrays of the global extent."""
        return parallel.per_device_values(tree, self.kind)

    # -- the train state --------------------------------------------------------------------------

    def state_shardings(self, state_shapes: PyTree) -> PyTree:
        """Where each leaf of the train state lives: split by fsdp's rule, else replicated."""
        if self.is_fsdp:
            return fsdp.state_shardings(state_shapes, self.fsdp_mesh())
        replicated = NamedSharding(self.mesh, PartitionSpec())
        return jax.tree.map(lambda _: replicated, state_shapes)

    def place_state(self, host_state: PyTree, shardings: PyTree) -> PyTree:
        """A host state (the same on every process) on the devices, as the step takes it."""
        if self.is_fsdp:
            return fsdp.shard_state(host_state, shardings)
        return self.replicate(host_state)

    def from_checkpoint(self, restored: PyTree) -> PyTree:
        """A state restored as global arrays (how checkpoints hold it) in this layout."""
        if self.kind == "shard_map":
            return restored
        return self.replicate(parallel.unreplicate(restored, "shard_map"))

    def for_checkpoint(self, state: PyTree) -> PyTree:
        """A state in this layout as the global arrays a checkpoint holds."""
        if self.kind == "pmap":
            return parallel.replicate(parallel.unreplicate(state, "pmap"), "shard_map",
                                      self.mesh)
        return state

    def whole(self, tree: PyTree) -> PyTree:
        """`tree` whole on every device in this layout's form: fsdp's split leaves gathered,
        as the evaluation functions take variables."""
        if not self.is_fsdp:
            return tree
        return _gather_whole(self.mesh)(tree)


@functools.lru_cache(maxsize=None)
def _gather_whole(mesh: Mesh) -> Callable:
    """The identity, jitted once per mesh, whose outputs are replicated over `mesh`: every
    evaluation of a run reuses one compiled gather instead of tracing a new one."""
    return jax.jit(lambda tree: tree, out_shardings=NamedSharding(mesh, PartitionSpec()))
