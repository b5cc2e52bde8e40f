"""NNCLR: the nearest-neighbour lookup and the loss match numpy references (and the loss over 8
devices is that of the global batch on one), the support set holds the last K view-1
projections of every device in order, and pmap and shard_map run the same step.

The steps run NNCLR's heads on a one-convolution encoder: compiling a ResNet's train step
twice on 8 devices would take most of a minute, and the encoder is SimCLR's, tested there."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from contrastive_jax import config_checks, methods, optim, parallel, train_step
from contrastive_jax.methods import nnclr
from contrastive_jax.models import heads

from support import assert_trees_equal, tiny_config, TinyEncoder

GLOBAL_BATCH = 16
SUPPORT = 2 * GLOBAL_BATCH
SIZE = 16
TEMPERATURE = 0.1


def nnclr_config(kind="shard_map", **overrides):
    config = tiny_config("nnclr", parallel=kind, **{
        "loss.support_set_size": SUPPORT, "model.head_hidden_dim": 32,
        "model.predictor_hidden_dim": 32, "eval_every": -1, "batch_size": GLOBAL_BATCH,
        "data.image_size": SIZE, **overrides})
    return config_checks.resolve_steps(config, 64)


def tiny_model(axis_name):
    """NNCLR's projector (3 layers) and predictor (2) on the tiny encoder."""
    return nnclr.NNCLRModel(
        encoder=TinyEncoder(axis_name),
        projection=heads.ProjectionHead(num_layers=3, hidden_dim=32, out_dim=16,
                                        bn_axis_name=axis_name),
        prediction=heads.BatchNormMLP(num_layers=2, hidden_dim=32, out_dim=16,
                                      bn_axis_name=axis_name),
        num_classes=10)


def test_build_model_has_the_papers_heads():
    """build_model's ResNet feeds a 3-layer projector (BatchNorm on every layer) and a
    2-layer predictor whose output Dense has a bias and no BatchNorm (shapes only)."""
    config = nnclr_config(**{"model.head_hidden_dim": 48, "model.predictor_hidden_dim": 40})
    model = nnclr.build_model(config, 10, None)
    shapes = jax.eval_shape(lambda: nnclr.METHOD.init_variables(model, config, jax.random.PRNGKey(0)))
    projection, prediction = shapes["params"]["projection"], shapes["params"]["prediction"]
    assert [projection[f"Dense_{k}"]["kernel"].shape[1] for k in range(3)] == [48, 48, 16]
    assert sorted(name for name in projection if name.startswith("BatchNorm")) == [
        "BatchNorm_0", "BatchNorm_1", "BatchNorm_2"]
    assert prediction["Dense_0"]["kernel"].shape == (16, 40)
    assert prediction["Dense_1"]["kernel"].shape == (40, 16) and "bias" in prediction["Dense_1"]
    assert sorted(prediction) == ["BatchNorm_0", "Dense_0", "Dense_1"]


def random_batch(step):
    rng = np.random.default_rng(step)
    view = lambda: rng.random((GLOBAL_BATCH, SIZE, SIZE, 3), np.float32)
    return {"view1": view(), "view2": view(),
            "label": rng.integers(0, 10, GLOBAL_BATCH).astype(np.int32)}


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def numpy_nearest(queries, support):
    return unit(support)[np.argmax(unit(queries) @ unit(support).T, axis=-1)]


def numpy_info_nce(query, key, temperature):
    logits = unit(query) @ unit(key).T / temperature
    logits = logits - logits.max(axis=1, keepdims=True)
    log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return -np.mean(np.diag(log_probs))


def numpy_nnclr(z1, z2, p1, p2, support, temperature):
    """The paper's eq. 2 with the prediction head, symmetrised with the views swapped."""
    return 0.5 * (numpy_info_nce(numpy_nearest(z1, support), p2, temperature)
                  + numpy_info_nce(numpy_nearest(z2, support), p1, temperature))


def test_nearest_neighbours_are_by_cosine_as_numpy_finds_them():
    rng = np.random.default_rng(0)
    queries = rng.normal(size=(20, 8)).astype(np.float32)
    support = (rng.normal(size=(30, 8)) * rng.uniform(0.1, 10.0, (30, 1))).astype(np.float32)
    got = np.asarray(nnclr.nearest_neighbours(queries, support))
    np.testing.assert_allclose(got, numpy_nearest(queries, support), rtol=1e-6, atol=1e-6)
    by_dot_product = unit(support)[np.argmax(queries @ support.T, axis=-1)]
    assert not np.allclose(got, by_dot_product)  # The support rows' norms were ignored.


def test_loss_matches_numpy_on_one_device_and_over_eight():
    """On one device, and as the pmean of 8 devices' losses (2 rows each, predictions
    gathered; shard_map): the numpy formula over the whole batch."""
    rng = np.random.default_rng(1)
    z1, z2, p1, p2 = (rng.normal(size=(GLOBAL_BATCH, 8)).astype(np.float32) for _ in range(4))
    support = rng.normal(size=(SUPPORT, 8)).astype(np.float32)
    want = numpy_nnclr(z1, z2, p1, p2, support, TEMPERATURE)
    loss, _ = nnclr.nnclr_loss(z1, z2, p1, p2, support, TEMPERATURE)
    np.testing.assert_allclose(loss, want, rtol=1e-5)

    def per_device(z1, z2, p1, p2, support):
        loss, _ = nnclr.nnclr_loss(z1, z2, p1, p2, support, TEMPERATURE,
                                   axis_name=parallel.AXIS)
        return jax.lax.pmean(loss, parallel.AXIS)

    mesh = parallel.make_mesh()
    run = parallel.wrap(per_device, "shard_map", mesh,
                        in_specs=(P(parallel.AXIS),) * 4 + (P(),), out_specs=P())
    split = parallel.host_batch_to_devices((z1, z2, p1, p2), "shard_map", mesh)
    np.testing.assert_allclose(run(*split, support), want, rtol=1e-5)


def fresh_state(config, model, tx):
    return jax.device_get(jax.jit(lambda: train_step.create_train_state(
        methods.get("nnclr"), model, config, tx, jax.random.PRNGKey(0)))())


def run_steps(config, host_state, num_steps):
    """Runs the wrapped step from `host_state`; returns the host states before each step and
    after the last, and each step's metrics."""
    kind, mesh, method = config.parallel, parallel.make_mesh(), methods.get("nnclr")
    model = tiny_model(parallel.AXIS)
    tx, schedule = optim.make_optimizer(config.optimizer, total_steps=config.total_steps,
                                        batch_size=config.batch_size)
    step = parallel.wrap_step(train_step.make_train_step(method, model, config, tx, schedule), kind,
                              mesh)
    state = parallel.replicate(host_state, kind, mesh)
    rng = parallel.replicate(jax.random.PRNGKey(7), kind, mesh)
    states, metrics = [host_state], []
    for k in range(num_steps):
        state, step_metrics = step(state, parallel.host_batch_to_devices(random_batch(k), kind,
                                                                         mesh), rng)
        states.append(parallel.unreplicate(state, kind))
        metrics.append(parallel.unreplicate(step_metrics, kind))
    return states, metrics


@pytest.fixture(scope="module")
def runs():
    """3 steps into a support set of 2 batches, on 8 devices, under each wrapper, from one
    initial state."""
    config = nnclr_config()
    tx, _ = optim.make_optimizer(config.optimizer, total_steps=config.total_steps,
                                 batch_size=config.batch_size)
    host_state = fresh_state(config, tiny_model(None), tx)
    return {kind: run_steps(nnclr_config(kind), host_state, 3) for kind in ("pmap", "shard_map")}


@pytest.fixture(scope="module")
def one_device_forward():
    """(state, batch) -> (z, p) of the global batch on one device, both views in one
    BatchNorm batch as the 8 devices' synchronised BatchNorm sees them."""
    model = tiny_model(None)

    @jax.jit
    def forward(params, batch_stats, images):
        (_, z, p, _), _ = model.apply({"params": params, "batch_stats": batch_stats}, images,
                                      train=True, mutable=["batch_stats"])
        return z, p

    def run(state, batch):
        z, p = forward(state.params, state.batch_stats,
                       np.concatenate([batch["view1"], batch["view2"]]))
        return np.asarray(z), np.asarray(p)

    return run


def test_step_loss_is_the_formula_on_the_models_outputs(runs, one_device_forward):
    """The first step's contrastive loss (the pmean over 8 devices) pairs NN(z1) with p2 and
    NN(z2) with p1 of its forward pass: the numpy formula on the one-device pass agrees."""
    (states, metrics), n = runs["pmap"], GLOBAL_BATCH
    z, p = one_device_forward(states[0], random_batch(0))
    want = numpy_nnclr(z[:n], z[n:], p[:n], p[n:], states[0].extra["support_set"],
                       TEMPERATURE)
    np.testing.assert_allclose(metrics[0]["contrastive_loss"], want, rtol=1e-4)


def test_support_set_holds_the_last_projections_of_all_devices_in_order(runs,
                                                                        one_device_forward):
    """After step 1 the first batch of rows is step 0's view-1 projections, L2-normalised, and
    the rest untouched; after step 3 the set, rolled to its pointer, is steps 1 and 2's, in
    device order."""
    states, _ = runs["pmap"]

    def projections(k):
        return unit(one_device_forward(states[k], random_batch(k))[0][:GLOBAL_BATCH])

    first = states[1].extra
    np.testing.assert_allclose(first["support_set"][:GLOBAL_BATCH], projections(0),
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(first["support_set"][GLOBAL_BATCH:],
                                  states[0].extra["support_set"][GLOBAL_BATCH:])
    assert int(first["support_ptr"]) == GLOBAL_BATCH
    final = states[-1].extra
    pointer = int(final["support_ptr"])
    assert pointer == (3 * GLOBAL_BATCH) % SUPPORT
    want = np.concatenate([projections(1), projections(2)])
    np.testing.assert_allclose(np.roll(final["support_set"], -pointer, axis=0), want,
                               rtol=1e-4, atol=1e-5)


def test_pmap_and_shard_map_give_the_same_state(runs):
    pmap, shard_map = runs["pmap"][0][-1], runs["shard_map"][0][-1]
    for field in ("params", "batch_stats", "extra"):
        assert_trees_equal(getattr(pmap, field), getattr(shard_map, field), rtol=1e-4,
                           atol=1e-5)
    moved = max(float(np.abs(a - b).max()) for a, b in zip(
        jax.tree.leaves(pmap.params), jax.tree.leaves(runs["pmap"][0][0].params)))
    assert moved > 1e-4  # The parameters did train, so their agreement was tested.


def test_support_set_size_must_be_a_multiple_of_the_batch():
    with pytest.raises(ValueError, match="support_set_size .* multiple of batch_size"):
        train_step.validate(nnclr_config(**{"loss.support_set_size": 40}))
