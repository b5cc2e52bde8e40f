"""Gathering embeddings from every device, with exact gradients.

`gather` is `all_gather` along axis 0: its transpose sums the cotangents of every device's copy
back onto the device that owns the embedding, so the `pmean` of per-device gradients equals the
single-device gradient on the concatenated batch. `global_offset` locates this device's rows in
the gathered batch; `as_varying` types a value as device-varying for a custom VJP under
`shard_map(check_vma=True)`. Without an axis each is the identity (or zero).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def gather(x: Array, axis_name: str | None) -> Array:
    """Concatenates `x` from every device along axis 0 (identity without an axis)."""
    if axis_name is None:
        return x
    return jax.lax.all_gather(x, axis_name, tiled=True)


def as_varying(x: Array, axis_name: str | None) -> Array:
    """`x` typed as device-varying over `axis_name` (`jax.lax.pcast`), so that a custom VJP may
    return each device's own cotangent for it: under `shard_map(check_vma=True)` the cast's
    transpose then sums the cotangents of an input that is the same on every device. A no-op
    without an axis, for an already varying `x`, and under `check_vma=False` (no types to meet).
    """
    if axis_name is None or axis_name in jax.typeof(x).mat.varying:
        return x
    return jax.lax.pcast(x, axis_name, to="varying")


def global_offset(local_size: int, axis_name: str | None) -> Array:
    """Index of this device's first row in the gathered (global) batch."""
    if axis_name is None:
        return jnp.zeros((), jnp.int32)
    return jax.lax.axis_index(axis_name) * local_size
