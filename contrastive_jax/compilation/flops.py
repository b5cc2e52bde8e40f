"""FLOPs of a program's matrix products, counted from its jaxpr: for MFU and roofline estimates.

`jaxpr_flops(jax.make_jaxpr(step)(*args))` sums 2 x the multiply-adds of every `dot_general`
and `conv_general_dilated` the program runs: the forward and backward passes as JAX wrote
them, momentum encoders, the loss's logits. Element-wise work, softmax and normalisation are
left out, as MFU conventionally does. It is exact for the shapes traced, for any model, and
needs neither a device nor a compile. Sub-programs count as often as they run: a `scan` its
length times, a `shard_map` body once per device of its mesh (so a shard_map step counts the
whole global batch), a `cond` its costliest branch; a `while_loop` (unknown trip count) once.
A backward convolution over a dilated input (the input gradient of a strided convolution)
counts only the products with the input's non-zero entries. Rematerialised forward passes
count again: this is the work the hardware does (trace with remat off for model FLOPs).
XLA's own cost analysis is not used: it misses cuDNN's convolutions on GPUs.
"""

from __future__ import annotations

import math
from typing import Any

import jax

Jaxpr = Any


def _dot_general_flops(eqn) -> float:
    lhs = eqn.invars[0].aval
    (lhs_contracting, _), _ = eqn.params["dimension_numbers"]
    contracted = math.prod(lhs.shape[d] for d in lhs_contracting)
    return 2.0 * math.prod(eqn.outvars[0].aval.shape) * contracted


def _conv_flops(eqn) -> float:
    """2 x output elements x (kernel window x input features per group), over the share of the
    window that meets non-zero input when the input is dilated."""
    rhs = eqn.invars[1].aval
    rhs_spec = eqn.params["dimension_numbers"].rhs_spec  # (out features, in features, spatial)
    window = math.prod(rhs.shape[d] for d in rhs_spec[2:])
    macs = math.prod(eqn.outvars[0].aval.shape) * window * rhs.shape[rhs_spec[1]]
    return 2.0 * macs / math.prod(eqn.params.get("lhs_dilation") or (1,))


def _sub_jaxprs(value) -> list:
    if isinstance(value, jax.extend.core.ClosedJaxpr):
        return [value.jaxpr]
    if isinstance(value, jax.extend.core.Jaxpr):
        return [value]
    if isinstance(value, (tuple, list)):
        return [j for item in value for j in _sub_jaxprs(item)]
    return []


def _mesh_size(eqn) -> int:
    mesh = eqn.params["mesh"]
    return math.prod(dict(mesh.shape).values())


def jaxpr_flops(jaxpr: Jaxpr) -> float:
    """The FLOPs of the matrix products of a (closed) jaxpr, sub-programs included."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    total = 0.0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            total += _dot_general_flops(eqn)
        elif name == "conv_general_dilated":
            total += _conv_flops(eqn)
        elif name == "cond":
            total += max(jaxpr_flops(branch) for branch in eqn.params["branches"])
        else:
            inner = sum(jaxpr_flops(sub) for value in eqn.params.values()
                        for sub in _sub_jaxprs(value))
            if name == "scan":
                inner *= eqn.params["length"]
            elif name == "shard_map":
                inner *= _mesh_size(eqn)
            elif name == "xla_pmap":
                inner *= eqn.params["axis_size"]
            total += inner
    return total


def step_flops(fn, *args) -> float:
    """`jaxpr_flops` of `fn` traced at `args` (arrays or `jax.ShapeDtypeStruct`s)."""
    return jaxpr_flops(jax.make_jaxpr(fn)(*args))
