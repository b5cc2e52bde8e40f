"""SwAV: Sinkhorn-Knopp codes and the swapped-prediction loss (two views and multi-crop) against
numpy, the same codes, loss and gradients on 8 devices as on one (for the multi-crop step too),
frozen and unit prototypes in the step, the encoder's features for evaluation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from contrastive_jax import config_checks, losses, methods, optim, parallel, train, train_step
from contrastive_jax.logging import read_metrics
from contrastive_jax.methods import swav
from contrastive_jax.models import heads

from support import assert_trees_equal, tiny_config, TinyEncoder

AXIS = parallel.AXIS


def numpy_sinkhorn(scores, epsilon, iterations):
    """The reference's loop in float64: Q = exp(scores / eps)^T [K, B] made a joint
    distribution, then prototype rows and sample columns normalised in turn to 1/K and 1/B."""
    q = np.exp(np.float64(scores) / epsilon).T
    q /= q.sum()
    num_prototypes, num_rows = q.shape
    for _ in range(iterations):
        q /= q.sum(axis=1, keepdims=True) * num_prototypes
        q /= q.sum(axis=0, keepdims=True) * num_rows
    return (q * num_rows).T


def numpy_swav_loss(scores1, scores2, temperature, epsilon, iterations, small=(), queue=None):
    """The reference's loop: for each of the two views' codes (from Sinkhorn over the view's
    queue rows and the batch's, with a queue), the mean cross-entropy of every other crop's
    prediction; the two means averaged."""
    def log_softmax(x):
        x = np.float64(x) / temperature
        return x - np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
            - x.max(-1, keepdims=True)
    crops = [scores1, scores2, *small]
    loss = 0.0
    for view in (0, 1):
        rows = crops[view] if queue is None else np.concatenate([queue[view], crops[view]])
        q = numpy_sinkhorn(rows, epsilon, iterations)[-len(crops[view]):]
        others = [k for k in range(len(crops)) if k != view]
        loss -= sum(np.mean(np.sum(q * log_softmax(crops[k]), -1)) for k in others) / len(others)
    return loss / 2


def cosine_scores(rng, n, k, d=6):
    z = rng.normal(size=(n, d))
    c = rng.normal(size=(k, d))
    return (z / np.linalg.norm(z, axis=1, keepdims=True)
            @ (c / np.linalg.norm(c, axis=1, keepdims=True)).T).astype(np.float32)


def test_sinkhorn_and_the_loss_equal_numpy():
    rng = np.random.default_rng(0)
    scores1, scores2 = cosine_scores(rng, 16, 5), cosine_scores(rng, 16, 5)
    codes = np.asarray(losses.sinkhorn_knopp(scores1, 0.05, 3))
    np.testing.assert_allclose(codes, numpy_sinkhorn(scores1, 0.05, 3), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(codes.sum(axis=1), 1.0, rtol=1e-5)
    # Many iterations reach the equal partition: every prototype gets B / K of the mass.
    balanced = np.asarray(losses.sinkhorn_knopp(scores1, 0.05, 200))
    np.testing.assert_allclose(balanced.sum(axis=0), 16 / 5, rtol=1e-3)
    loss = float(losses.swav_loss(scores1, scores2, 0.1, epsilon=0.05, iterations=3))
    assert loss == pytest.approx(numpy_swav_loss(scores1, scores2, 0.1, 0.05, 3), rel=1e-5)
    small = [cosine_scores(rng, 16, 5) for _ in range(3)]
    multi = float(losses.swav_loss(scores1, scores2, 0.1, epsilon=0.05, iterations=3,
                                   small_scores=small))
    assert multi == pytest.approx(numpy_swav_loss(scores1, scores2, 0.1, 0.05, 3, small),
                                  rel=1e-5)
    queue = (cosine_scores(rng, 32, 5), cosine_scores(rng, 32, 5))
    queued = float(losses.swav_loss(scores1, scores2, 0.1, epsilon=0.05, iterations=3,
                                    small_scores=small, queue_scores=queue))
    assert queued == pytest.approx(
        numpy_swav_loss(scores1, scores2, 0.1, 0.05, 3, small, queue), rel=1e-5)
    assert abs(queued - multi) > 1e-3  # The queue's rows change the codes.
    unused = float(losses.swav_loss(scores1, scores2, 0.1, epsilon=0.05, iterations=3,
                                    small_scores=small, queue_scores=queue, use_queue=False))
    assert unused == pytest.approx(multi, rel=1e-6)


@pytest.mark.parametrize("kind", parallel.KINDS)
def test_codes_loss_and_gradients_over_8_devices_equal_one_device(kind):
    """8 devices x 3 rows: the codes are those of the global batch (its sums span devices);
    the pmean of the per-device losses is the global loss and each device's gradient / 8 is
    its rows of the global gradient."""
    rng = np.random.default_rng(1)
    scores1, scores2 = cosine_scores(rng, 24, 4), cosine_scores(rng, 24, 4)
    loss_of = lambda axis: (  # noqa: E731
        lambda a, b: losses.swav_loss(a, b, 0.1, epsilon=0.05, iterations=3, axis_name=axis))
    want_loss, want_grads = jax.value_and_grad(loss_of(None), argnums=(0, 1))(scores1, scores2)
    want_codes = losses.sinkhorn_knopp(scores1, 0.05, 3)

    def per_device(a, b):
        loss, grads = jax.value_and_grad(loss_of(AXIS), argnums=(0, 1))(a, b)
        codes = losses.sinkhorn_knopp(a, 0.05, 3, axis_name=AXIS)
        return jax.lax.pmean(loss, AXIS), jax.tree.map(lambda g: g / 8, grads), codes

    mesh = parallel.make_mesh()
    if kind == "pmap":
        loss, grads, codes = jax.pmap(per_device, axis_name=AXIS)(
            scores1.reshape(8, 3, 4), scores2.reshape(8, 3, 4))
        loss, grads, codes = loss[0], jax.tree.map(lambda g: g.reshape(24, 4), grads), \
            codes.reshape(24, 4)
    else:
        loss, grads, codes = jax.jit(jax.shard_map(
            per_device, mesh=mesh, in_specs=(P(AXIS), P(AXIS)),
            out_specs=(P(), P(AXIS), P(AXIS)), check_vma=False))(scores1, scores2)
    assert float(loss) == pytest.approx(float(want_loss), rel=1e-6)
    np.testing.assert_allclose(codes, want_codes, rtol=1e-5, atol=1e-7)
    for got, want in zip(grads, want_grads):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-7)


def _state_and_gradients(config, steps):
    """A fresh state, and the gradient of the loss at each of `steps` (one compilation)."""
    method = methods.get("swav")
    model = method.build_model(config, 10, None)
    tx, _ = optim.make_optimizer(config.optimizer, total_steps=config.total_steps,
                                 batch_size=config.batch_size)
    state = jax.jit(lambda: train_step.create_train_state(method, model, config, tx,
                                                     jax.random.PRNGKey(0)))()
    rng = np.random.default_rng(0)
    batch = {"view1": rng.random((8, 16, 16, 3), np.float32),
             "view2": rng.random((8, 16, 16, 3), np.float32),
             "label": rng.integers(0, 10, 8).astype(np.int32)}
    grad_at = jax.jit(jax.grad(lambda params, state: method.loss_fn(
        model, config, params, state, batch, None, None)[0]))
    return state, [grad_at(state.params, state.replace(step=jnp.asarray(step, jnp.int32)))
                   for step in steps]


def test_prototypes_get_no_gradient_while_frozen_and_stay_unit_after_a_step():
    config = config_checks.resolve_steps(tiny_config("swav", **{
        "loss.num_prototypes": 12, "loss.freeze_prototypes_steps": 3}), 64)
    state, (frozen, thawed) = _state_and_gradients(config, (2, 3))
    assert float(jnp.abs(frozen["prototypes"]).max()) == 0.0
    assert float(jnp.abs(thawed["prototypes"]).max()) > 0.0
    assert float(jnp.abs(frozen["encoder"]["stem_conv"]["kernel"]).max()) > 0.0
    features = swav.METHOD.encoder_features(swav.build_model(config, 10, None))(
        {"params": state.params, "batch_stats": state.batch_stats}, np.zeros((2, 16, 16, 3)))
    assert features.shape == (2, 32)  # The pooled encoder features, not the projections.
    moved = state.params | {"prototypes": state.params["prototypes"] + thawed["prototypes"]}
    renormalised = swav.after_update(config, state.replace(params=moved))
    np.testing.assert_allclose(jnp.linalg.norm(renormalised.params["prototypes"], axis=1), 1.0,
                               rtol=1e-6)


def test_bad_sinkhorn_settings_are_refused():
    for key, value, message in (("loss.sinkhorn_epsilon", 0.0, "sinkhorn_epsilon must be > 0"),
                                ("loss.num_prototypes", 0, "num_prototypes must be >= 1")):
        config = config_checks.resolve_steps(tiny_config("swav", **{key: value}), 64)
        with pytest.raises(ValueError, match=message):
            train_step.validate(config)


def multicrop_config(**overrides):
    return config_checks.resolve_steps(tiny_config("swav", **{
        "data.small_crops": 2, "data.small_crop_size": 8, "loss.num_prototypes": 6,
        "loss.freeze_prototypes_steps": 0, **overrides}), 64)


QUEUE = 32  # Two global batches.


def _swav_model(axis_name):
    return swav.SwAVModel(encoder=TinyEncoder(axis_name), projection=heads.ProjectionHead(
        num_layers=2, hidden_dim=16, out_dim=8, bn_axis_name=axis_name), num_classes=10,
        num_prototypes=6)


def _multicrop_batch_and_state(config, queue_rows):
    rng = np.random.default_rng(4)
    batch = {"view1": rng.random((16, 16, 16, 3), np.float32),
             "view2": rng.random((16, 16, 16, 3), np.float32),
             "small_views": rng.random((16, 2, 8, 8, 3), np.float32),
             "label": rng.integers(0, 10, 16).astype(np.int32)}
    variables = _swav_model(None).init(jax.random.PRNGKey(0), batch["view1"][:2], train=False,
                                       small_images=batch["small_views"][:2, 0])
    queue = rng.normal(size=(2, QUEUE, 8)).astype(np.float32)
    extra = {"queue": np.asarray(losses.l2_normalize(queue)),
             "queue_ptr": jnp.asarray(16, jnp.int32), "queue_rows": jnp.asarray(queue_rows)}
    state = train_step.TrainState(step=jnp.asarray(5, jnp.int32), params=variables["params"],
                             batch_stats=variables["batch_stats"], opt_state=None, extra=extra)
    return batch, state


def _loss_and_grads(config, state, axis_name, params, batch):
    (loss, (changes, metrics)), grads = jax.value_and_grad(
        lambda p: swav.loss_fn(_swav_model(axis_name), config, p, state, batch, None, axis_name),
        has_aux=True)(params)
    return loss, grads, changes, metrics


def _one_device_step(config, state, batch):
    """`_loss_and_grads` on one device, compiled (op by op it takes seconds a call)."""
    return jax.jit(lambda s, b: _loss_and_grads(config, s, None, s.params, b))(state, batch)


@pytest.mark.parametrize("queue_length", [0, QUEUE])
def test_multicrop_step_over_8_devices_equals_one_device(queue_length):
    """Loss, gradients, BatchNorm statistics and queue of a multi-crop step (2 views of 16 px,
    2 small crops of 8 px; with a full queue of 2 batches or none) over 8 devices of 2
    examples, synchronised BatchNorm, equal one device's on the global 16: the small crops'
    layout, their BatchNorm pass, each device's share of the queue and the codes' global sums
    all hold across devices. (A one-convolution encoder: the ResNet's is SimCLR's.)"""
    config = multicrop_config(**{"loss.queue_length": queue_length})
    batch, state = _multicrop_batch_and_state(config, queue_rows=QUEUE)
    if not queue_length:
        state = state.replace(extra={})
    assert {k: v.shape for k, v in swav.batch_shapes(config, 16).items()} == {
        k: v.shape for k, v in batch.items()}
    want = jax.jit(lambda p, b: _loss_and_grads(config, state, None, p, b))(state.params, batch)

    def per_device(params, batch):
        loss, grads, changes, metrics = _loss_and_grads(config, state, AXIS, params, batch)
        return jax.lax.pmean(loss, AXIS), jax.lax.pmean(grads, AXIS), changes, metrics

    got = jax.jit(jax.shard_map(per_device, mesh=parallel.make_mesh(), in_specs=(P(), P(AXIS)),
                                out_specs=(P(), P(), P(), P()), check_vma=False))(
        state.params, batch)
    assert float(got[0]) == pytest.approx(float(want[0]), rel=1e-5)
    largest = max(float(np.abs(g).max()) for g in jax.tree.leaves(want[1]))
    assert_trees_equal(got[1], want[1], rtol=1e-4, atol=1e-4 * largest)  # Summation order.
    assert_trees_equal(got[2], want[2], rtol=1e-4, atol=2e-5)
    assert float(want[3]["queue_used"]) == float(queue_length > 0)
    # The small crops count: without them the loss differs.
    two_views = {k: v for k, v in batch.items() if k != "small_views"}
    assert abs(float(jax.jit(lambda p, b: _loss_and_grads(config, state, None, p, b))(
        state.params, two_views)[0]) - float(want[0])) > 1e-3


def test_the_queue_gets_the_global_batch_and_waits_until_full():
    """After a step the queue holds the batch's unit projections of view 1 and view 2 at its
    pointer (the rest unchanged); a queue not yet full leaves the codes those of the batch
    alone; before queue_start_steps nothing is written."""
    config = multicrop_config(**{"loss.queue_length": QUEUE})
    batch, state = _multicrop_batch_and_state(config, queue_rows=QUEUE)
    loss_full, _, changes, _ = _one_device_step(config, state, batch)
    small = np.concatenate([batch["small_views"][:, v] for v in range(2)])  # (v n) rows.
    (_, projections, _, _), _ = jax.jit(lambda variables, images, small: _swav_model(
        None).apply(variables, images, train=True, small_images=small, mutable=["batch_stats"]))(
        {"params": state.params, "batch_stats": state.batch_stats},
        np.concatenate([batch["view1"], batch["view2"]]), small)
    queue = changes["extra"]["queue"]
    np.testing.assert_allclose(queue[0, 16:], projections[:16], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(queue[1, 16:], projections[16:32], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(queue[:, :16], state.extra["queue"][:, :16])
    assert int(changes["extra"]["queue_ptr"]) == 0 and int(changes["extra"]["queue_rows"]) == 32

    filling = state.replace(extra={**state.extra, "queue_rows": jnp.asarray(16)})
    loss_filling, _, changes, metrics = _one_device_step(config, filling, batch)
    no_queue, _, _, _ = _one_device_step(multicrop_config(), state.replace(extra={}), batch)
    assert float(loss_filling) == pytest.approx(float(no_queue), rel=1e-6)
    assert abs(float(loss_filling) - float(loss_full)) > 1e-4
    assert float(metrics["queue_used"]) == 0.0 and int(changes["extra"]["queue_rows"]) == 32

    waiting = multicrop_config(**{"loss.queue_length": QUEUE, "loss.queue_start_steps": 6})
    _, _, changes, _ = _one_device_step(waiting, filling, batch)
    assert_trees_equal(changes["extra"], filling.extra)


@pytest.mark.parametrize("overrides,message", [
    ({"data.small_crops": -1}, "small_crops must be >= 0"),
    ({"data.small_crop_area_min": 0.2, "data.small_crop_area_max": 0.1},
     "small_crop_area_min and _max"),
    ({"data.augment_on": "device"}, "small_crops needs data.augment_on='host'"),
    ({"loss.queue_length": 24}, "queue_length must be a multiple of batch_size"),
])
def test_bad_multicrop_settings_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        train_step.validate(multicrop_config(**overrides))


@pytest.mark.slow  # 30-50 s on 2 cores: the ResNet's step compiles for two resolutions.
def test_a_multicrop_run_trains_on_the_pipelines_small_crops(tmp_path):
    """The trainer end to end on 8 devices: the pipeline's [n, V, s, s, 3] small views are
    split over the devices and reach the step, whose loss is finite and logged; a queue of one
    batch is full, and used, from the second step on."""
    config = multicrop_config(**{"total_steps": 3, "checkpoint_every": 3, "eval_every": -1,
                                 "loss.queue_length": 16})
    train.train_and_evaluate(config, str(tmp_path))
    rows = [row for row in read_metrics(str(tmp_path)) if "contrastive_loss" in row]
    assert len(rows) == 3 and np.all(np.isfinite([row["contrastive_loss"] for row in rows]))
    assert [row["queue_used"] for row in rows] == [0.0, 1.0, 1.0]
