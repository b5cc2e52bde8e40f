"""The shipped configs' heads and encoder initialisation against their reference code's layer
lists (parameter trees from `jax.eval_shape`, so nothing is computed), and each option that
restores the earlier form.

- SwAV (facebookresearch/swav `projection_head`): Linear -> BN -> ReLU -> Linear, no output BN.
- MoCo v3 (moco-v3 `_build_mlp`): the ViT predictor ends in BatchNorm(affine=False) after a
  Linear without bias; the ResNet predictor has no last BN.
- BYOL (deepmind-research/byol `MLP`): Linear with bias -> BN -> ReLU -> Linear without bias.
- BYOL ImageNet, SimSiam and MoCo v3's ResNet zero-initialise each residual block's last BN.
"""

import os

import jax
import jax.numpy as jnp
import pytest
from flax import traverse_util

from contrastive_jax import methods

from support import REPO, load_config


def config_of(name, **overrides):
    config = load_config(os.path.join(REPO, "configs", name))
    config.data.image_size = 32
    for key, value in overrides.items():
        section, field = key.split(".")
        config[section][field] = value
    return config


def variable_shapes(config, collection="params"):
    """{path: shape} of `collection` of the method's model for `config` (abstract init)."""
    method = methods.get(config.method)
    model = method.build_model(config, 10, None)
    variables = jax.eval_shape(lambda rng: method.init_variables(model, config, rng),
                               jax.random.PRNGKey(0))
    flat = traverse_util.flatten_dict(jax.tree.map(lambda x: x.shape, variables.get(
        collection, {})), sep="/")
    return {path: shape for path, shape in flat.items()}


def module_params(shapes, prefix):
    return {path.removeprefix(prefix + "/"): shape for path, shape in shapes.items()
            if path.startswith(prefix + "/")}


@pytest.mark.parametrize("name", ["swav_imagenet.py", "swav_cifar10.py"])
def test_swav_projector_is_the_references_without_output_batchnorm(name):
    head = module_params(variable_shapes(config_of(name)), "projection")
    assert head == {"Dense_0/kernel": (512 if "cifar" in name else 2048, 2048),
                    "BatchNorm_0/scale": (2048,), "BatchNorm_0/bias": (2048,),
                    "Dense_1/kernel": (2048, 128), "Dense_1/bias": (128,)}
    old = module_params(variable_shapes(config_of(name, **{"model.swav_output_bn": True})),
                        "projection")
    assert "Dense_1/bias" not in old and old["BatchNorm_1/scale"] == (128,)
    assert "BatchNorm_1/bias" not in old


@pytest.mark.parametrize("name", ["moco_v3_vit_small.py", "moco_v3_cifar10.py"])
def test_moco_v3_vit_predictor_ends_in_batchnorm_without_affine(name):
    config = config_of(name)
    predictor = module_params(variable_shapes(config), "predictor")
    assert "Dense_1/bias" not in predictor and not any("BatchNorm_1" in p for p in predictor)
    stats = module_params(variable_shapes(config, "batch_stats"), "predictor")
    assert stats["BatchNorm_1/mean"] == (256,) and stats["BatchNorm_1/var"] == (256,)
    old = variable_shapes(config_of(name, **{"model.predictor_output_bn": False}),
                          "batch_stats")
    assert not any(path.startswith("predictor/BatchNorm_1") for path in old)


def test_moco_v3_resnet_predictor_has_no_last_batchnorm():
    config = config_of("moco_v3_cifar10.py", **{"model.name": "resnet18",
                                                 "model.freeze_patch_embed": False})
    stats = variable_shapes(config, "batch_stats")
    assert not any(path.startswith("predictor/BatchNorm_1") for path in stats)
    assert any(path.startswith("projection/BatchNorm_2") for path in stats)


@pytest.mark.parametrize("name", ["byol_imagenet.py", "byol_cifar10.py"])
def test_byol_mlps_have_the_hidden_bias_and_no_output_bias(name):
    shapes = variable_shapes(config_of(name))
    for part in ("projection", "predictor"):
        mlp = module_params(shapes, part)
        assert mlp["Dense_0/bias"] == (4096,) and "Dense_1/bias" not in mlp, part
    old = variable_shapes(config_of(name, **{"model.mlp_bias": "output"}))
    assert "projection/Dense_0/bias" not in old and old["projection/Dense_1/bias"] == (256,)


def test_simsiam_predictor_keeps_its_references_biases():
    """SimSiam's predictor: Linear(bias=False) -> BN -> ReLU -> Linear with bias."""
    predictor = module_params(variable_shapes(config_of("simsiam_cifar10.py")), "predictor")
    assert "Dense_0/bias" not in predictor and predictor["Dense_1/bias"] == (2048,)


def _last_bn_scales(config, encoder="encoder"):
    """Each residual block's last BatchNorm scale, initialised for real (one tiny init)."""
    method = methods.get(config.method)
    model = method.build_model(config, 10, None)
    params = jax.jit(lambda rng: method.init_variables(model, config, rng))(
        jax.random.PRNGKey(0))["params"][encoder]
    flat = traverse_util.flatten_dict(params, sep="/")
    last = {}
    for path, value in flat.items():
        block, *rest = path.split("/")
        if rest[-1] == "scale" and rest[0].startswith("BatchNorm") and "Block" in block:
            last[block] = max(last.get(block, ("", None)), (rest[0], value))
    return [value for _, value in last.values()]


@pytest.mark.parametrize("name,overrides", [
    ("byol_imagenet.py", {}), ("simsiam_cifar10.py", {}),
    ("moco_v3_cifar10.py", {"model.name": "resnet18", "model.freeze_patch_embed": False}),
])
def test_residual_blocks_last_batchnorm_starts_at_zero(name, overrides):
    config = config_of(name, **{"model.base_width": 8, **overrides})
    config.model.dtype = "float32"
    scales = _last_bn_scales(config)
    assert len(scales) >= 8 and all(bool(jnp.all(s == 0)) for s in scales)
    off = config_of(name, **{"model.base_width": 8, **overrides,
                             "model.zero_init_residual": False})
    off.model.dtype = "float32"
    assert all(bool(jnp.all(s == 1)) for s in _last_bn_scales(off))
