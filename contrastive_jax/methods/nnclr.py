"""NNCLR (Dwibedi et al. 2021, "With a Little Help from My Friends: Nearest-Neighbor
Contrastive Learning of Visual Representations"): SimCLR whose positive is a nearest neighbour.

Both views go through the ResNet, a projector (z: 3 layers, 2048 wide, 256 out, BatchNorm) and a
predictor (p: 2 layers, 4096 wide) as one batch, so BatchNorm, synchronised over the `data`
axis, sees all 2N views. Each projection z1_i is replaced by its cosine nearest neighbour in a
support set Q of past projections, NN(z1_i), with no gradient; NN(z1_i) must pick out p2_i
among the view-2 predictions of the whole global batch (`losses.info_nce`, the paper's eq. 2
with its prediction head). The loss is symmetrised with the views swapped, as solo-learn and
lightly do: L = (info_nce(NN(z1), p2) + info_nce(NN(z2), p1)) / 2, temperature 0.1.

Q is a FIFO queue: after the step the view-1 projections of the global batch, gathered from
every device in order and L2-normalised, replace its oldest rows. It starts as random unit
vectors (the first K / B steps look up neighbours among noise) and lives with its pointer in
`TrainState.extra`, so it is checkpointed with the rest. An online linear probe on
stop-gradient features tracks representation quality, as in SimCLR.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from contrastive_jax import losses
from contrastive_jax.methods import Method, common
from contrastive_jax.models import heads

Array = jax.Array


class NNCLRModel(nn.Module):
    """Encoder -> (features, projection z, prediction p, probe logits)."""

    encoder: nn.Module
    projection: nn.Module
    prediction: nn.Module
    num_classes: int

    @nn.compact
    def __call__(self, images: Array, train: bool) -> tuple[Array, Array, Array, Array]:
        features = self.encoder(images, train=train)
        projection = self.projection(features, train=train)
        prediction = self.prediction(projection, train=train)
        probe_logits = heads.LinearProbe(self.num_classes, name="probe")(features)
        return features, projection, prediction, probe_logits


def validate(config: ml_collections.ConfigDict) -> None:
    """Refuses NNCLR settings that cannot run, naming the field."""
    size = config.loss.support_set_size
    if size <= 0 or size % config.batch_size:
        raise ValueError(f"config.loss.support_set_size ({size}) must be a positive multiple of "
                         f"batch_size ({config.batch_size}), so that every step replaces whole "
                         "batches of projections")
    if config.model.predictor_hidden_dim < 1:
        raise ValueError("config.model.predictor_hidden_dim must be >= 1, got "
                         f"{config.model.predictor_hidden_dim}")


def build_model(config: ml_collections.ConfigDict, num_classes: int,
                axis_name: str | None) -> NNCLRModel:
    """SimCLR's encoder and projection head (`config.model`) and a predictor of
    `model.predictor_hidden_dim`, all with BatchNorm over `axis_name`."""
    base = common.build_projection_model(config, num_classes, axis_name)
    prediction = heads.BatchNormMLP(
        num_layers=2, hidden_dim=config.model.predictor_hidden_dim,
        out_dim=config.model.head_out_dim, bn_axis_name=axis_name,
        dtype=common.model_dtype(config))
    return NNCLRModel(encoder=base.encoder, projection=base.projection, prediction=prediction,
                      num_classes=num_classes)


def init_extra(config: ml_collections.ConfigDict, variables: dict, rng: Array) -> dict:
    """A support set of random unit vectors and its write pointer."""
    del variables
    support = jax.random.normal(rng, (config.loss.support_set_size, config.model.head_out_dim))
    return {"support_set": losses.l2_normalize(support), "support_ptr": jnp.zeros((), jnp.int32)}


def nearest_neighbours(queries: Array, support_set: Array) -> Array:
    """Row i: the row of `support_set` of largest cosine similarity with `queries[i]`,
    L2-normalised, with no gradient (float32)."""
    support = losses.l2_normalize(jax.lax.stop_gradient(support_set))
    similarity = losses.l2_normalize(jax.lax.stop_gradient(queries)) @ support.T
    return support[jnp.argmax(similarity, axis=-1)]


def nnclr_loss(z1: Array, z2: Array, p1: Array, p2: Array, support_set: Array,
               temperature: float, *, axis_name: str | None = None
               ) -> tuple[Array, dict[str, Array]]:
    """(info_nce(NN(z1), p2) + info_nce(NN(z2), p1)) / 2 against the predictions of all
    devices, and the two directions' mean diagnostics (`losses.info_nce`'s)."""
    forward = losses.info_nce(nearest_neighbours(z1, support_set), p2, temperature,
                              axis_name=axis_name, with_metrics=True)
    backward = losses.info_nce(nearest_neighbours(z2, support_set), p1, temperature,
                               axis_name=axis_name, with_metrics=True)
    return jax.tree.map(lambda a, b: (a + b) / 2, forward, backward)


def enqueue(support_set: Array, pointer: Array, rows: Array) -> tuple[Array, Array]:
    """`rows` written over the support set from `pointer` on (the oldest rows), and the
    pointer after them, wrapping around."""
    support_set = jax.lax.dynamic_update_slice_in_dim(
        support_set, rows.astype(support_set.dtype), pointer, axis=0)
    return support_set, (pointer + rows.shape[0]) % support_set.shape[0]


def loss_fn(model: NNCLRModel, config: ml_collections.ConfigDict, params, state,
            batch: dict[str, Array], rng: Array, axis_name: str | None):
    """NNCLR's loss plus the online probe; `extra` gets the support set with this global
    batch's view-1 projections enqueued."""
    del rng
    n = batch["view1"].shape[0]
    images = jnp.concatenate([batch["view1"], batch["view2"]], axis=0)
    (_, projection, prediction, probe_logits), updates = model.apply(
        {"params": params, "batch_stats": state.batch_stats}, images, train=True,
        mutable=["batch_stats"])
    z1, z2, p1, p2 = projection[:n], projection[n:], prediction[:n], prediction[n:]
    support_set = state.extra["support_set"]
    contrastive, metrics = nnclr_loss(z1, z2, p1, p2, support_set, config.loss.temperature,
                                      axis_name=axis_name)
    probe_loss, probe_metrics = common.probe_loss_and_metrics(
        probe_logits, jnp.concatenate([batch["label"], batch["label"]]))
    new_rows = losses.gather(losses.l2_normalize(jax.lax.stop_gradient(z1)), axis_name)
    support_set, pointer = enqueue(support_set, state.extra["support_ptr"], new_rows)
    changes = {"batch_stats": updates["batch_stats"],
               "extra": {"support_set": support_set, "support_ptr": pointer}}
    metrics = {**metrics, **probe_metrics, "contrastive_loss": contrastive}
    return contrastive + probe_loss, (changes, metrics)


METHOD = Method(name="nnclr", build_model=build_model,
                init_variables=common.init_image_variables,
                batch_shapes=common.two_view_batch_shapes, loss_fn=loss_fn,
                encoder_features=common.encoder_features, validate=validate,
                init_extra=init_extra)
