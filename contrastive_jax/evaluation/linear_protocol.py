"""SimCLR's linear evaluation protocol: a linear classifier trained on a frozen encoder.

Unlike `evaluate.linear_probe_top1` (AdamW on features computed once), this is the protocol whose
numbers the SimCLR paper reports (Chen et al. 2020, appendix B.6, and the reference code's
linear-eval commands): every step draws a fresh random-resized crop and horizontal flip of each
training image (no colour distortion), runs the frozen encoder on it in inference mode
(BatchNorm with its running statistics, gradients stopped), and updates a zero-initialised
linear layer with Nesterov SGD (momentum 0.9, lr = base x B / 256, cosine decay to 0 without
warmup, no weight decay). Test accuracy is on the centre-cropped evaluation split.

`eval.linear_eval_protocol = "lars"` takes SimSiam's optimizer instead (facebookresearch/simsiam
main_lincls.py with --lars: SGD with momentum 0.9, not Nesterov, wrapped in LARC with trust
coefficient 1e-3 and no clipping over both weight and bias, lr = base x B / 256 on the same
cosine, no weight decay); the data, the schedule and the zero-initialised head are shared.

The command `python -m contrastive_jax.linear_eval` runs it on a workdir's newest checkpoint;
`eval.linear_eval = True` runs it at the end of training.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging as absl_logging
from jax.sharding import PartitionSpec as P

from contrastive_jax import optim, parallel
from contrastive_jax.evaluation import functions as evaluate
from contrastive_jax.logging import progress_line
from contrastive_jax.parallel.layout import Layout

METRIC = "linear_eval_top1"
EncodeFn = Callable[[Any, jax.Array], jax.Array]


@flax.struct.dataclass
class HeadState:
    """The linear head's parameters and optimizer state; the encoder is not part of it."""

    step: jax.Array
    params: Any
    opt_state: Any


# -- the head and its optimizer ------------------------------------------------------------------


def linear_head(num_classes: int) -> nn.Dense:
    """The classifier: one dense layer with bias, zero-initialised as the reference does with
    `zero_init_logits_layer`, so the first step's logits are all equal."""
    return nn.Dense(num_classes, kernel_init=nn.initializers.zeros,
                    bias_init=nn.initializers.zeros, name="linear_eval_head")


def init_head(num_classes: int, feature_dim: int) -> dict:
    """The head's parameters {"kernel": [feature_dim, num_classes], "bias": [num_classes]}."""
    variables = linear_head(num_classes).init(jax.random.PRNGKey(0),
                                              jnp.zeros((1, feature_dim), jnp.float32))
    return variables["params"]


def num_steps(num_examples: int, epochs: float, batch_size: int) -> int:
    """Optimizer steps for `epochs` passes over the training split, counted as the reference
    does (num_examples * epochs // batch_size + 1); batches run on across epoch boundaries."""
    return int(num_examples * epochs // batch_size) + 1


PROTOCOLS = ("simclr", "lars")  # eval.linear_eval_protocol


def head_optimizer(eval_config: ml_collections.ConfigDict, total_steps: int
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """lr = base x B / 256 decayed to 0 on a cosine over `total_steps`, no warmup and no weight
    decay: Nesterov SGD ("simclr"), or LARC-adapted momentum SGD ("lars", SimSiam's: each
    parameter's gradient times 1e-3 ||p|| / ||g|| (1 where either is 0), then momentum, then
    the learning rate, as torch.optim.SGD applies it to the momentum buffer)."""
    peak = optim.scale_learning_rate(eval_config.linear_eval_learning_rate,
                                     eval_config.linear_eval_batch_size, "linear")
    schedule = optax.cosine_decay_schedule(peak, total_steps)
    momentum = eval_config.linear_eval_momentum
    if eval_config.linear_eval_protocol == "lars":
        return optax.chain(optax.scale_by_trust_ratio(trust_coefficient=1e-3),
                           optax.trace(decay=momentum),
                           optax.scale_by_learning_rate(schedule)), schedule
    return optax.sgd(schedule, momentum=momentum, nesterov=True), schedule


def init_head_state(num_classes: int, feature_dim: int,
                    tx: optax.GradientTransformation) -> HeadState:
    """Step 0: zero head, fresh optimizer state."""
    params = init_head(num_classes, feature_dim)
    return HeadState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


# -- the per-device step -------------------------------------------------------------------------


def make_head_step(encode_fn: EncodeFn, num_classes: int, tx: optax.GradientTransformation,
                   schedule: optax.Schedule) -> Callable:
    """The per-device step `(head_state, encoder_variables, batch) -> (head_state, metrics)`.

    `encode_fn(variables, images)` is the encoder in inference mode; its features are
    stop-gradient, so only the head learns. The cross-entropy gradient of this device's slice
    is `pmean`-ed over the `data` axis: the update is that of the global batch.
    """
    head = linear_head(num_classes)
    axis = parallel.AXIS

    def step(state: HeadState, variables, batch):
        features = jax.lax.stop_gradient(encode_fn(variables, batch["image"])).astype(jnp.float32)

        def loss_fn(params):
            logits = head.apply({"params": params}, features)
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
            return loss, logits

        (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        grads = jax.lax.pmean(grads, axis)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        metrics = jax.lax.pmean(
            {"loss": loss, "train_top1": jnp.mean(jnp.argmax(logits, -1) == batch["label"])},
            axis)
        metrics["learning_rate"] = schedule(state.step)
        return state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                             opt_state=opt_state), metrics

    return step


def wrap_head_step(step: Callable, layout: Layout) -> Callable:
    """`step` under pmap or jit + shard_map: head state and encoder variables replicated, the
    batch split over devices; the incoming head state is donated."""
    replicated = P()
    return layout.wrap(step, in_specs=(replicated, replicated, P(parallel.AXIS)),
                       out_specs=(replicated, replicated), donate_argnums=0)


def top1_extractor(encode_fn: EncodeFn, num_classes: int, layout: Layout) -> Callable:
    """`wrap_extractor` of whether the head's arg-max on the encoder's features is the label;
    its variables are {"encoder": ..., "head": head params}."""
    head = linear_head(num_classes)

    def correct(variables, batch):
        logits = head.apply({"params": variables["head"]},
                            encode_fn(variables["encoder"], batch["image"]).astype(jnp.float32))
        return {"correct": jnp.argmax(logits, -1) == batch["label"]}

    return evaluate.wrap_extractor(correct, layout)


# -- the protocol --------------------------------------------------------------------------------


def validate(config: ml_collections.ConfigDict, num_classes: int) -> None:
    """Refuses linear-evaluation settings that cannot run, naming the field."""
    eval_config = config.eval
    if num_classes <= 0:
        raise ValueError(f"linear evaluation needs labels, and {config.data.source!r} has none")
    batch_size = eval_config.linear_eval_batch_size
    if batch_size <= 0 or batch_size % jax.device_count():
        raise ValueError(f"config.eval.linear_eval_batch_size {batch_size} does not divide over "
                         f"{jax.device_count()} devices")
    protocol = eval_config.linear_eval_protocol
    if protocol not in PROTOCOLS:
        raise ValueError(f"config.eval.linear_eval_protocol must be one of {PROTOCOLS}, got "
                         f"{protocol!r}")
    for field in ("linear_eval_epochs", "linear_eval_learning_rate"):
        if eval_config[field] <= 0:
            raise ValueError(f"config.eval.{field} must be > 0, got {eval_config[field]}")
    if not 0 < eval_config.linear_eval_crop_area_min <= 1:
        raise ValueError("config.eval.linear_eval_crop_area_min must be in (0, 1], got "
                         f"{eval_config.linear_eval_crop_area_min}")


def _feature_dim(encode_fn: EncodeFn, variables, layout: Layout, image_size: int) -> int:
    """Width of the encoder's features, from shapes only (one device's copy of the variables)."""
    one_copy = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape[1:] if layout.kind == "pmap" else x.shape, x.dtype),
        variables)
    images = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
    return int(jax.eval_shape(encode_fn, one_copy, images).shape[-1])


def _log_every(total_steps: int) -> int:
    return max(1, total_steps // 10)


def train_head(config: ml_collections.ConfigDict, variables, encode_fn: EncodeFn, *,
               num_classes: int, num_train_examples: int, layout: Layout) -> HeadState:
    """Trains the linear head on the frozen encoder; returns its final state (device form)."""
    from contrastive_jax.data import linear_eval_input  # tf.data: imported where data is read.

    eval_config = config.eval
    total_steps = num_steps(num_train_examples, eval_config.linear_eval_epochs,
                            eval_config.linear_eval_batch_size)
    tx, schedule = head_optimizer(eval_config, total_steps)
    feature_dim = _feature_dim(encode_fn, variables, layout, int(config.data.image_size))
    state = layout.replicate(init_head_state(num_classes, feature_dim, tx))
    step_fn = wrap_head_step(make_head_step(encode_fn, num_classes, tx, schedule), layout)
    batches = layout.prefetch(linear_eval_input.train_batches(
        config.data, global_batch_size=eval_config.linear_eval_batch_size, seed=config.seed,
        crop_area_min=eval_config.linear_eval_crop_area_min))
    timer = time.perf_counter()
    for step in range(1, total_steps + 1):
        state, metrics = step_fn(state, variables, next(batches))
        if step % _log_every(total_steps) == 0 or step == total_steps:
            values = {k: float(v) for k, v in layout.unreplicate(metrics).items()}
            if not np.isfinite(values["loss"]):
                raise FloatingPointError(
                    f"linear evaluation loss is {values['loss']} at step {step}; lower "
                    "config.eval.linear_eval_learning_rate")
            seconds_left = (time.perf_counter() - timer) / step * (total_steps - step)
            absl_logging.info("linear eval %s",
                              progress_line(step, total_steps, values, seconds_left))
    return state


def linear_eval(config: ml_collections.ConfigDict, variables, encode_fn: EncodeFn,
                layout: Layout) -> dict[str, float]:
    """SimCLR's linear evaluation of the frozen encoder `encode_fn(variables, images)`.

    `variables` are replicated in `layout` (as `Trainer.evaluation_variables` gives them) and left untouched. Trains the head for
    `eval.linear_eval_epochs` on the training split, returns {"linear_eval_top1": accuracy on
    the evaluation split}.
    """
    from contrastive_jax.data import input_pipeline, sources as data_sources

    info = data_sources.dataset_info(config.data)
    validate(config, info.num_classes)
    state = train_head(config, variables, encode_fn, num_classes=info.num_classes,
                       num_train_examples=info.num_train_examples, layout=layout)
    batches = input_pipeline.eval_iterator(config.data, config.data.eval_split,
                                           global_batch_size=config.eval.batch_size)
    out = evaluate.extract(top1_extractor(encode_fn, info.num_classes, layout),
                           {"encoder": variables, "head": state.params}, batches, layout)
    return {METRIC: float(np.mean(out["correct"]))}
