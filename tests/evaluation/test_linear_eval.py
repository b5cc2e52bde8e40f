"""SimCLR's linear evaluation protocol (evaluation/linear_protocol.py, its data in
data/linear_eval_input.py, the linear_eval command): the head's update against numpy under both
wrappers on the 8 simulated devices, the training views and their seeds, a tiny
end-to-end run from a checkpoint, and the command line's refusal of a workdir without one."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import tensorflow as tf

from contrastive_jax import config_defaults, linear_eval, parallel, train
from contrastive_jax.data import linear_eval_input
from contrastive_jax.evaluation import linear_protocol
from contrastive_jax.augment import tf_ops
from contrastive_jax.data import sources as data_sources, host_shards
from contrastive_jax.logging import read_metrics
from contrastive_jax.parallel.layout import Layout

from support import REPO

COLORS = {"blue": (40, 60, 220), "green": (40, 200, 60), "red": (220, 40, 40)}


def test_head_starts_at_zero():
    params = linear_protocol.init_head(num_classes=3, feature_dim=5)
    assert params["kernel"].shape == (5, 3) and params["bias"].shape == (3,)
    assert all(np.all(np.asarray(leaf) == 0) for leaf in jax.tree.leaves(params))


def _softmax_cross_entropy_grads(kernel, bias, features, labels):
    logits = features @ kernel + bias
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    probs[np.arange(len(labels)), labels] -= 1.0
    probs /= len(labels)
    return features.T @ probs, probs.sum(0)


def _toy_encoder(variables, images):
    """A frozen linear encoder that reads both parameters and statistics."""
    flat = images.reshape(images.shape[0], -1)
    return flat @ variables["params"]["w"] * variables["batch_stats"]["scale"]


@pytest.mark.parametrize("kind", ["pmap", "shard_map"])
def test_head_steps_match_numpy_nesterov_sgd(kind):
    """Two steps on a global batch of 16 over 8 devices equal hand-computed Nesterov SGD (TF's
    MomentumOptimizer form) with the cosine learning rate, on the same frozen features."""
    config = config_defaults.base()
    config.eval.linear_eval_batch_size = 16
    config.eval.linear_eval_learning_rate = 4.0  # Peak 4 * 16 / 256 = 0.25.
    total_steps, momentum, num_classes = 4, 0.9, 3
    rng = np.random.default_rng(0)
    variables = {"params": {"w": rng.normal(size=(12, 5)).astype(np.float32)},
                 "batch_stats": {"scale": np.float32(0.5)}}
    batches = [{"image": rng.normal(size=(16, 2, 2, 3)).astype(np.float32),
                "label": rng.integers(0, num_classes, 16).astype(np.int32)} for _ in range(2)]

    mesh = parallel.make_mesh()
    tx, schedule = linear_protocol.head_optimizer(config.eval, total_steps)
    step_fn = linear_protocol.wrap_head_step(
        linear_protocol.make_head_step(_toy_encoder, num_classes, tx, schedule),
        Layout(kind, mesh))
    state = parallel.replicate(linear_protocol.init_head_state(num_classes, 5, tx), kind, mesh)
    device_variables = parallel.replicate(variables, kind, mesh)
    for batch in batches:
        state, metrics = step_fn(state, device_variables,
                                 parallel.host_batch_to_devices(batch, kind, mesh))
    head = parallel.unreplicate(state.params, kind)

    kernel, bias = np.zeros((5, num_classes)), np.zeros(num_classes)
    trace_kernel, trace_bias = np.zeros_like(kernel), np.zeros_like(bias)
    peak = 4.0 * 16 / 256
    for step, batch in enumerate(batches):
        features = batch["image"].reshape(16, -1) @ variables["params"]["w"] * 0.5
        grad_kernel, grad_bias = _softmax_cross_entropy_grads(kernel, bias, features,
                                                              batch["label"])
        lr = peak * 0.5 * (1 + np.cos(np.pi * step / total_steps))
        trace_kernel = grad_kernel + momentum * trace_kernel
        trace_bias = grad_bias + momentum * trace_bias
        kernel = kernel - lr * (grad_kernel + momentum * trace_kernel)
        bias = bias - lr * (grad_bias + momentum * trace_bias)
    assert np.abs(kernel).max() > 0.05  # The steps moved the head.
    np.testing.assert_allclose(head["kernel"], kernel, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(head["bias"], bias, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(parallel.unreplicate(metrics, kind)["learning_rate"],
                               peak * 0.5 * (1 + np.cos(np.pi / total_steps)), rtol=1e-6)


def test_lars_protocol_steps_match_numpy_larc_sgd():
    """eval.linear_eval_protocol = "lars" (SimSiam's main_lincls --lars): three steps equal
    apex LARC (trust 1e-3, no clipping, ratio 1 while a parameter or its gradient is 0) over
    torch.optim.SGD with momentum 0.9 (buf = m buf + g; p -= lr buf), written out in numpy."""
    config = config_defaults.base("simsiam")
    assert config.eval.linear_eval_protocol == "lars"
    config.eval.linear_eval_batch_size = 16
    config.eval.linear_eval_learning_rate = 8.0  # Peak 8 * 16 / 256 = 0.5.
    total_steps, num_classes = 5, 3
    rng = np.random.default_rng(3)
    features = [rng.normal(size=(16, 5)) for _ in range(3)]
    labels = [rng.integers(0, num_classes, 16) for _ in range(3)]
    tx, _ = linear_protocol.head_optimizer(config.eval, total_steps)
    params = linear_protocol.init_head(num_classes, 5)
    opt_state = tx.init(params)
    want = {"kernel": np.zeros((5, num_classes)), "bias": np.zeros(num_classes)}
    buffers = {name: np.zeros_like(value) for name, value in want.items()}
    for step in range(3):
        grads = dict(zip(("kernel", "bias"), _softmax_cross_entropy_grads(
            np.asarray(params["kernel"], np.float64), np.asarray(params["bias"], np.float64),
            features[step], labels[step])))
        updates, opt_state = tx.update(jax.tree.map(np.float32, grads), opt_state, params)
        params = jax.tree.map(lambda p, u: p + u, params, updates)
        lr = 0.5 * 0.5 * (1 + np.cos(np.pi * step / total_steps))
        for name, value in want.items():
            g, p_norm = grads[name], np.linalg.norm(value)
            ratio = 1e-3 * p_norm / np.linalg.norm(g) if p_norm > 0 else 1.0
            buffers[name] = 0.9 * buffers[name] + ratio * g
            want[name] = value - lr * buffers[name]
    assert np.abs(want["kernel"]).max() > 0.01
    for name in want:
        np.testing.assert_allclose(params[name], want[name], rtol=1e-4, atol=1e-7)


def test_unknown_linear_eval_protocol_is_refused():
    config = config_defaults.base()
    config.eval.linear_eval_protocol = "byol"
    with pytest.raises(ValueError, match="config.eval.linear_eval_protocol must be one of"):
        linear_protocol.validate(config, num_classes=10)


def test_training_view_is_a_crop_and_flip_without_colour_change():
    """With the crop's area fixed at the whole (square) image, a view is the image or its mirror:
    nothing else, no colour jitter, touches it; both occur."""
    image = np.random.default_rng(1).integers(0, 256, (16, 16, 3)).astype(np.uint8)
    expected = image.astype(np.float32) / 255
    flipped = 0
    for index in range(16):
        view = linear_eval_input.train_view(tf.constant(image), tf_ops.example_seed(0, 0, index),
                                      image_size=16, crop_area_min=1.0).numpy()
        is_mirror = np.allclose(view, expected[:, ::-1], atol=1e-5)
        assert is_mirror or np.allclose(view, expected, atol=1e-5), index
        flipped += is_mirror
    assert 0 < flipped < 16


def _synthetic_data(num_examples=8):
    config = config_defaults.base()
    config.data.source = "synthetic"
    config.data.synthetic_num_examples = num_examples
    config.data.image_size = 16
    return config.data


def _batches(data, seed, count):
    iterator = linear_eval_input.train_batches(data, global_batch_size=8, seed=seed,
                                         crop_area_min=0.08, process_index=0, process_count=1)
    return [next(iterator) for _ in range(count)]


def test_training_batches_follow_the_example_seeds_and_are_reaugmented_every_epoch():
    data = _synthetic_data()
    epochs = _batches(data, seed=3, count=2)  # 8 examples, batch 8: one batch per epoch.

    split = data_sources.indexed_split(data, "train")
    order = host_shards.train_shard(8, 0, 1)[host_shards.epoch_order(8, 3, 0).numpy()]
    first_epoch = np.stack([
        linear_eval_input.train_view(split.load(i)[0], tf_ops.example_seed(3, 0, i), 16, 0.08).numpy()
        for i in order])
    np.testing.assert_array_equal(epochs[0]["image"], first_epoch)
    np.testing.assert_array_equal(epochs[0]["label"], [int(split.load(i)[1]) for i in order])

    again = _batches(data, seed=3, count=2)
    for batch, repeat in zip(epochs, again):
        np.testing.assert_array_equal(batch["image"], repeat["image"])
    assert sorted(epochs[0]["label"]) == sorted(epochs[1]["label"])
    distances = np.abs(epochs[1]["image"][:, None] - epochs[0]["image"][None]).max(axis=(2, 3, 4))
    assert distances.min() > 0.01  # No view of epoch 1 repeats one of epoch 0.
    assert not np.array_equal(_batches(data, seed=4, count=1)[0]["image"], epochs[0]["image"])


def _color_folder(root, per_class):
    """PNG images of three flat colours with pixel noise, root/<split>/<colour>/*.png."""
    rng = np.random.default_rng(0)
    for split, count in per_class.items():
        for name, rgb in COLORS.items():
            os.makedirs(os.path.join(root, split, name))
            for k in range(count):
                noise = rng.integers(-8, 9, (20, 20, 3))
                image = np.clip(np.asarray(rgb) + noise, 0, 255).astype(np.uint8)
                tf.io.write_file(os.path.join(root, split, name, f"{k}.png"),
                                 tf.io.encode_png(image))


def test_linear_eval_beats_chance_leaves_the_encoder_alone_and_reads_checkpoints(tmp_path):
    """A randomly initialised tiny ResNet's features separate three colours: the protocol reaches
    well above chance (1/3) and leaves the encoder's parameters and BatchNorm statistics as they
    were; the same evaluation of the checkpoint in a workdir gives the same accuracy and appends
    it to metrics.jsonl at the checkpoint's step.

    A random encoder's features are small (std 0.03 to 0.15), so the head needs a larger base
    rate than the protocol's 0.1 to fit them in 60 steps (10 of 10 init seeds reach 1.0)."""
    _color_folder(str(tmp_path / "colors"), {"train": 16, "test": 8})
    config = config_defaults.base()
    config.batch_size = 16
    config.data.source = f"folder:{tmp_path / 'colors'}"
    config.data.image_size = 16
    config.model.base_width = 4
    config.model.head_out_dim = 16
    config.eval.batch_size = 24
    config.eval.linear_eval_epochs = 20.0
    config.eval.linear_eval_batch_size = 16
    config.eval.linear_eval_learning_rate = 10.0
    workdir = str(tmp_path / "run")
    trainer = train.Trainer(config, workdir)
    state = trainer.initial_state()
    trainer.save(state, 3)
    trainer.checkpoints.wait_until_finished()
    encoder = {"params": state.params, "batch_stats": state.batch_stats}
    encoder_before = jax.device_get(trainer.layout.unreplicate(encoder))

    results = trainer.linear_eval(state)

    assert set(results) == {"linear_eval_top1"}
    assert results["linear_eval_top1"] >= 0.9, results
    jax.tree.map(np.testing.assert_array_equal, encoder_before,
                 trainer.layout.unreplicate(encoder))
    written = os.stat(os.path.join(workdir, "config.json"))
    step, from_workdir = linear_eval.evaluate_workdir(config, workdir)
    assert step == 3 and from_workdir == results
    assert read_metrics(workdir)[-1] == {"step": 3, **results}
    after = os.stat(os.path.join(workdir, "config.json"))  # Read, not written again.
    assert (after.st_ino, after.st_mtime_ns) == (written.st_ino, written.st_mtime_ns)


@pytest.mark.parametrize("args,message", [
    (["--config.nosuchkey=1", "--workdir=/tmp/x"], "error: unknown config key 'nosuchkey'"),
    ([], "error: flag --workdir=None: Flag --workdir must have a value other than None."),
])
def test_cli_bad_flags_are_one_error_line(args, message):
    env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "-m", "contrastive_jax.linear_eval", "--config=configs/demo.py", *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == message, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


def test_cli_without_a_checkpoint_says_so_in_one_line_and_exits_1(tmp_path):
    workdir = tmp_path / "never_trained"
    env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "-m", "contrastive_jax.linear_eval", "--config=configs/demo.py",
         f"--workdir={workdir}"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [proc.stderr.strip().splitlines()[-1]], proc.stderr[-2000:]
    assert errors[0].startswith(f"error: no checkpoint in {workdir}")
    assert not workdir.exists()


@pytest.mark.parametrize("parallel_kind", ["shard_map", "fsdp"])
def test_training_run_ends_with_the_linear_eval_once(tmp_path, parallel_kind):
    """eval.linear_eval=True: the run's last metrics and metrics.jsonl hold linear_eval_top1 at
    the final step; running the finished workdir again does not repeat it; the command's
    evaluation of the saved checkpoint gives the same accuracy (under fsdp: the run's split
    state gathered against the checkpoint restored whole) and keeps the run's rows."""
    from test_train import tiny_config

    config = tiny_config(**{"total_steps": 2, "eval_every": -1, "eval.linear_eval": True,
                            "eval.linear_eval_epochs": 0.5, "eval.linear_eval_batch_size": 16,
                            "parallel": parallel_kind})
    workdir = str(tmp_path / "run")
    last = train.train_and_evaluate(config, workdir)
    assert 0.0 <= last["linear_eval_top1"] <= 1.0
    rows = [row for row in read_metrics(workdir) if "linear_eval_top1" in row]
    assert rows == [{"step": 2, "linear_eval_top1": last["linear_eval_top1"]}]
    train.train_and_evaluate(config, workdir)
    assert len([row for row in read_metrics(workdir) if "linear_eval_top1" in row]) == 1
    rows_before = read_metrics(workdir)
    step, results = linear_eval.evaluate_workdir(config, workdir)
    assert (step, results) == (2, {"linear_eval_top1": last["linear_eval_top1"]})
    assert read_metrics(workdir) == [*rows_before, {"step": 2, **results}]
