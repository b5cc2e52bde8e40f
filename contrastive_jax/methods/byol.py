"""BYOL (Grill et al. 2020, "Bootstrap your own latent"): an online network learns to predict
a slowly moving target network's projection of the other view, with no negatives.

Online network: ResNet encoder -> projector MLP -> predictor MLP (`heads.BatchNormMLP`, 4096
hidden, 256 out, BatchNorm in the hidden layer; `model.mlp_bias = "hidden"`: a bias on the
hidden Dense and none on the output one, as the reference's). Target network: encoder -> projector whose
parameters are an exponential moving average of the online ones, xi <- tau xi + (1 - tau) theta
after every optimizer step, tau rising from `loss.momentum` (0.996) to 1 on a cosine
(`moco.momentum_at`). The loss is symmetrised: byol_loss(q(view1), sg(z'(view2))) + the same
with the views swapped (`losses.byol_loss`, 2 - 2 cos, each a mean over the batch); sg is a
stop-gradient, so the target gets no gradient. The target's parameters and BatchNorm statistics
live in `TrainState.extra`, so they are checkpointed with the rest.

As in the reference, each view goes through the network on its own, so BatchNorm (synchronised
over the `data` axis: every device's examples of that view) normalises one view at a time; the
running averages (used only for evaluation) move by the mean of the two views' updates. An
online linear probe on stop-gradient features of both views tracks representation quality.
There is no `loss_parts`: the target network is state beside the parameters, which gradient
caching and fsdp do not pass to a method's embedding, so both refuse BYOL (grad_cache.validate,
fsdp.validate).
"""

from __future__ import annotations

import operator
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from contrastive_jax import losses
from contrastive_jax.methods import Method
from contrastive_jax.methods import moco, simclr
from contrastive_jax.methods.simclr import batch_shapes, encoder_features, init_variables
from contrastive_jax.models import heads

__all__ = ["METHOD", "after_update", "apply_per_view", "batch_shapes", "build_model",
           "encoder_features", "init_extra", "init_variables", "loss_fn", "output_std", "validate"]

Array = jax.Array
TARGET_MODULES = ("encoder", "projection")  # The target network's parameter groups.
MLP_BIAS = ("hidden", "output")  # model.mlp_bias: which Dense layers of the MLPs have a bias.


class BYOLModel(nn.Module):
    """Encoder -> projector -> predictor, and the online probe: the network of BYOL and
    SimSiam. `project` is the target path (no predictor)."""

    encoder: nn.Module
    projection: nn.Module
    predictor: nn.Module
    num_classes: int

    def project(self, images: Array, train: bool) -> Array:
        return self.projection(self.encoder(images, train=train), train=train)

    @nn.compact
    def __call__(self, images: Array, train: bool) -> dict[str, Array]:
        features = self.encoder(images, train=train)
        projection = self.projection(features, train=train)
        return {"features": features, "projection": projection,
                "prediction": self.predictor(projection, train=train),
                "probe_logits": heads.LinearProbe(self.num_classes, name="probe")(features)}


def validate(config: ml_collections.ConfigDict) -> None:
    """Refuses an EMA momentum or schedule that cannot run, MLPs without a layer, and an
    unknown `model.mlp_bias`."""
    moco.check_momentum(config)
    check_mlp_layers(config)
    if config.model.get("mlp_bias", "output") not in MLP_BIAS:
        raise ValueError(f"config.model.mlp_bias must be one of {MLP_BIAS}, got "
                         f"{config.model.mlp_bias!r}")


def check_mlp_layers(config: ml_collections.ConfigDict) -> None:
    """The projector and predictor need at least one layer each."""
    for key in ("head_layers", "predictor_layers"):
        if config.model[key] < 1:
            raise ValueError(f"config.model.{key} must be >= 1, got {config.model[key]}")


def build_model(config: ml_collections.ConfigDict, num_classes: int, axis_name: str | None, *,
                projector_output_bn: bool = False) -> BYOLModel:
    """The ResNet, projector (`model.head_*`) and predictor (`model.predictor_*`, out to the
    projection's width) of `config.model`; `projector_output_bn` is SimSiam's projector."""
    model_config, dtype = config.model, simclr.model_dtype(config)
    hidden_bias = model_config.get("mlp_bias", "output") == "hidden"  # SimSiam: "output".
    biases = dict(hidden_bias=hidden_bias, output_bias=not hidden_bias)
    projection = heads.BatchNormMLP(
        num_layers=model_config.head_layers, hidden_dim=model_config.head_hidden_dim,
        out_dim=model_config.head_out_dim, output_bn=projector_output_bn,
        bn_axis_name=axis_name, dtype=dtype, **biases)
    predictor = heads.BatchNormMLP(
        num_layers=model_config.predictor_layers, hidden_dim=model_config.predictor_hidden_dim,
        out_dim=model_config.head_out_dim, bn_axis_name=axis_name, dtype=dtype, **biases)
    return BYOLModel(encoder=simclr.build_encoder(config, axis_name), projection=projection,
                     predictor=predictor, num_classes=num_classes)


def init_extra(config: ml_collections.ConfigDict, variables: dict, rng: Array) -> dict:
    """The target network: a copy of the online encoder and projector."""
    del config, rng
    return {"target_params": _target_part(variables["params"]),
            "target_batch_stats": _target_part(variables["batch_stats"])}


def _target_part(tree: dict) -> dict:
    return {name: tree[name] for name in TARGET_MODULES}


def apply_per_view(model: nn.Module, params, batch_stats, views: Sequence[Array],
                   method: Callable | None = None) -> tuple[list, dict]:
    """Each view through `model` in train mode with BatchNorm statistics of its own (vmapped
    over the views, so the step compiles the network once). Returns (the outputs of every view,
    the new batch_stats: the mean of the views' running-average updates)."""
    apply = lambda images: model.apply(  # noqa: E731
        {"params": params, "batch_stats": batch_stats}, images, train=True, method=method,
        mutable=["batch_stats"])
    outputs, updates = jax.vmap(apply)(jnp.stack(views))
    per_view = [jax.tree.map(operator.itemgetter(v), outputs) for v in range(len(views))]
    return per_view, jax.tree.map(lambda s: s.mean(0), updates["batch_stats"])


def output_std(z: Array) -> Array:
    """The std over the batch of the L2-normalised outputs, averaged over channels: about
    1/sqrt(d) for spread-out outputs and 0 for collapsed ones (Chen & He 2021, figure 2)."""
    return jnp.mean(jnp.std(losses.l2_normalize(z), axis=0))


def probe_loss_both_views(probe_logits: Sequence[Array], labels: Array
                          ) -> tuple[Array, dict]:
    """The online probe's cross-entropy over the probe logits of every view."""
    return simclr.probe_loss_and_metrics(jnp.concatenate(probe_logits),
                                         jnp.concatenate([labels] * len(probe_logits)))


def loss_fn(model: BYOLModel, config: ml_collections.ConfigDict, params, state,
            batch: dict[str, Array], rng: Array, axis_name: str | None):
    """BYOL's symmetrised loss plus the online probe; metrics are this device's.

    Returns (loss, (changes, metrics)): the online BatchNorm statistics, and in `extra` the
    target's BatchNorm statistics (its parameters move in `after_update`).
    """
    del rng, axis_name  # BatchNorm's axis is the model's; the loss is per example.
    views = (batch["view1"], batch["view2"])
    online, batch_stats = apply_per_view(model, params, state.batch_stats, views)
    targets, target_batch_stats = apply_per_view(
        model, state.extra["target_params"], state.extra["target_batch_stats"], views,
        method=BYOLModel.project)
    targets = jax.lax.stop_gradient(targets)
    regression = (losses.byol_loss(online[0]["prediction"], targets[1])
                  + losses.byol_loss(online[1]["prediction"], targets[0]))
    probe_loss, probe_metrics = probe_loss_both_views(
        [out["probe_logits"] for out in online], batch["label"])
    metrics = {**probe_metrics, "byol_loss": regression,
               "target_momentum": moco.momentum_at(config, state.step),
               "output_std": output_std(online[0]["projection"])}
    changes = {"batch_stats": batch_stats,
               "extra": {**state.extra, "target_batch_stats": target_batch_stats}}
    return regression + probe_loss, (changes, metrics)


def after_update(config: ml_collections.ConfigDict, state):
    """Moves the target towards the updated online network: xi <- tau xi + (1 - tau) theta."""
    tau = moco.momentum_at(config, state.step)
    target_params = optax.incremental_update(_target_part(state.params),
                                             state.extra["target_params"], 1.0 - tau)
    return state.replace(extra={**state.extra, "target_params": target_params})


METHOD = Method(name="byol", build_model=build_model, init_variables=init_variables,
                batch_shapes=batch_shapes, loss_fn=loss_fn, encoder_features=encoder_features,
                validate=validate, init_extra=init_extra, after_update=after_update)
