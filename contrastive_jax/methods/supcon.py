"""Supervised contrastive learning (Khosla et al. 2020): SimCLR's two views and network, with
every other view of the same class as a positive (`losses.supcon`, the L_out form) over the
global batch. Labels come from the input pipeline with the views."""

from __future__ import annotations

import jax
import ml_collections

from contrastive_jax import losses
from contrastive_jax.methods import Method, common
from contrastive_jax.parallel import grad_cache


def loss_parts(model: common.ProjectionModel, config: ml_collections.ConfigDict,
               axis_name: str | None) -> grad_cache.LossParts:
    """SupCon of the two views' projections over all devices, times temperature /
    `loss.base_temperature` as SupContrast scales it, plus the online probe."""
    temperature = config.loss.temperature
    return common.two_view_parts(
        model, lambda z1, z2, labels: losses.supcon(z1, z2, labels, temperature,
                                                    axis_name=axis_name, with_metrics=True),
        multiplier=temperature / config.loss.get("base_temperature", temperature))


def loss_fn(model: common.ProjectionModel, config: ml_collections.ConfigDict, params, state,
            batch: dict[str, jax.Array], rng: jax.Array, axis_name: str | None):
    """`loss_parts` in one pass; metrics are this device's."""
    del rng
    return grad_cache.one_pass(loss_parts(model, config, axis_name), params, state.batch_stats,
                               batch)


METHOD = Method(name="supcon", build_model=common.build_projection_model,
                init_variables=common.init_image_variables,
                batch_shapes=common.two_view_batch_shapes, loss_fn=loss_fn,
                encoder_features=common.encoder_features, loss_parts=loss_parts)
