"""SimCLR: two views of each image, one encoder + projection head, NT-Xent over all devices.

The network is `common.ProjectionModel`. Both views go through it as one batch, so BatchNorm
(synchronised over the `data` axis: SimCLR's global BN) sees all 2N views. An online linear
probe on stop-gradient features tracks representation quality during training without shaping
the encoder.
"""

from __future__ import annotations

from typing import Callable

import jax
import ml_collections

from contrastive_jax import losses
from contrastive_jax.methods import Method, common
from contrastive_jax.parallel import grad_cache

Array = jax.Array
DECOUPLED = ("none", "dcl", "dclw")  # loss.decoupled: NT-Xent, DCL, DCLW (Yeh et al. 2022)


def validate(config: ml_collections.ConfigDict) -> None:
    """Refuses a `loss.decoupled` that is not a loss, or a DCLW sigma <= 0."""
    decoupled = config.loss.get("decoupled", "none")
    if decoupled not in DECOUPLED:
        raise ValueError(f"config.loss.decoupled must be one of {DECOUPLED}, got {decoupled!r}")
    if decoupled == "dclw" and config.loss.dclw_sigma <= 0:
        raise ValueError(f"config.loss.dclw_sigma must be > 0, got {config.loss.dclw_sigma}")


def contrastive_loss(config: ml_collections.ConfigDict, axis_name: str | None
                     ) -> Callable[[Array, Array, Array], tuple[Array, dict]]:
    """`(z1, z2, labels) -> (loss, metrics)`: NT-Xent, or with `loss.decoupled` DCL / DCLW."""
    temperature = config.loss.temperature
    decoupled = config.loss.get("decoupled", "none")
    if decoupled == "none":
        return lambda z1, z2, labels: losses.nt_xent(z1, z2, temperature, axis_name=axis_name,
                                                     with_metrics=True)
    sigma = config.loss.dclw_sigma if decoupled == "dclw" else None
    detach = config.loss.get("dclw_detach_weight", True)
    return lambda z1, z2, labels: losses.dcl(z1, z2, temperature, weight_sigma=sigma,
                                             detach_weight=detach, axis_name=axis_name,
                                             with_metrics=True)


def loss_parts(model: common.ProjectionModel, config: ml_collections.ConfigDict,
               axis_name: str | None) -> grad_cache.LossParts:
    """NT-Xent (or DCL / DCLW, `loss.decoupled`) of the two views' projections over all devices
    (times `loss.multiplier`: 2.0 is the reference's sum of both directions), plus the online
    probe."""
    return common.two_view_parts(model, contrastive_loss(config, axis_name),
                                 multiplier=config.loss.get("multiplier", 1.0))


def loss_fn(model: common.ProjectionModel, config: ml_collections.ConfigDict, params, state,
            batch: dict[str, Array], rng: Array, axis_name: str | None):
    """`loss_parts` in one pass; metrics are this device's."""
    del rng
    return grad_cache.one_pass(loss_parts(model, config, axis_name), params, state.batch_stats,
                               batch)


METHOD = Method(name="simclr", build_model=common.build_projection_model,
                init_variables=common.init_image_variables,
                batch_shapes=common.two_view_batch_shapes, loss_fn=loss_fn,
                encoder_features=common.encoder_features, validate=validate,
                loss_parts=loss_parts)
