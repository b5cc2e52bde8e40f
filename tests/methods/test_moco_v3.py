"""MoCo v3: the symmetric loss against numpy, the momentum encoder as the cosine-momentum EMA of
the backbone and projector, the frozen patch projection, pmap == shard_map == one device, and
(slow, opt-in) a short CIFAR-10 run that learns."""

import jax
import numpy as np
import pytest

from contrastive_jax import config_checks, methods, parallel, train, train_step
from contrastive_jax.logging import read_metrics
from contrastive_jax.methods import moco_v3

from support import assert_trees_equal, tiny_config

GLOBAL_BATCH = 16
SIZE = 16
TOTAL_STEPS = 10
BASE_MOMENTUM = 0.9


def moco_v3_config(**overrides):
    """A one-block ViT-mu/4 with 32-wide heads on 16x16 images."""
    config = tiny_config("moco_v3", **{
        "model.variant": "mu/4", "model.head_hidden_dim": 32, "model.predictor_hidden_dim": 32,
        "loss.momentum": BASE_MOMENTUM, "total_steps": TOTAL_STEPS, "eval_every": -1,
        "optimizer.learning_rate": 0.05,
        "batch_size": GLOBAL_BATCH, "data.image_size": SIZE, **overrides})
    return config_checks.resolve_steps(config, 64)


def random_batch(step):
    rng = np.random.default_rng(step)
    view = lambda: rng.random((GLOBAL_BATCH, SIZE, SIZE, 3), np.float32)
    return {"view1": view(), "view2": view(),
            "label": rng.integers(0, 10, GLOBAL_BATCH).astype(np.int32)}


def normalize(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def numpy_info_nce(q, k, temperature):
    """Mean over rows of -log softmax(cos(q_i, k_j) / T)_ii, in float64."""
    logits = normalize(np.float64(q)) @ normalize(np.float64(k)).T / temperature
    logits -= logits.max(axis=1, keepdims=True)
    log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return -np.mean(np.diag(log_probs))


def test_symmetric_loss_matches_numpy():
    rng = np.random.default_rng(0)
    q1, q2, k1, k2 = (rng.normal(size=(12, 5)).astype(np.float32) for _ in range(4))
    loss, metrics = jax.jit(lambda *qk: moco_v3.symmetric_loss(*qk, 0.2, 0.4))(q1, q2, k1, k2)
    want = 0.4 * (numpy_info_nce(q1, k2, 0.2) + numpy_info_nce(q2, k1, 0.2))
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    assert 0.0 <= metrics["contrastive_top1"] <= 1.0


def test_multiplier_defaults_to_twice_the_temperature():
    config = moco_v3_config(**{"loss.temperature": 0.3})
    assert moco_v3.loss_multiplier(config) == pytest.approx(0.6)
    config.loss.multiplier = 1.0
    assert moco_v3.loss_multiplier(config) == 1.0


def run_steps(config, host_state, num_steps=2):
    """The wrapped step of `config.parallel` from `host_state`; (host states before each step
    and after the last, each step's metrics)."""
    kind, mesh, method = config.parallel, parallel.make_mesh(), methods.get("moco_v3")
    model = method.build_model(config, 10, parallel.AXIS)
    tx, schedule = train_step.make_optimizer(method, config)
    step = parallel.wrap_step(train_step.make_train_step(method, model, config, tx, schedule), kind,
                              mesh)
    state = parallel.replicate(host_state, kind, mesh)
    rng = parallel.replicate(jax.random.PRNGKey(7), kind, mesh)
    states, all_metrics = [host_state], []
    for k in range(num_steps):
        state, metrics = step(state, parallel.host_batch_to_devices(random_batch(k), kind, mesh),
                              rng)
        states.append(parallel.unreplicate(state, kind))
        all_metrics.append(jax.device_get(parallel.unreplicate(metrics, kind)))
    return states, all_metrics


@pytest.fixture(scope="module")
def runs():
    """{kind: (config, states, metrics)} of two steps from one initial state under each wrapper
    (the learning rate warms up from 0 at step 0)."""
    config = moco_v3_config()
    method = methods.get("moco_v3")
    model = method.build_model(config, 10, parallel.AXIS)
    tx, _ = train_step.make_optimizer(method, config)
    host_state = jax.device_get(jax.jit(lambda: train_step.create_train_state(
        method, model, config, tx, jax.random.PRNGKey(0)))())
    runs = {}
    for kind in parallel.KINDS:
        kind_config = moco_v3_config(parallel=kind)
        runs[kind] = (kind_config, *run_steps(kind_config, host_state))
    return runs


def test_pmap_and_shard_map_agree(runs):
    (_, pmap_states, pmap_metrics), (_, shard_states, shard_metrics) = (
        runs["pmap"], runs["shard_map"])
    for want, got in zip(pmap_metrics, shard_metrics):
        np.testing.assert_allclose(got["loss"], want["loss"], rtol=1e-5)
    for field in ("params", "batch_stats", "extra"):
        assert_trees_equal(getattr(shard_states[-1], field), getattr(pmap_states[-1], field),
                           rtol=1e-4, atol=1e-6)


def test_sharded_loss_equals_the_single_device_loss(runs):
    """On 8 devices (BatchNorm synchronised, keys gathered) the first step's loss is that of
    one device holding the whole batch."""
    config, states, metrics = runs["shard_map"]
    model = moco_v3.build_model(config, 10, None)
    state = jax.tree.map(np.asarray, states[0])
    loss, (_, single_metrics) = jax.jit(lambda batch: moco_v3.loss_fn(
        model, config, state.params, state, batch, None, None))(random_batch(0))
    np.testing.assert_allclose(metrics[0]["loss"], loss, rtol=1e-5)
    np.testing.assert_allclose(metrics[0]["contrastive_loss"], single_metrics["contrastive_loss"],
                               rtol=1e-5)


def test_momentum_encoder_is_the_cosine_ema_of_backbone_and_projector(runs):
    config, (_, before, after), _ = runs["shard_map"]
    # After optimizer step 1 the reference's m of iteration 2: 1 - (1 - m0)(cos(pi 2/T) + 1)/2.
    m = 1 - (1 - BASE_MOMENTUM) * (np.cos(np.pi * 2 / TOTAL_STEPS) + 1) / 2
    online = {name: after.params[name] for name in ("encoder", "projection")}
    expected = jax.tree.map(lambda k, q: m * np.float64(k) + (1 - m) * np.float64(q),
                            before.extra["key_params"], online)
    assert_trees_equal(after.extra["key_params"], expected, rtol=1e-6, atol=1e-7)
    assert set(after.extra["key_params"]) == {"encoder", "projection"}
    moved = jax.tree.leaves(jax.tree.map(lambda a, b: np.abs(a - b).max(), online,
                                         {name: before.params[name] for name in online}))
    assert max(moved) > 1e-4  # The online network did move, so the EMA was tested.


def test_patch_projection_is_frozen_while_the_rest_trains(runs):
    _, (first, _, last), _ = runs["shard_map"]
    assert_trees_equal(last.params["encoder"]["patch_embedding"],
                       first.params["encoder"]["patch_embedding"])
    for name in ("pos_embedding", "encoder"):
        assert np.abs(np.asarray(jax.tree.leaves(last.params["encoder"][name])[0])
                      - np.asarray(jax.tree.leaves(first.params["encoder"][name])[0])).max() > 0


@pytest.mark.parametrize("freeze", [True, False])
def test_frozen_params_mark_exactly_the_patch_projection(freeze):
    config = moco_v3_config(**{"model.freeze_patch_embed": freeze})
    model = moco_v3.build_model(config, 10, None)
    params = jax.eval_shape(lambda: moco_v3.METHOD.init_variables(model, config,
                                                           jax.random.PRNGKey(0)))["params"]
    marked = {jax.tree_util.keystr(path) for path, frozen in
              jax.tree_util.tree_leaves_with_path(moco_v3.frozen_params(config, params))
              if frozen}
    want = {"['encoder']['patch_embedding']['bias']", "['encoder']['patch_embedding']['kernel']"}
    assert marked == (want if freeze else set())


def test_frozen_patch_projection_needs_a_vit():
    with pytest.raises(ValueError, match="model.freeze_patch_embed"):
        train_step.validate(moco_v3_config(**{"model.name": "resnet18"}))


@pytest.mark.slow
def test_short_moco_v3_run_on_cifar10_learns(cifar_folder, tmp_path):  # noqa: F811
    """200 steps of batch 96 with a ViT-Ti/8 of depth 2 on 1,000 CIFAR-10 images; m = 0.9 (to
    1 on a cosine) so that the momentum encoder keeps up within so short a run."""
    config = tiny_config("moco_v3", **{
        "data.source": f"folder:{cifar_folder}", "data.image_size": 32, "batch_size": 96,
        "total_steps": 200, "eval_at_start": True, "checkpoint_every": 1000,
        "data.color_strength": 0.5, "data.crop_area_min": 0.2, "model.variant": "Ti/8",
        "model.depth": 2, "model.head_hidden_dim": 512, "model.predictor_hidden_dim": 512,
        "model.head_out_dim": 128, "loss.momentum": 0.9, "optimizer.learning_rate": 3e-3,
        "optimizer.lr_scaling": "none", "optimizer.warmup_steps": 20, "eval.knn_k": 20,
        "eval.linear_steps": 100, "eval.batch_size": 96})
    train.train_and_evaluate(config, str(tmp_path))
    rows = read_metrics(str(tmp_path))
    losses = [row["loss"] for row in rows if "loss" in row]
    knn = [row["knn_top1"] for row in rows if "knn_top1" in row]
    assert len(losses) == 200 and len(knn) == 2
    assert np.mean(losses[-20:]) < np.mean(losses[:20]) - 0.2, (losses[:20], losses[-20:])
    assert knn[1] > knn[0] + 0.03, knn
