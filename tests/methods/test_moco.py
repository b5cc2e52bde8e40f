"""MoCo v2: the key encoder is the EMA of the query encoder, the queue holds the last K keys of
every device in order (under global and shuffling BatchNorm), and both survive a checkpoint."""

import os
import shutil

import jax
import numpy as np
import pytest

from contrastive_jax import config_checks, losses, methods, optim, parallel, train, train_step
from contrastive_jax.methods import common, moco

from support import assert_trees_equal, tiny_config

GLOBAL_BATCH = 16
QUEUE = 3 * GLOBAL_BATCH
SIZE = 16


def moco_config(kind="shard_map", **overrides):
    config = tiny_config("moco", parallel=kind, **{
        "loss.queue_size": QUEUE, "loss.momentum": 0.9, "model.head_hidden_dim": 32,
        "eval_every": -1, "batch_size": GLOBAL_BATCH, "data.image_size": SIZE, **overrides})
    return config_checks.resolve_steps(config, 64)


def random_batch(step):
    rng = np.random.default_rng(step)
    view = lambda: rng.random((GLOBAL_BATCH, SIZE, SIZE, 3), np.float32)
    return {"view1": view(), "view2": view(),
            "label": rng.integers(0, 10, GLOBAL_BATCH).astype(np.int32)}


def run_steps(config, num_steps):
    """Runs the wrapped step; returns the host states before each step and after the last."""
    kind, mesh, method = config.parallel, parallel.make_mesh(), methods.get("moco")
    model = method.build_model(config, 10, parallel.AXIS)
    tx, schedule = optim.make_optimizer(config.optimizer, total_steps=config.total_steps,
                                        batch_size=config.batch_size)
    step = parallel.wrap_step(train_step.make_train_step(method, model, config, tx, schedule), kind,
                              mesh)
    host_state = jax.device_get(jax.jit(lambda: train_step.create_train_state(
        method, model, config, tx, jax.random.PRNGKey(0)))())
    state = parallel.replicate(host_state, kind, mesh)
    rng = parallel.replicate(jax.random.PRNGKey(7), kind, mesh)
    states = [host_state]
    for k in range(num_steps):
        state, _ = step(state, parallel.host_batch_to_devices(random_batch(k), kind, mesh), rng)
        states.append(parallel.unreplicate(state, kind))
    return states


def reference_keys(config, state, view2, groups):
    """Keys of `view2` computed on one device with BatchNorm over each index group, in order."""
    model = moco.build_model(config, 10, None)
    variables = {"params": state.extra["key_params"],
                 "batch_stats": state.extra["key_batch_stats"]}
    keys = np.zeros((len(view2), config.model.head_out_dim), np.float32)
    for group in groups:
        (_, projection, _), _ = model.apply(variables, view2[group], train=True,
                                            mutable=["batch_stats"])
        keys[group] = np.asarray(losses.l2_normalize(projection))
    return keys


@pytest.fixture(scope="module")
def shuffled_run():
    config = moco_config("shard_map", **{"model.moco_bn": "shuffle"})
    return config, run_steps(config, 2)  # The learning rate warms up from 0 at step 0.


def test_key_encoder_is_the_ema_of_the_query_encoder(shuffled_run):
    _, (_, before, after) = shuffled_run
    m = 0.9
    expected = jax.tree.map(lambda k, q: m * np.float64(k) + (1 - m) * np.float64(q),
                            before.extra["key_params"], after.params)
    assert_trees_equal(after.extra["key_params"], expected, rtol=1e-6, atol=1e-7)
    moved = jax.tree.leaves(jax.tree.map(lambda a, b: np.abs(a - b).max(), after.params,
                                         before.params))
    assert max(moved) > 1e-4  # The query encoder did move, so the EMA was tested.


def test_momentum_schedules():
    config = moco_config(**{"loss.momentum": 0.99, "total_steps": 100})
    assert float(common.momentum_at(config, 37)) == pytest.approx(0.99)
    config.loss.momentum_schedule = "cosine"
    for t in (0, 25, 50, 100):
        want = 1 - 0.01 * (np.cos(np.pi * t / 100) + 1) / 2
        assert float(common.momentum_at(config, t)) == pytest.approx(want, rel=1e-6)


def test_shuffled_bn_keys_enter_the_queue_in_order(shuffled_run):
    """The keys come from BatchNorm over the devices' slices of a shuffled batch (2 examples
    each), put back in order: recomputed here on one device from the step's permutation."""
    config, (before, after, _) = shuffled_run
    step_key = jax.random.fold_in(jax.random.PRNGKey(7), 0)
    order = np.asarray(jax.random.permutation(step_key, GLOBAL_BATCH))
    per_device = GLOBAL_BATCH // jax.device_count()
    groups = [order[d * per_device:(d + 1) * per_device] for d in range(jax.device_count())]
    view2 = random_batch(0)["view2"]
    want = reference_keys(config, before, view2, groups)
    np.testing.assert_allclose(after.extra["queue"][:GLOBAL_BATCH], want, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(after.extra["queue"][GLOBAL_BATCH:],
                                  before.extra["queue"][GLOBAL_BATCH:])
    in_order_groups = [np.arange(d * per_device, (d + 1) * per_device)
                       for d in range(jax.device_count())]
    unshuffled = reference_keys(config, before, view2, in_order_groups)
    assert not np.allclose(want, unshuffled, atol=1e-3)  # The shuffle changed the statistics.
    assert int(after.extra["queue_ptr"]) == GLOBAL_BATCH


def test_shuffled_bn_running_statistics_are_the_mean_over_devices(shuffled_run):
    """Each device's BatchNorm sees only its 2 examples; the state's running statistics (query
    and key encoder) are the mean of the 8 devices' updates, recomputed here one device at a
    time."""
    config, (before, after, _) = shuffled_run
    model = moco.build_model(config, 10, None)
    per_device = GLOBAL_BATCH // jax.device_count()
    step_key = jax.random.fold_in(jax.random.PRNGKey(7), 0)
    order = np.asarray(jax.random.permutation(step_key, GLOBAL_BATCH))
    batch = random_batch(0)

    def mean_update(params, batch_stats, images, groups):
        updates = [model.apply({"params": params, "batch_stats": batch_stats}, images[group],
                               train=True, mutable=["batch_stats"])[1]["batch_stats"]
                   for group in groups]
        return jax.tree.map(lambda *u: np.mean(u, axis=0), *updates)

    in_order = [np.arange(d * per_device, (d + 1) * per_device)
                for d in range(jax.device_count())]
    shuffled = [order[d * per_device:(d + 1) * per_device] for d in range(jax.device_count())]
    assert_trees_equal(after.batch_stats, mean_update(before.params, before.batch_stats,
                                                      batch["view1"], in_order),
                       rtol=1e-4, atol=1e-5)
    assert_trees_equal(after.extra["key_batch_stats"],
                       mean_update(before.extra["key_params"], before.extra["key_batch_stats"],
                                   batch["view2"], shuffled), rtol=1e-4, atol=1e-5)


def test_queue_holds_the_last_k_keys_of_all_devices_in_order():
    """Global BN, 4 steps into a queue of 3 batches: rolled to its pointer, the queue is the
    keys of steps 2, 3 and 4, each computed on one device with whole-batch BatchNorm."""
    config = moco_config("pmap", **{"model.moco_bn": "global"})
    states = run_steps(config, 4)
    keys = [reference_keys(config, states[k], random_batch(k)["view2"],
                           [np.arange(GLOBAL_BATCH)]) for k in range(4)]
    final = states[-1]
    pointer = int(final.extra["queue_ptr"])
    assert pointer == (4 * GLOBAL_BATCH) % QUEUE
    np.testing.assert_allclose(np.roll(final.extra["queue"], -pointer, axis=0),
                               np.concatenate(keys[1:]), rtol=1e-4, atol=1e-5)


def test_split_bn_normalises_each_group_on_its_own():
    """bn_splits=2 (MoCo's split BN for one device) == the network run on each half alone."""
    config = moco_config()
    model = moco.build_model(config, 10, None)
    variables = moco.METHOD.init_variables(model, config, jax.random.PRNGKey(0))
    images = random_batch(0)["view1"][:8]
    in_groups = jax.jit(lambda x, groups: moco._apply_in_groups(model, variables, x, groups),
                        static_argnums=1)
    (_, projection, _), stats = in_groups(images, 2)
    apply = jax.jit(lambda x: model.apply(variables, x, train=True, mutable=["batch_stats"]))
    halves = [apply(images[k:k + 4]) for k in (0, 4)]
    want = np.concatenate([np.asarray(out[1]) for out, _ in halves])
    np.testing.assert_allclose(projection, want, rtol=1e-5, atol=1e-6)
    want_stats = jax.tree.map(lambda a, b: (a + b) / 2, halves[0][1]["batch_stats"],
                              halves[1][1]["batch_stats"])
    assert_trees_equal(stats, want_stats, rtol=1e-5, atol=1e-7)
    (_, whole, _), _ = in_groups(images, 1)
    assert not np.allclose(whole, want, atol=1e-3)


def test_bn_splits_must_divide_the_per_device_batch():
    with pytest.raises(ValueError, match="bn_splits"):
        train_step.validate(moco_config(**{"model.bn_splits": 3}))


def test_queue_size_must_be_a_multiple_of_the_batch():
    with pytest.raises(ValueError, match="queue_size .* multiple of batch_size"):
        train_step.validate(moco_config(**{"loss.queue_size": 40}))


def test_queue_and_key_encoder_survive_a_checkpoint(tmp_path):
    """4 steps uninterrupted == 2 steps, checkpoint, restore, 2 more: parameters, key encoder,
    queue and pointer all equal bit for bit."""
    config = moco_config("shard_map", **{"total_steps": 4, "checkpoint_every": 2})
    workdir = str(tmp_path / "run")
    trainer = train.Trainer(config, workdir)
    trainer.run()
    uninterrupted = jax.device_get(trainer.checkpoints.restore(4))
    shutil.rmtree(os.path.join(workdir, "checkpoints", "4"))
    resumed_trainer = train.Trainer(config, workdir)
    assert resumed_trainer.checkpoints.latest_step() == 2
    resumed_trainer.run()
    resumed = jax.device_get(resumed_trainer.checkpoints.restore(4))
    for field in ("params", "batch_stats", "extra"):
        assert_trees_equal(resumed[field], uninterrupted[field])
    assert int(resumed["extra"]["queue_ptr"]) == (4 * GLOBAL_BATCH) % QUEUE
