"""BYOL and SimSiam: their losses against numpy and over 8 devices, BYOL's target as the EMA of
the online network under pmap and shard_map and through a checkpoint, SimSiam's stop-gradient,
fixed predictor learning rate and fsdp step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from contrastive_jax import config_checks, config_defaults, losses, methods, optim, parallel, train, train_step
from contrastive_jax.methods import common, simsiam
from contrastive_jax.models import heads
from contrastive_jax.parallel.layout import Layout

from support import assert_trees_equal, synthetic_batches, tiny_config

AXIS = parallel.AXIS


def cosines(p, z):
    p, z = np.float64(p), np.float64(z)
    return np.sum(p * z, -1) / (np.linalg.norm(p, axis=-1) * np.linalg.norm(z, axis=-1))


def test_losses_equal_numpy_references():
    rng = np.random.default_rng(0)
    p, z = rng.normal(size=(2, 7, 5)).astype(np.float32)
    unit = lambda x: np.float64(x) / np.linalg.norm(np.float64(x), axis=-1, keepdims=True)
    want_byol = np.mean(np.sum((unit(p) - unit(z)) ** 2, axis=-1))  # BYOL's eq. 2.
    assert float(losses.byol_loss(p, z)) == pytest.approx(want_byol, rel=1e-6)
    assert float(losses.negative_cosine(p, z)) == pytest.approx(-np.mean(cosines(p, z)),
                                                                rel=1e-6)
    assert float(losses.byol_loss(p, p)) == pytest.approx(0.0, abs=1e-6)


def test_losses_compute_in_float32_and_keep_the_gradient_dtype():
    p, z = jnp.ones((4, 3), jnp.bfloat16), jnp.arange(12.0).reshape(4, 3).astype(jnp.bfloat16)
    for loss_fn in (losses.byol_loss, losses.negative_cosine):
        value, grad = jax.value_and_grad(loss_fn)(p, z)
        assert value.dtype == jnp.float32 and grad.dtype == jnp.bfloat16


@pytest.mark.parametrize("kind", parallel.KINDS)
def test_per_device_means_pmean_to_the_global_loss_and_gradient(kind):
    """8 devices x 2 pairs: the pmean of each device's mean loss is the loss of the global
    batch, and each device's gradient / 8 is its rows of the global gradient."""
    rng = np.random.default_rng(1)
    p, z = rng.normal(size=(2, 16, 6)).astype(np.float32)
    mesh = parallel.make_mesh()
    for loss_fn in (losses.byol_loss, losses.negative_cosine):
        want_loss, want_grad = jax.value_and_grad(loss_fn)(p, z)

        def per_device(p, z, loss_fn=loss_fn):
            loss, grad = jax.value_and_grad(loss_fn)(p, z)
            return jax.lax.pmean(loss, AXIS), grad

        fn = parallel.wrap(per_device, kind, mesh, in_specs=(P(AXIS), P(AXIS)),
                           out_specs=(P(), P(AXIS)))
        loss, grad = fn(*(parallel.host_batch_to_devices(x, kind, mesh) for x in (p, z)))
        np.testing.assert_allclose(parallel.unreplicate(loss, kind), want_loss, rtol=1e-6)
        np.testing.assert_allclose(np.asarray(grad).reshape(p.shape) / 8, want_grad,
                                   rtol=1e-5, atol=1e-7)


def test_mlp_heads_of_byol_and_simsiam():
    """SimSiam's projector ends in BatchNorm without scale or bias (train-mode outputs are
    standardised per channel); BYOL's ends in a Dense with a bias."""
    x = np.random.default_rng(2).normal(size=(32, 8)).astype(np.float32)
    projector = heads.BatchNormMLP(num_layers=3, hidden_dim=16, out_dim=4, output_bn=True)
    variables = jax.jit(lambda x: projector.init(jax.random.PRNGKey(0), x, train=False))(x)
    assert "BatchNorm_2" not in variables["params"] and "bias" not in variables["params"][
        "Dense_2"]
    out, _ = jax.jit(lambda v, x: projector.apply(v, x, train=True, mutable=["batch_stats"]))(
        variables, x)
    np.testing.assert_allclose(out.mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(out.var(0), 1.0, rtol=1e-3)
    predictor = heads.BatchNormMLP(num_layers=2, hidden_dim=16, out_dim=4)
    params = jax.eval_shape(lambda x: predictor.init(jax.random.PRNGKey(0), x, train=False),
                            x)["params"]
    assert sorted(params) == ["BatchNorm_0", "Dense_0", "Dense_1"]
    assert params["Dense_1"]["bias"].shape == (4,)


def test_each_view_gets_its_own_batchnorm_statistics():
    """apply_per_view == each view through the network alone; the running statistics move by
    the mean of the two views' updates."""
    rng = np.random.default_rng(4)
    views = [rng.normal(size=(8, 6)).astype(np.float32), rng.normal(2.0, 3.0, size=(8, 6))]
    mlp = heads.BatchNormMLP(num_layers=2, hidden_dim=5, out_dim=3)
    variables = jax.jit(lambda x: mlp.init(jax.random.PRNGKey(0), x, train=False))(views[0])
    apply = jax.jit(lambda x: mlp.apply(variables, x, train=True, mutable=["batch_stats"]))
    alone = [apply(view) for view in views]
    outputs, stats = jax.jit(lambda v: common.apply_per_view(
        mlp, variables["params"], variables["batch_stats"], v))(views)
    for view in range(2):
        np.testing.assert_allclose(outputs[view], alone[view][0], rtol=1e-5, atol=1e-6)
    assert_trees_equal(stats, jax.tree.map(lambda a, b: (a + b) / 2, alone[0][1]["batch_stats"],
                                           alone[1][1]["batch_stats"]), rtol=1e-6, atol=1e-7)


# -- BYOL: the target network ------------------------------------------------------------------

GLOBAL_BATCH, SIZE = 16, 16


def byol_config(kind="shard_map", **overrides):
    config = tiny_config("byol", **{
        "parallel": kind, "model.head_hidden_dim": 32, "model.predictor_hidden_dim": 32,
        "loss.momentum": 0.9, "total_steps": 4, "eval_every": -1, **overrides})
    return config_checks.resolve_steps(config, 64)


def random_batch(step):
    rng = np.random.default_rng(step)
    view = lambda: rng.random((GLOBAL_BATCH, SIZE, SIZE, 3), np.float32)  # noqa: E731
    return {"view1": view(), "view2": view(),
            "label": rng.integers(0, 10, GLOBAL_BATCH).astype(np.int32)}


def initial_state(config):
    """A fresh host state of `config`'s method (one compile, shared by the runs compared)."""
    method = methods.get(config.method)
    model = method.build_model(config, 10, parallel.AXIS)
    tx, _ = optim.make_optimizer(config.optimizer, total_steps=config.total_steps,
                                 batch_size=config.batch_size)
    return jax.device_get(jax.jit(lambda: train_step.create_train_state(
        method, model, config, tx, jax.random.PRNGKey(0)))())


def run_steps(config, host_state, batches):
    """`train_step.make_step` for `config.parallel` from `host_state`: the losses and the host
    states before each batch and after the last."""
    method, layout = methods.get(config.method), Layout.from_config(config)
    model = method.build_model(config, 10, layout.bn_axis)
    tx, schedule = optim.make_optimizer(config.optimizer, total_steps=config.total_steps,
                                        batch_size=config.batch_size)
    shardings, step = train_step.make_step(method, model, config, tx, schedule, host_state,
                                           layout)
    state = layout.place_state(host_state, shardings)
    rng = layout.replicate(jax.random.PRNGKey(7))
    losses_seen, states = [], [host_state]
    for batch in batches:
        state, metrics = step(state, layout.to_devices(batch), rng)
        losses_seen.append(float(layout.unreplicate(metrics)["loss"]))
        # Global arrays (replicated, or split under fsdp) come back whole from device_get.
        states.append(layout.unreplicate(state) if layout.kind == "pmap"
                      else jax.device_get(state))
    return losses_seen, states


@pytest.fixture(scope="module")
def byol_states():
    """2 steps of BYOL on 8 devices under each wrapper from one state: {kind: host states}."""
    host_state = initial_state(byol_config())
    batches = [random_batch(k) for k in range(2)]
    return {kind: run_steps(byol_config(kind), host_state, batches)[1]
            for kind in parallel.KINDS}


def test_byol_pmap_and_shard_map_agree(byol_states):
    pmap, shard_map = byol_states["pmap"][-1], byol_states["shard_map"][-1]
    for field in ("params", "batch_stats", "extra"):
        assert_trees_equal(getattr(pmap, field), getattr(shard_map, field), rtol=1e-4,
                           atol=1e-6)


def test_byol_target_is_the_ema_of_the_online_network(byol_states):
    """Step 2 (state.step 1): xi <- tau xi + (1 - tau) theta with tau = momentum_at(1), and no
    other change, though the online network moved; the predictor and probe have no target."""
    _, before, after = byol_states["shard_map"]
    tau = float(common.momentum_at(byol_config(), 1))
    assert 0.9 < tau < 0.99  # The cosine schedule, part way.
    online = {name: after.params[name] for name in ("encoder", "projection")}
    want = jax.tree.map(lambda xi, theta: tau * np.float64(xi) + (1 - tau) * np.float64(theta),
                        before.extra["target_params"], online)
    assert_trees_equal(after.extra["target_params"], want, rtol=1e-6, atol=1e-7)
    moved = jax.tree.map(lambda a, b: np.abs(a - b).max(), online,
                         {name: before.params[name] for name in online})
    assert max(jax.tree.leaves(moved)) > 1e-4
    assert sorted(after.extra["target_params"]) == ["encoder", "projection"]


def test_byol_target_survives_a_checkpoint(byol_states, tmp_path):
    """The state after 2 steps, saved by one Trainer and restored by another (Orbax on disk):
    the target network and its BatchNorm statistics come back bit for bit."""
    state = byol_states["shard_map"][-1]
    config, workdir = byol_config(), str(tmp_path / "run")
    trainer = train.Trainer(config, workdir)
    trainer.save(parallel.replicate(state, "shard_map", trainer.layout.mesh), 2)
    trainer.wait_for_saves()
    restored = jax.device_get(train.Trainer(config, workdir).initial_state())
    assert int(restored.step) == 2
    for field in ("params", "batch_stats", "extra"):
        assert_trees_equal(getattr(restored, field), getattr(state, field))
    assert not np.array_equal(restored.extra["target_params"]["projection"]["Dense_0"]["bias"],
                              restored.params["projection"]["Dense_0"]["bias"])


@pytest.mark.parametrize("override,message", [
    ({"grad_cache_chunks": 2}, "method 'byol' has no loss over embeddings"),
    ({"parallel": "fsdp"}, "parallel='fsdp' needs a loss over embeddings; method 'byol'"),
    ({"loss.momentum": 1.5}, "config.loss.momentum must be in"),
    ({"model.predictor_layers": 0}, "config.model.predictor_layers must be >= 1"),
])
def test_byol_refuses_what_it_cannot_run(override, message):
    with pytest.raises(ValueError, match=message):
        train_step.validate(byol_config(**override))


# -- SimSiam -----------------------------------------------------------------------------------

def test_simsiam_loss_and_its_stop_gradient():
    """The loss is D(p1, z2)/2 + D(p2, z1)/2 plus the probe's; the projections z get no
    gradient, the predictions p do."""
    rng = np.random.default_rng(3)
    outputs = {name: rng.normal(size=(6, 5)).astype(np.float32)
               for name in ("projection1", "projection2", "prediction1", "prediction2")}
    outputs.update(probe_logits1=np.zeros((6, 10), np.float32),
                   probe_logits2=np.zeros((6, 10), np.float32))
    batch = {"label": np.arange(6, dtype=np.int32)}
    parts = simsiam.loss_parts(None, config_defaults.base("simsiam"), None)
    (loss, metrics), grads = jax.jit(jax.value_and_grad(parts.loss_on, argnums=1,
                                                        has_aux=True))({}, outputs, batch)
    want = -0.5 * (np.mean(cosines(outputs["prediction1"], outputs["projection2"]))
                   + np.mean(cosines(outputs["prediction2"], outputs["projection1"])))
    assert float(metrics["simsiam_loss"]) == pytest.approx(want, rel=1e-5)
    assert float(loss) == pytest.approx(want + np.log(10), rel=1e-5)  # Uniform probe.
    for view in (1, 2):
        assert not np.any(grads[f"projection{view}"])
        assert np.abs(grads[f"prediction{view}"]).min() > 0


def test_fixed_lr_params_keep_the_peak_learning_rate():
    """SGD on {"predictor", "encoder"}: the predictor moves by peak * g every step, the encoder
    by peak * cosine(t) * g."""
    opt_config = config_defaults.base("simsiam").optimizer
    opt_config.update(learning_rate=0.4, lr_scaling="none", weight_decay=0.0, momentum=0.0,
                      warmup_steps=0)
    tx, schedule = optim.make_optimizer(opt_config, total_steps=4, batch_size=256)
    params = {"predictor": {"kernel": jnp.ones((2, 3))}, "encoder": {"kernel": jnp.ones((3, 2))}}
    grads = jax.tree.map(jnp.ones_like, params)
    state = tx.init(params)
    for step in range(3):
        updates, state = tx.update(grads, state, params)
        np.testing.assert_allclose(updates["predictor"]["kernel"], -0.4, rtol=1e-6)
        np.testing.assert_allclose(updates["encoder"]["kernel"], -schedule(step), rtol=1e-6)
    assert float(schedule(2)) < 0.3  # The encoder's rate did decay.
    opt_config.fixed_lr_params = ("predictor", "no_such_group")
    tx, _ = optim.make_optimizer(opt_config, total_steps=4, batch_size=256)
    with pytest.raises(ValueError, match="fixed_lr_params names \\['no_such_group'\\]"):
        tx.init(params)


@pytest.mark.slow  # 40 s: fsdp's step is the same code for every method with loss_parts.
def test_simsiam_fsdp_step_equals_shard_map():
    """SimSiam's loss_parts under parallel='fsdp' (BatchNorm over the global batch, one view at
    a time) against the shard_map step from one state: 2 steps of SGD, the predictor at its
    fixed rate."""
    config = config_checks.resolve_steps(tiny_config("simsiam", batch_size=32, total_steps=2, **{
        "model.head_hidden_dim": 32, "model.head_out_dim": 32,
        "model.predictor_hidden_dim": 8}), 64)
    host_state, batches = initial_state(config), synthetic_batches(config, 2)
    want_losses, want = run_steps(config, host_state, batches)
    config.parallel = "fsdp"
    losses_seen, got = run_steps(config, host_state, batches)
    assert want_losses[1] != want_losses[0]  # The parameters did move.
    np.testing.assert_allclose(losses_seen, want_losses, rtol=1e-5)
    for field in ("params", "batch_stats"):
        assert_trees_equal(getattr(got[-1], field), getattr(want[-1], field), rtol=1e-4,
                           atol=1e-6)

