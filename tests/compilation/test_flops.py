"""FLOPs counted from jaxprs against the published multiply-adds of ViTs and ResNet-50 at
224x224 (the papers' "FLOPs" columns count multiply-adds), an analytic count of a transformer
encoder, and hand counts of a strided convolution's gradients, scan and shard_map."""

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import PartitionSpec as P

from contrastive_jax import parallel
from contrastive_jax.compilation import flops
from contrastive_jax.models import resnet, vit


def forward_macs(model, image_size: int) -> float:
    images = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
    variables = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False), images)
    return flops.step_flops(lambda v, x: model.apply(v, x, train=False), variables, images) / 2


def encoder_macs(tokens: int, width: int, depth: int, mlp_dim: int) -> int:
    """Per block: the four attention projections, scores and weighted sum, and the MLP."""
    return depth * (4 * tokens * width**2 + 2 * tokens**2 * width + 2 * tokens * width * mlp_dim)


@pytest.mark.parametrize("variant,published_gmacs", [
    ("Ti/16", 1.3), ("S/16", 4.6), ("B/16", 17.6)])
def test_vit_forward_matches_published_multiply_adds(variant, published_gmacs):
    assert forward_macs(vit.vit(variant), 224) / 1e9 == pytest.approx(published_gmacs, rel=0.04)


def test_vit_forward_equals_the_analytic_count():
    config = vit.parse_variant("mu/4")
    patches = (16 // 4) ** 2
    expected = (patches * 4 * 4 * 3 * config["width"]
                + encoder_macs(patches + 1, config["width"], config["depth"], config["mlp_dim"]))
    assert forward_macs(vit.vit("mu/4"), 16) == expected


def test_resnet50_forward_matches_published_multiply_adds():
    assert forward_macs(resnet.resnet("resnet50"), 224) / 1e9 == pytest.approx(4.1, rel=0.01)


def test_strided_convolution_and_its_gradients_by_hand():
    """A 3x3 stride-2 convolution, 8 -> 16 channels, on a 2 x 16 x 16 input (8 x 8 output):
    forward, the kernel's gradient and the input's gradient cost the same multiply-adds (the
    input gradient's dilated input counts only its non-zero entries)."""
    x = jax.ShapeDtypeStruct((2, 16, 16, 8), jnp.float32)
    w = jax.ShapeDtypeStruct((3, 3, 8, 16), jnp.float32)

    def conv(x, w):
        return jax.lax.conv_general_dilated(x, w, (2, 2), "SAME",
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))

    forward = 2 * (2 * 8 * 8 * 16) * (3 * 3 * 8)
    assert flops.step_flops(conv, x, w) == forward
    grads = jax.grad(lambda x, w: conv(x, w).sum(), argnums=(0, 1))
    assert flops.step_flops(grads, x, w) == pytest.approx(3 * forward, rel=0.02)


def test_scan_counts_its_length_and_shard_map_every_device():
    a = jax.ShapeDtypeStruct((8, 4, 6), jnp.float32)
    b = jax.ShapeDtypeStruct((6, 5), jnp.float32)
    scanned = lambda a, b: jax.lax.scan(lambda c, x: (c, x @ b), 0.0, a)[1]
    assert flops.step_flops(scanned, a, b) == 8 * 2 * 4 * 6 * 5
    mesh = parallel.make_mesh(jax.devices()[:4])
    mapped = jax.shard_map(lambda x, y: x @ y, mesh=mesh, in_specs=(P("data"), P()),
                           out_specs=P("data"))
    x = jax.ShapeDtypeStruct((16, 6), jnp.float32)
    assert flops.step_flops(mapped, x, b) == 2 * 16 * 6 * 5  # 4 devices x 4 rows each.
    wide, square = jnp.ones((6, 5)), jnp.ones((5, 5))
    costly_or_cheap = lambda p, x: jax.lax.cond(p, lambda x: x @ wide @ square,
                                                lambda x: x @ wide, x)
    assert flops.step_flops(costly_or_cheap, True, x) == 2 * 16 * 6 * 5 + 2 * 16 * 5 * 5
