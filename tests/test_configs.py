"""Every shipped config loads, resolves its steps and passes validation; method-level identities
that need no training."""

import glob
import os

import jax
import ml_collections
import numpy as np
import pytest

from contrastive_jax import config_checks, main, methods, train_step
from contrastive_jax.data import numpy_data
from contrastive_jax.logging import MetricWriter
from contrastive_jax.methods import simclr, supcon

from support import REPO, load_config, tiny_config

CONFIG_ARGS = {"simclr_cifar10.py": ["resnet18", "resnet50", "resnet18_readme"],
               "simclr_imagenet.py": ["100", "1000"],
               "supcon_cifar10.py": ["resnet18", "resnet50"], "clip_cifar10.py": ["mu", "ti"],
               "siglip_cifar10.py": ["mu", "ti"], "moco_v3_cifar10.py": ["mu", "ti"]}
CASES = [(os.path.basename(path), arg)
         for path in sorted(glob.glob(os.path.join(REPO, "configs", "*.py")))
         for arg in CONFIG_ARGS.get(os.path.basename(path), [None])]


@pytest.mark.parametrize("name,arg", CASES)
def test_config_loads_and_validates(name, arg):
    path = os.path.join(REPO, "configs", name)
    config = load_config(path if arg is None else f"{path}:{arg}")
    assert isinstance(config, ml_collections.ConfigDict)
    config = config_checks.resolve_steps(config, 50_000)
    train_step.validate(config)
    assert config.total_steps > 0 and config.method in methods.METHODS


def test_config_rejects_an_unknown_arg():
    with pytest.raises(ValueError, match="resnet18 or resnet50"):
        load_config(os.path.join(REPO, "configs", "supcon_cifar10.py:vgg"))


def test_image_text_configs_have_no_temperature():
    """The scale is learned; a temperature override would silently mean nothing."""
    config = load_config(os.path.join(REPO, "configs", "clip_cifar10.py"))
    assert "temperature" not in config.loss and config.loss.max_scale == 100.0


def test_cc12m_configs_read_webdataset_shards_with_one_recipe():
    """clip_rn50_cc12m (open_clip's CC12M run) and its SigLIP counterpart read the same wds:
    glob with the same towers, batch and schedule; only the loss and the optimizer differ."""
    clip, siglip = (load_config(os.path.join(REPO, "configs", f"{method}_rn50_cc12m.py"))
                    for method in ("clip", "siglip"))
    assert numpy_data.parse_source(clip.data.source)[0] == "wds"
    assert clip.data.to_dict() == siglip.data.to_dict()
    assert clip.model.to_dict() == siglip.model.to_dict() and clip.model.name == "resnet50"
    assert (clip.batch_size, clip.num_epochs, clip.optimizer.warmup_steps) == (
        siglip.batch_size, siglip.num_epochs, siglip.optimizer.warmup_steps) == (1280, 32, 10_000)
    assert (clip.method, siglip.method) == ("clip", "siglip")


def test_supcon_with_unique_labels_equals_simclr():
    """With every label different, SupCon's only positive is the other view: the method's loss
    equals SimCLR's on the same parameters and batch (SupContrast's T / base_T factor off)."""
    config = config_checks.resolve_steps(tiny_config("supcon", **{"loss.base_temperature": 0.5}), 64)
    model = supcon.METHOD.build_model(config, 10, None)
    variables = supcon.METHOD.init_variables(model, config, jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    batch = {"view1": rng.random((6, 16, 16, 3), np.float32),
             "view2": rng.random((6, 16, 16, 3), np.float32), "label": np.arange(6, dtype=np.int32)}
    state = train_step.TrainState(step=0, params=variables["params"],
                             batch_stats=variables["batch_stats"], opt_state=(), extra={})
    losses = {name: jax.jit(lambda batch, loss_fn=method.loss_fn: loss_fn(
        model, config, variables["params"], state, batch, jax.random.PRNGKey(0), None)[0])
        for name, method in (("supcon", supcon), ("simclr", simclr))}
    np.testing.assert_allclose(losses["supcon"](batch), losses["simclr"](batch), rtol=1e-6)
    batch["label"] = np.array([0, 0, 1, 1, 2, 2], np.int32)
    assert not np.isclose(losses["supcon"](batch), losses["simclr"](batch), rtol=1e-3)


def _two_view_setup(method_name, **overrides):
    """A tiny model's variables, a state and a batch of 6 examples for `method.loss_fn`."""
    config = config_checks.resolve_steps(tiny_config(method_name, **overrides), 64)
    method = methods.get(method_name)
    model = method.build_model(config, 10, None)
    variables = method.init_variables(model, config, jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    batch = {"view1": rng.random((6, 16, 16, 3), np.float32),
             "view2": rng.random((6, 16, 16, 3), np.float32),
             "label": np.array([0, 0, 1, 1, 2, 3], np.int32)}
    state = train_step.TrainState(step=0, params=variables["params"],
                             batch_stats=variables["batch_stats"], opt_state=(), extra={})
    return config, method, model, variables, state, batch


def _contrastive_loss(method_name, **overrides):
    config, method, model, variables, state, batch = _two_view_setup(method_name, **overrides)
    _, (_, metrics) = method.loss_fn(model, config, variables["params"], state, batch,
                                     jax.random.PRNGKey(0), None)
    return float(metrics["contrastive_loss"])


def _reference_simclr_loss(p1, p2, temperature):
    """google-research/simclr's loss as its paper and code describe it, in numpy: for each
    view a, the cross-entropy of [a.b, a.a (self masked)] logits with the other view as the
    label, averaged over the batch; the two views' losses summed."""
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    h1, h2 = unit(np.float64(p1)), unit(np.float64(p2))
    n = len(h1)
    self_mask = np.eye(n) * 1e9

    def cross_entropy(positives_and_others, same_view):
        logits = np.concatenate([positives_and_others, same_view - self_mask], axis=1)
        log_softmax = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        return -np.mean(log_softmax[np.arange(n), np.arange(n)])

    return (cross_entropy(h1 @ h2.T / temperature, h1 @ h1.T / temperature)
            + cross_entropy(h2 @ h1.T / temperature, h2 @ h2.T / temperature))


def test_simclr_loss_multiplier_2_is_the_reference_loss():
    config, method, model, variables, _, batch = _two_view_setup(
        "simclr", **{"loss.multiplier": 2.0})
    images = np.concatenate([batch["view1"], batch["view2"]])
    (_, projection, _), _ = model.apply(variables, images, train=True, mutable=["batch_stats"])
    want = _reference_simclr_loss(projection[:6], projection[6:], config.loss.temperature)
    assert _contrastive_loss("simclr", **{"loss.multiplier": 2.0}) == pytest.approx(want,
                                                                                     rel=1e-5)
    assert _contrastive_loss("simclr") == pytest.approx(want / 2, rel=1e-5)


def test_supcon_loss_is_scaled_by_temperature_over_base_temperature():
    plain = _contrastive_loss("supcon", **{"loss.temperature": 0.1,
                                           "loss.base_temperature": 0.1})
    scaled = _contrastive_loss("supcon", **{"loss.temperature": 0.1})  # Base 0.07.
    assert scaled == pytest.approx(plain * 0.1 / 0.07, rel=1e-6)


def test_recipes_follow_their_references():
    """The details a reader checks against google-research/simclr and SupContrast."""
    cifar = load_config(os.path.join(REPO, "configs", "simclr_cifar10.py:resnet18"))
    readme = load_config(os.path.join(REPO, "configs", "simclr_cifar10.py:resnet18_readme"))
    imagenet = load_config(os.path.join(REPO, "configs", "simclr_imagenet.py"))
    for config in (cifar, readme, imagenet):
        assert config.model.zero_init_residual and config.loss.multiplier == 2.0
    assert (cifar.batch_size, cifar.optimizer.weight_decay) == (1024, 1e-6)
    assert (readme.batch_size, readme.optimizer.weight_decay) == (512, 1e-4)
    sup = load_config(os.path.join(REPO, "configs", "supcon_cifar10.py"))
    assert sup.data.crop_area_min == 0.2 and not sup.model.head_bn
    assert sup.loss.base_temperature == 0.07


def test_summary_table_shows_random_init_and_last_evaluation(tmp_path):
    writer = MetricWriter(str(tmp_path))
    writer.write(0, {"zeroshot_top1": 0.1})
    writer.write(5, {"loss": 1.0})
    writer.write(10, {"zeroshot_top1": 0.4407})
    writer.close()
    lines = main.summary_table(str(tmp_path)).splitlines()
    assert "zero-shot top-1" in lines[0] and len(lines) == 3
    assert lines[1].split()[-1] == "0.1000" and lines[2].split()[-1] == "0.4407"
    assert "step 10" in lines[2]


def test_summary_table_merges_evaluations_of_one_step(tmp_path):
    writer = MetricWriter(str(tmp_path))
    writer.write(0, {"knn_top1": 0.2, "linear_top1": 0.3})
    writer.write(10, {"knn_top1": 0.5, "linear_top1": 0.6})
    writer.write(10, {"linear_eval_top1": 0.7})
    writer.close()
    lines = main.summary_table(str(tmp_path)).splitlines()
    assert "linear eval top-1" in lines[0] and len(lines) == 3
    assert lines[1].split()[-3:] == ["0.2000", "0.3000", "nan"]
    assert lines[2].split()[-3:] == ["0.5000", "0.6000", "0.7000"]


def test_scan_and_remat_reach_the_towers_from_the_command_line():
    config = load_config(os.path.join(REPO, "configs", "clip_cifar10.py"))
    config.update_from_flattened_dict({"model.scan_layers": True,
                                       "model.remat_policy": "dots_saveable"})
    model = methods.get("clip").build_model(config, 10, None)
    for tower in (model.image_encoder, model.text_encoder):
        assert tower.scan_layers and tower.remat_policy == "dots_saveable"
