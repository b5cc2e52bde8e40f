"""ResNet and heads: published parameter counts, shapes, global BatchNorm == whole-batch BN."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from contrastive_jax import parallel
from contrastive_jax.models import heads, resnet

# torchvision's published counts with the 1000-class head.
PUBLISHED = {"resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032,
             "resnet101": 44_549_160, "resnet152": 60_192_808}


def count(tree):
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameter_counts_match_published(name):
    model = resnet.resnet(name, stem="imagenet", num_classes=1000)
    shapes = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False),
                            jnp.zeros((1, 224, 224, 3)))
    assert count(shapes["params"]) == PUBLISHED[name]


@pytest.mark.parametrize("name,width,stem,size", [
    ("resnet18", 1, "cifar", 32), ("resnet18", 2, "imagenet", 64), ("resnet50", 1, "cifar", 16),
])
def test_feature_shapes_and_feature_dim(name, width, stem, size):
    model = resnet.resnet(name, width=width, stem=stem, base_width=8)
    out = jax.eval_shape(lambda x: model.init_with_output(jax.random.PRNGKey(0), x, train=False)[0],
                         jnp.zeros((2, size, size, 3)))
    assert out.shape == (2, resnet.feature_dim(name, width, base_width=8))


def test_unknown_model_is_refused():
    with pytest.raises(ValueError, match="resnet18"):
        resnet.resnet("resnet19")


@pytest.mark.parametrize("kind", parallel.KINDS)
def test_global_batchnorm_equals_whole_batch_batchnorm(kind):
    images = np.random.default_rng(0).normal(size=(16, 8, 8, 3)).astype(np.float32)
    local = resnet.resnet("resnet18", base_width=4, stem="cifar")
    synced = resnet.resnet("resnet18", base_width=4, stem="cifar", bn_axis_name=parallel.AXIS)
    variables = local.init(jax.random.PRNGKey(0), images[:1], train=False)
    want, want_stats = local.apply(variables, images, train=True, mutable=["batch_stats"])
    mesh = parallel.make_mesh(jax.devices()[:8])

    def per_device(model):
        def apply(variables, x):
            out, stats = model.apply(variables, x, train=True, mutable=["batch_stats"])
            return out, stats["batch_stats"]
        return parallel.wrap(apply, kind, mesh, in_specs=(P(), P(parallel.AXIS)),
                             out_specs=(P(parallel.AXIS), P()))

    args = (parallel.replicate(variables, kind, mesh),
            parallel.host_batch_to_devices(images, kind, mesh))
    out, stats = per_device(synced)(*args)
    out = np.asarray(out).reshape(want.shape)
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                 parallel.unreplicate(stats, kind), want_stats["batch_stats"])
    unsynced, _ = per_device(local)(*args)
    assert not np.allclose(np.asarray(unsynced).reshape(want.shape), want, atol=1e-3)


def test_zero_init_residual_zeroes_the_last_bn_scale_of_each_block():
    model = resnet.resnet("resnet18", base_width=4, stem="cifar", zero_init_residual=True)
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)), train=False)["params"]
    block = params["BasicBlock_0"]
    assert np.all(block["BatchNorm_1"]["scale"] == 0)
    assert np.all(block["BatchNorm_0"]["scale"] == 1)


@pytest.mark.parametrize("layers", [2, 3])
def test_projection_head_shapes(layers):
    head = heads.ProjectionHead(num_layers=layers, hidden_dim=32, out_dim=16)
    out, _ = head.init_with_output(jax.random.PRNGKey(0), jnp.ones((4, 8)), train=False)
    assert out.shape == (4, 16)


def test_projection_head_last_batchnorm_has_a_scale_and_no_bias():
    """As the SimCLR reference's head: its last BatchNorm has center=False, scale on."""
    head = heads.ProjectionHead(num_layers=3, hidden_dim=32, out_dim=16)
    variables = head.init(jax.random.PRNGKey(0), jnp.ones((4, 8)), train=False)
    norms = variables["params"]
    assert set(norms["BatchNorm_0"]) == set(norms["BatchNorm_1"]) == {"scale", "bias"}
    assert set(norms["BatchNorm_2"]) == {"scale"}


def test_linear_probe_sends_no_gradient_to_the_features():
    probe = heads.LinearProbe(num_classes=3)
    features = jnp.ones((4, 8))
    params = probe.init(jax.random.PRNGKey(0), features)
    grad = jax.grad(lambda f: jnp.sum(probe.apply(params, f) ** 2))(features)
    assert np.all(grad == 0)
    param_grad = jax.grad(lambda p: jnp.sum(probe.apply(p, features) ** 2))(params)
    assert np.any(jax.tree.leaves(param_grad)[0] != 0)
