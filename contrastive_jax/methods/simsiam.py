"""SimSiam (Chen & He 2021, "Exploring Simple Siamese Representation Learning"): BYOL without
the momentum encoder. One network, encoder -> projector f -> predictor h, sees both views; the
loss is D(p1, sg(z2)) / 2 + D(p2, sg(z1)) / 2 with D the negative cosine (`losses.
negative_cosine`) and sg a stop-gradient, which is what keeps the outputs from collapsing.

The projector is 3 layers (2 on CIFAR) with BatchNorm on every layer, the last without scale or
bias; the predictor is the 2-layer bottleneck, 512 hidden for 2048 out (`heads.BatchNormMLP`).
Each view goes through the network on its own, as in the reference, with BatchNorm
synchronised over the `data` axis. SGD with momentum and a cosine schedule; the paper keeps the
predictor's learning rate fixed, which `optimizer.fixed_lr_params = ("predictor",)` does
(optim.make_optimizer). No state beyond BatchNorm, so the loss splits at the embeddings
(`loss_parts`) and gradient caching and fsdp take it.
"""

from __future__ import annotations

import jax
import ml_collections

from contrastive_jax import losses
from contrastive_jax.methods import Method, common
from contrastive_jax.parallel import grad_cache

Array = jax.Array


def validate(config: ml_collections.ConfigDict) -> None:
    """Refuses MLPs without a layer."""
    common.check_mlp_layers(config)


def build_model(config: ml_collections.ConfigDict, num_classes: int,
                axis_name: str | None) -> common.PredictorModel:
    """BYOL's network with SimSiam's projector: BatchNorm (no affine) on its output."""
    return common.build_predictor_model(config, num_classes, axis_name,
                                        projector_output_bn=True)


def simsiam_loss(p1: Array, p2: Array, z1: Array, z2: Array) -> Array:
    """D(p1, sg(z2)) / 2 + D(p2, sg(z1)) / 2: the projections z get no gradient."""
    z1, z2 = jax.lax.stop_gradient((z1, z2))
    return 0.5 * (losses.negative_cosine(p1, z2) + losses.negative_cosine(p2, z1))


def loss_parts(model: common.PredictorModel, config: ml_collections.ConfigDict,
               axis_name: str | None) -> grad_cache.LossParts:
    """The views' projections, predictions and probe logits (one view at a time through the
    network), then SimSiam's loss of them plus the online probe's."""
    del config, axis_name  # BatchNorm's axis is the model's; the loss is per example.

    def embed(params, batch_stats, batch):
        online, batch_stats = common.apply_per_view(model, params, batch_stats,
                                                  (batch["view1"], batch["view2"]))
        outputs = {f"{name}{view}": out[name] for view, out in enumerate(online, start=1)
                   for name in ("projection", "prediction", "probe_logits")}
        return outputs, batch_stats

    def loss_on(params, outputs, batch):
        del params
        loss = simsiam_loss(outputs["prediction1"], outputs["prediction2"],
                            outputs["projection1"], outputs["projection2"])
        probe_loss, probe_metrics = common.probe_loss_both_views(
            [outputs["probe_logits1"], outputs["probe_logits2"]], batch["label"])
        return loss + probe_loss, {**probe_metrics, "simsiam_loss": loss,
                                   "output_std": common.output_std(outputs["projection1"])}

    return grad_cache.LossParts(embed, loss_on)


def loss_fn(model: common.PredictorModel, config: ml_collections.ConfigDict, params, state,
            batch: dict[str, Array], rng: Array, axis_name: str | None):
    """`loss_parts` in one pass; metrics are this device's."""
    del rng
    return grad_cache.one_pass(loss_parts(model, config, axis_name), params, state.batch_stats,
                               batch)


METHOD = Method(name="simsiam", build_model=build_model,
                init_variables=common.init_image_variables,
                batch_shapes=common.two_view_batch_shapes, loss_fn=loss_fn,
                encoder_features=common.encoder_features, validate=validate,
                loss_parts=loss_parts)
