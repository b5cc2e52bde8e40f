"""Fully sharded data parallelism: `config.parallel = "fsdp"`.

The devices form a mesh ("data", "fsdp") of D / F x F (`make_mesh`; F = `config.fsdp_size`,
default all D: ZeRO-3; smaller F, say the devices of one host, keeps the gathers on fast links
and replicates the shards across the "data" rows). Parameters, optimizer state and BatchNorm
statistics are split over "fsdp" (`param_spec`: each array along its largest dimension that F
divides; scalars and small odd shapes stay whole), so each device holds about 1/F of the state.
The batch is split over both axes. The step is one `jax.jit` with those shardings (what pjit
users know): XLA gathers each layer's parameters where the forward and backward passes use them
and reduce-scatters their gradients, and the optimizer updates every shard in place.

The contrastive loss still couples the global batch. The model runs on global arrays, so
BatchNorm's statistics are over the global batch as in the shard_map path; the loss runs
inside a `shard_map` over the embeddings (the method's `loss_parts`, the split gradient caching
uses), with the same collectives (`all_gather`, the SigLIP ring) as the other paths, over both
mesh axes at once (`BATCH_AXES`). Its
gradient with respect to the embeddings then flows back through the model by one `jax.vjp`.
The step optimises what the shard_map step optimises: the mean over devices of each device's
loss (tested equal to it). A loss may read only parameters the rule leaves whole, such as
CLIP's scale and SigLIP's bias.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from contrastive_jax import optim, parallel
from contrastive_jax.parallel import grad_cache

PyTree = Any
FSDP_AXIS = "fsdp"
BATCH_AXES = (parallel.AXIS, FSDP_AXIS)  # The batch and the loss's collectives span both.


def make_mesh(fsdp_size: int = 0, devices=None) -> Mesh:
    """The ("data", "fsdp") mesh of D / F x F devices in `jax.devices()` order, so that a batch
    split over both axes lies on the devices as `parallel.make_mesh`'s split over "data" does;
    `fsdp_size` 0 means F = D."""
    devices = np.asarray(devices if devices is not None else jax.devices())
    size = fsdp_size or devices.size
    if size < 1 or devices.size % size:
        raise ValueError(f"config.fsdp_size={fsdp_size} does not divide the {devices.size} "
                         "devices")
    return Mesh(devices.reshape(devices.size // size, size), BATCH_AXES)


def param_spec(shape: tuple[int, ...], num_shards: int) -> P:
    """The array split over "fsdp" along its largest dimension that `num_shards` divides;
    whole if none."""
    for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
        if shape[dim] >= num_shards and shape[dim] % num_shards == 0:
            return P(*(FSDP_AXIS if d == dim else None for d in range(len(shape))))
    return P()


def state_shardings(state_shapes: PyTree, mesh: Mesh) -> PyTree:
    """`param_spec` of every leaf of a state (shapes from `jax.eval_shape`), as shardings."""
    num_shards = mesh.shape[FSDP_AXIS]
    return jax.tree.map(lambda x: NamedSharding(mesh, param_spec(x.shape, num_shards)),
                        state_shapes)


def shard_state(host_state: PyTree, shardings: PyTree) -> PyTree:
    """Places a host state (the same on every process) on the devices, split as `shardings`."""
    return jax.tree.map(
        lambda x, sharding: jax.make_array_from_callback(
            np.shape(x), sharding, lambda index, x=np.asarray(x): x[index]),
        host_state, shardings)


def bytes_per_device(state: PyTree) -> int:
    """Bytes of `state` held by the first device (its shard of every leaf)."""
    device = jax.devices()[0]
    return sum(shard.data.nbytes for leaf in jax.tree.leaves(state)
               for shard in leaf.addressable_shards if shard.device == device)


def validate(config: ml_collections.ConfigDict, method, num_devices: int | None = None) -> None:
    """Refuses fsdp for a method whose loss is not split at the embeddings, or an fsdp_size
    that does not divide `num_devices` (default: every device)."""
    if config.parallel == "fsdp" and method.loss_parts is None:
        raise ValueError(f"config.parallel='fsdp' needs a loss over embeddings; method "
                         f"{config.method!r} has none (SimCLR, SupCon, SimSiam, CLIP and "
                         "SigLIP do)")
    num_devices = num_devices or jax.device_count()
    size = config.fsdp_size
    if config.parallel == "fsdp" and (size < 0 or (size and num_devices % size)):
        raise ValueError(f"config.fsdp_size={size} does not divide the {num_devices} devices")


def _loss_on_devices(parts, mesh: Mesh, param_specs: PyTree) -> Callable:
    """(params, embeddings, batch) -> (loss, metrics, direct param grads, embedding grads) of the
    mean over devices of each device's loss, computed per device with the loss's collectives."""

    def per_device(params, outputs, batch):
        (loss, metrics), (direct, d_outputs) = jax.value_and_grad(
            parts.loss_on, argnums=(0, 1), has_aux=True)(params, outputs, batch)
        num_devices = jax.lax.psum(1, BATCH_AXES)
        return (jax.lax.pmean(loss, BATCH_AXES), jax.lax.pmean(metrics, BATCH_AXES),
                jax.lax.pmean(direct, BATCH_AXES),
                jax.tree.map(lambda g: g / num_devices, d_outputs))

    split = P(BATCH_AXES)
    return jax.shard_map(per_device, mesh=mesh, in_specs=(param_specs, split, split),
                         out_specs=(P(), P(), param_specs, split), check_vma=False)


def device_chunk_layout(num_devices: int, sharding: NamedSharding) -> grad_cache.ChunkLayout:
    """Chunks of a global batch that is split over `num_devices` in blocks: chunk c holds the
    c-th slice of every device's block, so each chunk stays split over all the devices (and its
    BatchNorm statistics are those of the c-th chunks of shard_map's per-device batches)."""

    def split(tree, num_chunks):
        def split_leaf(x):
            blocks = x.reshape(num_devices, num_chunks, -1, *x.shape[1:]).swapaxes(0, 1)
            return jax.lax.with_sharding_constraint(
                blocks.reshape(num_chunks, -1, *x.shape[1:]),
                NamedSharding(sharding.mesh, P(None, *sharding.spec)))
        return jax.tree.map(split_leaf, tree)

    def join(tree):
        def join_leaf(x):
            blocks = x.reshape(x.shape[0], num_devices, -1, *x.shape[2:]).swapaxes(0, 1)
            return jax.lax.with_sharding_constraint(blocks.reshape(-1, *x.shape[2:]), sharding)
        return jax.tree.map(join_leaf, tree)

    return grad_cache.ChunkLayout(split, join)


def make_step(method, model, config: ml_collections.ConfigDict,
              tx: optax.GradientTransformation, schedule: Callable, mesh: Mesh,
              shardings: PyTree) -> Callable:
    """The jitted `(state, batch, rng) -> (state, metrics)` on `mesh` (`make_mesh`) with the
    state split as `shardings` (from `state_shardings`) and the batch over both axes. `model`
    must be built without a BatchNorm axis: it runs on global arrays. With `grad_cache_chunks`
    C > 1 the model embeds and back-propagates the batch in C chunks (`grad_cache`), each a
    slice of every device's rows."""
    parts = method.loss_parts(model, config, BATCH_AXES)
    param_specs = jax.tree.map(lambda s: s.spec, shardings.params)
    loss_on_devices = _loss_on_devices(parts, mesh, param_specs)
    batch_sharding = NamedSharding(mesh, P(BATCH_AXES))
    num_chunks = config.grad_cache_chunks
    layout = device_chunk_layout(mesh.size, batch_sharding)

    def loss_and_grads(params, outputs, batch):
        outputs = jax.lax.with_sharding_constraint(outputs, batch_sharding)
        loss, metrics, direct, d_outputs = loss_on_devices(params, outputs, batch)
        return (loss, metrics), (direct, d_outputs)

    def one_pass_grads(state, batch):
        outputs, pullback, new_stats = jax.vjp(
            lambda params: parts.embed(params, state.batch_stats, batch), state.params,
            has_aux=True)
        (loss, metrics), (direct, d_outputs) = loss_and_grads(state.params, outputs, batch)
        grads = jax.tree.map(lambda a, b: a + b, pullback(d_outputs)[0], direct)
        return loss, metrics, new_stats, grads

    def chunked_grads(state, batch):
        (loss, (changes, metrics)), grads = grad_cache.value_and_grad(
            parts, state.params, state.batch_stats, batch, num_chunks,
            loss_and_grads=loss_and_grads, layout=layout)
        return loss, metrics, changes["batch_stats"], grads

    def step(state, batch, rng):
        del rng  # The split losses draw nothing.
        loss, metrics, new_stats, grads = (chunked_grads if num_chunks > 1 else
                                           one_pass_grads)(state, batch)
        grads = jax.lax.with_sharding_constraint(grads, shardings.params)
        new_state = optim.apply_gradients(state, grads, tx, {"batch_stats": new_stats},
                                          lambda new: method.after_update(config, new))
        metrics = {**metrics, "loss": loss, "learning_rate": schedule(state.step)}
        return new_state, metrics

    replicated = NamedSharding(mesh, P())
    jitted = jax.jit(step, in_shardings=(shardings, batch_sharding, replicated),
                     out_shardings=(shardings, replicated), donate_argnums=0)

    def run(state, batch, rng):
        # Batches and keys come laid out on parallel.make_mesh()'s devices in the same order.
        batch, rng = jax.device_put((batch, rng), (batch_sharding, replicated))
        return jitted(state, batch, rng)

    return run
