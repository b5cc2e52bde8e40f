"""Gradient caching: the gradient of a contrastive loss over a batch whose activations do not fit.

A contrastive loss couples every example of the batch, so it cannot be split into independent
micro-batches the way a sum of per-example losses can. It is a function of the embeddings,
though, and embeddings are small. Following Gao et al. 2021 ("Scaling Deep Contrastive Learning
Batch Size under Memory Limited Setup"), `value_and_grad`

1. embeds the batch chunk by chunk without keeping activations,
2. takes the loss over all the embeddings and its gradient with respect to them (and to the
   parameters the loss reads directly, such as CLIP's scale),
3. runs each chunk forward again and back-propagates that chunk's slice of the embedding
   gradient, summing the parameter gradients.

Peak activation memory is one chunk's; the cost is one extra forward pass. For towers without
BatchNorm (ViT, the text transformer) the result is the one-pass gradient. With BatchNorm each
chunk is normalised by its own statistics (over the devices, as ever) and the running averages
are updated once per chunk, so the loss is that of `num_chunks` smaller BatchNorm batches.

A method opts in with `loss_parts(model, config, axis_name) -> LossParts`; its `loss_fn` is
`one_pass` of the same parts, so both paths compute one loss.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections

PyTree = Any


class LossParts(NamedTuple):
    """A loss split at the embeddings.

    embed(params, batch_stats, batch) -> (outputs, new batch_stats): per example, so that the
    outputs of chunks concatenate to those of the batch; loss_on(params, outputs, batch) ->
    (loss, metrics): the loss over every example's outputs (gathering from other devices).
    """

    embed: Callable[[PyTree, PyTree, PyTree], tuple[PyTree, PyTree]]
    loss_on: Callable[[PyTree, PyTree, PyTree], tuple[jax.Array, dict]]


def one_pass(parts: LossParts, params, batch_stats, batch) -> tuple[jax.Array, tuple[dict, dict]]:
    """The loss in one forward pass, in `loss_fn`'s form: (loss, ({"batch_stats"}, metrics))."""
    outputs, new_stats = parts.embed(params, batch_stats, batch)
    loss, metrics = parts.loss_on(params, outputs, batch)
    return loss, ({"batch_stats": new_stats}, metrics)


def _chunked(tree: PyTree, num_chunks: int) -> PyTree:
    return jax.tree.map(lambda x: x.reshape(num_chunks, -1, *x.shape[1:]), tree)


def _unchunked(tree: PyTree) -> PyTree:
    return jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), tree)


class ChunkLayout(NamedTuple):
    """How a batch splits into chunks and the chunks' outputs join back: `split(tree,
    num_chunks)` stacks the chunks on a new leading axis, `join(tree)` undoes it."""

    split: Callable[[PyTree, int], PyTree]
    join: Callable[[PyTree], PyTree]


CONSECUTIVE = ChunkLayout(_chunked, _unchunked)  # One device's batch: consecutive slices.


def _loss_and_grads(parts: LossParts) -> Callable:
    """(params, outputs, batch) -> ((loss, metrics), (grads of params, grads of outputs))."""
    return jax.value_and_grad(parts.loss_on, argnums=(0, 1), has_aux=True)


def value_and_grad(parts: LossParts, params, batch_stats, batch, num_chunks: int, *,
                   loss_and_grads: Callable | None = None,
                   layout: ChunkLayout = CONSECUTIVE):
    """`jax.value_and_grad(one_pass, has_aux=True)` over `params`, in `num_chunks` chunks of
    the batch: ((loss, ({"batch_stats"}, metrics)), grads).

    `loss_and_grads(params, outputs, batch)` returns the loss over all the outputs and its
    gradients with respect to the params and the outputs; by default those of `parts.loss_on`
    on this device. `layout` splits the batch into chunks; `fsdp` passes both, to take the loss
    over the devices of a global batch and to give each chunk a slice of every device's rows.
    """
    loss_and_grads = loss_and_grads or _loss_and_grads(parts)
    chunks = layout.split(batch, num_chunks)

    def embed_chunk(stats, chunk):
        outputs, stats = parts.embed(params, stats, chunk)
        return stats, outputs

    new_stats, outputs = jax.lax.scan(embed_chunk, batch_stats, chunks)
    outputs = jax.lax.stop_gradient(layout.join(outputs))
    (loss, metrics), (direct_grads, output_grads) = loss_and_grads(params, outputs, batch)

    def backprop_chunk(grads, chunk_and_cotangent):
        chunk, cotangent = chunk_and_cotangent
        _, pullback = jax.vjp(lambda p: parts.embed(p, batch_stats, chunk)[0], params)
        return jax.tree.map(jnp.add, grads, pullback(cotangent)[0]), None

    grads, _ = jax.lax.scan(backprop_chunk, direct_grads,
                            (chunks, layout.split(output_grads, num_chunks)))
    return (loss, ({"batch_stats": new_stats}, metrics)), grads


def validate(config: ml_collections.ConfigDict, method, num_devices: int) -> None:
    """Refuses `grad_cache_chunks` that a method or the per-device batch cannot take."""
    chunks = config.grad_cache_chunks
    if chunks == 1:
        return
    if chunks < 1:
        raise ValueError(f"config.grad_cache_chunks must be >= 1, got {chunks}")
    if method.loss_parts is None:
        raise ValueError(f"config.grad_cache_chunks={chunks}: method {config.method!r} has no "
                         "loss over embeddings to cache (SimCLR, SupCon, SimSiam, CLIP and "
                         "SigLIP do)")
    per_device = config.batch_size // num_devices
    if per_device % chunks:
        raise ValueError(f"config.grad_cache_chunks={chunks} does not divide the per-device "
                         f"batch of {per_device}")
