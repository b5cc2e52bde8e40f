"""BYOL (Grill et al. 2020, "Bootstrap your own latent"): an online network learns to predict
a slowly moving target network's projection of the other view, with no negatives.

Online network (`common.PredictorModel`): ResNet encoder -> projector MLP -> predictor MLP
(`heads.BatchNormMLP`, 4096 hidden, 256 out, BatchNorm in the hidden layer; `model.mlp_bias =
"hidden"`: a bias on the hidden Dense and none on the output one, as the reference's). Target
network: encoder -> projector whose parameters are an exponential moving average of the online
ones, xi <- tau xi + (1 - tau) theta after every optimizer step, tau rising from
`loss.momentum` (0.996) to 1 on a cosine (`common.momentum_at`). The loss is symmetrised:
byol_loss(q(view1), sg(z'(view2))) + the same with the views swapped (`losses.byol_loss`,
2 - 2 cos, each a mean over the batch); sg is a stop-gradient, so the target gets no gradient.
The target's parameters and BatchNorm statistics live in `TrainState.extra`, so they are
checkpointed with the rest.

As in the reference, each view goes through the network on its own, so BatchNorm (synchronised
over the `data` axis: every device's examples of that view) normalises one view at a time; the
running averages (used only for evaluation) move by the mean of the two views' updates. An
online linear probe on stop-gradient features of both views tracks representation quality.
There is no `loss_parts`: the target network is state beside the parameters, which gradient
caching and fsdp do not pass to a method's embedding, so both refuse BYOL (grad_cache.validate,
fsdp.validate).
"""

from __future__ import annotations

import jax
import ml_collections
import optax

from contrastive_jax import losses
from contrastive_jax.methods import Method, common

Array = jax.Array
TARGET_MODULES = ("encoder", "projection")  # The target network's parameter groups.
MLP_BIAS = ("hidden", "output")  # model.mlp_bias: which Dense layers of the MLPs have a bias.


def validate(config: ml_collections.ConfigDict) -> None:
    """Refuses an EMA momentum or schedule that cannot run, MLPs without a layer, and an
    unknown `model.mlp_bias`."""
    common.check_momentum(config)
    common.check_mlp_layers(config)
    if config.model.get("mlp_bias", "output") not in MLP_BIAS:
        raise ValueError(f"config.model.mlp_bias must be one of {MLP_BIAS}, got "
                         f"{config.model.mlp_bias!r}")


def build_model(config: ml_collections.ConfigDict, num_classes: int,
                axis_name: str | None) -> common.PredictorModel:
    """The ResNet, projector and predictor of `config.model` (`common.build_predictor_model`)."""
    return common.build_predictor_model(config, num_classes, axis_name,
                                        projector_output_bn=False)


def init_extra(config: ml_collections.ConfigDict, variables: dict, rng: Array) -> dict:
    """The target network: a copy of the online encoder and projector."""
    del config, rng
    return {"target_params": _target_part(variables["params"]),
            "target_batch_stats": _target_part(variables["batch_stats"])}


def _target_part(tree: dict) -> dict:
    return {name: tree[name] for name in TARGET_MODULES}


def loss_fn(model: common.PredictorModel, config: ml_collections.ConfigDict, params, state,
            batch: dict[str, Array], rng: Array, axis_name: str | None):
    """BYOL's symmetrised loss plus the online probe; metrics are this device's.

    Returns (loss, (changes, metrics)): the online BatchNorm statistics, and in `extra` the
    target's BatchNorm statistics (its parameters move in `after_update`).
    """
    del rng, axis_name  # BatchNorm's axis is the model's; the loss is per example.
    views = (batch["view1"], batch["view2"])
    online, batch_stats = common.apply_per_view(model, params, state.batch_stats, views)
    targets, target_batch_stats = common.apply_per_view(
        model, state.extra["target_params"], state.extra["target_batch_stats"], views,
        method=common.PredictorModel.project)
    targets = jax.lax.stop_gradient(targets)
    regression = (losses.byol_loss(online[0]["prediction"], targets[1])
                  + losses.byol_loss(online[1]["prediction"], targets[0]))
    probe_loss, probe_metrics = common.probe_loss_both_views(
        [out["probe_logits"] for out in online], batch["label"])
    metrics = {**probe_metrics, "byol_loss": regression,
               "target_momentum": common.momentum_at(config, state.step),
               "output_std": common.output_std(online[0]["projection"])}
    changes = {"batch_stats": batch_stats,
               "extra": {**state.extra, "target_batch_stats": target_batch_stats}}
    return regression + probe_loss, (changes, metrics)


def after_update(config: ml_collections.ConfigDict, state):
    """Moves the target towards the updated online network: xi <- tau xi + (1 - tau) theta."""
    tau = common.momentum_at(config, state.step)
    target_params = optax.incremental_update(_target_part(state.params),
                                             state.extra["target_params"], 1.0 - tau)
    return state.replace(extra={**state.extra, "target_params": target_params})


METHOD = Method(name="byol", build_model=build_model,
                init_variables=common.init_image_variables,
                batch_shapes=common.two_view_batch_shapes, loss_fn=loss_fn,
                encoder_features=common.encoder_features, validate=validate,
                init_extra=init_extra, after_update=after_update)
