"""ViT and text towers: published parameter counts, shapes and dtypes, input validation, and the
attention masks (padding never changes real tokens; causal positions never see later ones)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from contrastive_jax.models import text, vit
from contrastive_jax.models.transformer import Encoder, stack_block_params

TINY_TEXT = {"vocab_size": 100, "max_len": 16, "width": 32, "depth": 2, "num_heads": 2}


def count(tree):
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def init_shapes(model, inputs):
    return jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False), inputs)


def init_with_output(model, inputs):
    return model.init_with_output(jax.random.PRNGKey(0), inputs, train=False)


def apply(model, variables, inputs):
    return model.apply(variables, inputs, train=False)


def encoder_states(model, variables, tokens):
    """The encoder's output at every position, [n, L, width]."""
    _, state = model.apply(variables, tokens, train=False,
                           capture_intermediates=lambda module, _: isinstance(module, Encoder))
    return state["intermediates"]["encoder"]["__call__"][0]


def random_tokens(rng, shape):
    return rng.integers(1, TINY_TEXT["vocab_size"], size=shape).astype(np.int32)


def padded(rows, length):
    """Token rows right-padded with PAD_ID to `length`."""
    out = np.full((len(rows), length), text.PAD_ID, np.int32)
    for index, row in enumerate(rows):
        out[index, :len(row)] = row
    return out


def test_vit_b16_parameter_count_matches_the_imagenet_trunk():
    """ViT-B/16 at 224, class token, no head (86,567,656 - 768 * 1000 - 1000):
    patch conv 16*16*3*768 + 768 = 590,592; class token 768; positions 197*768 = 151,296;
    per block: 2 LNs 2*1,536, q/k/v/out 4*(768*768 + 768) = 2,362,368,
    MLP 768*3072 + 3072 + 3072*768 + 768 = 4,722,432, so 7,087,872, times 12 = 85,054,464;
    final LN 1,536. Total 85,798,656."""
    shapes = init_shapes(vit.vit("B/16"), jnp.zeros((1, 224, 224, 3)))
    assert count(shapes["params"]) == 85_798_656


def test_clip_text_tower_parameter_count_matches_clip_without_its_projection():
    """OpenAI CLIP's text parameters 63,428,096 minus its 512x512 projection (262,144):
    token embedding 49,408*512 = 25,296,896; positions 77*512 = 39,424;
    per block: 2 LNs 2*1,024, q/k/v/out 4*(512*512 + 512) = 1,050,624,
    MLP 512*2048 + 2048 + 2048*512 + 512 = 2,099,712, so 3,152,384, times 12 = 37,828,608;
    final LN 1,024. Total 63,165,952."""
    model = text.text_transformer(vocab_size=49_408, max_len=77, width=512, depth=12,
                                  num_heads=8)
    shapes = init_shapes(model, jnp.zeros((1, 77), jnp.int32))
    assert count(shapes["params"]) == 63_165_952


def test_parse_variant_and_depth_override():
    assert vit.parse_variant("S/32") == {"width": 384, "depth": 12, "num_heads": 6,
                                         "mlp_dim": 1536, "patch_size": 32}
    model = vit.vit("Ti/4", depth=2)
    assert (model.width, model.depth, model.patch_size) == (192, 2, 4)


@pytest.mark.parametrize("variant", ["X/16", "B", "B/", "B/x", "B/0", "b/16"])
def test_unknown_variant_is_refused_with_the_valid_sizes(variant):
    with pytest.raises(ValueError, match=f"{variant!r}.*'Ti'.*'L'"):
        vit.parse_variant(variant)


def test_unknown_pools_are_refused():
    with pytest.raises(ValueError, match="'avg'"):
        vit.vit("mu/4", pool="avg")
    with pytest.raises(ValueError, match="'first'"):
        text.text_transformer(**TINY_TEXT, pool="first")


@pytest.mark.parametrize("pool", vit.POOLS)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_vit_features_are_float32_of_width(pool, dtype):
    model = vit.vit("mu/4", pool=pool, dtype=dtype)
    images = jnp.asarray(np.random.default_rng(0).normal(size=(2, 16, 8, 3)), jnp.float32)
    features, variables = init_with_output(model, images)
    assert features.shape == (2, 32) and features.dtype == jnp.float32
    assert np.all(np.isfinite(features))
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables["params"]))
    tokens = 4 * 2 + (pool == "cls")
    assert variables["params"]["pos_embedding"].shape == (1, tokens, 32)
    assert ("cls_token" in variables["params"]) == (pool == "cls")


def test_vit_refuses_images_that_are_not_a_multiple_of_the_patch():
    with pytest.raises(ValueError, match="18x16.*patch size 4"):
        init_shapes(vit.vit("mu/4"), jnp.zeros((1, 18, 16, 3)))


@pytest.mark.parametrize("pool", text.POOLS)
def test_text_features_are_float32_and_bfloat16_compute_agrees(pool):
    tokens = padded([random_tokens(np.random.default_rng(0), n) for n in (5, 12, 1)], 12)
    model = text.text_transformer(**TINY_TEXT, pool=pool)
    features, variables = init_with_output(model, tokens)
    low = text.text_transformer(**TINY_TEXT, pool=pool, dtype=jnp.bfloat16)
    low_features = apply(low, variables, tokens)
    assert features.shape == low_features.shape == (3, 32)
    assert features.dtype == low_features.dtype == jnp.float32
    np.testing.assert_allclose(low_features, features, atol=0.1)


def test_text_longer_than_max_len_is_refused():
    with pytest.raises(ValueError, match="17 exceeds max_len 16"):
        init_shapes(text.text_transformer(**TINY_TEXT), jnp.ones((1, 17), jnp.int32))


def test_encoder_refuses_a_mask_of_the_wrong_shape():
    with pytest.raises(ValueError, match=r"\(2, 5, 4\)"):
        Encoder(depth=1, num_heads=2, mlp_dim=8).init(
            jax.random.PRNGKey(0), jnp.zeros((2, 5, 4)), jnp.ones((2, 5, 4), bool))


@pytest.mark.parametrize("pool", text.POOLS)
@pytest.mark.parametrize("causal", [True, False])
def test_padding_does_not_change_the_features_of_a_row(causal, pool):
    rng = np.random.default_rng(1)
    rows = [random_tokens(rng, n) for n in (3, 7, 1, 10)]
    model = text.text_transformer(**TINY_TEXT, causal=causal, pool=pool)
    _, variables = init_with_output(model, padded(rows, 12))
    batch = apply(model, variables, padded(rows, 12))
    longer = apply(model, variables, padded(rows, TINY_TEXT["max_len"]))
    np.testing.assert_allclose(longer, batch, rtol=1e-5, atol=1e-5)
    for index, row in enumerate(rows):
        alone = apply(model, variables, padded([row], len(row)))
        np.testing.assert_allclose(batch[index], alone[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("causal", [True, False])
def test_real_tokens_ignore_padding_wherever_it_sits(causal):
    """With right padding a causal mask alone hides the padding, so this test also puts padding
    first and in the middle: then only the padding mask keeps the padding embedding out."""
    rng = np.random.default_rng(4)
    tokens = random_tokens(rng, (3, 10))
    tokens[0, 7:] = tokens[1, :3] = tokens[2, 4:6] = text.PAD_ID
    model = text.text_transformer(**TINY_TEXT, causal=causal)
    variables = model.init(jax.random.PRNGKey(0), tokens, train=False)
    embedding = variables["params"]["token_embedding"]["embedding"]
    moved = embedding.at[text.PAD_ID].add(jnp.asarray(rng.normal(size=embedding.shape[1]),
                                                      jnp.float32))
    moved_variables = {"params": {**variables["params"],
                                  "token_embedding": {"embedding": moved}}}
    is_token = tokens != text.PAD_ID
    before = encoder_states(model, variables, tokens)[is_token]
    after = encoder_states(model, moved_variables, tokens)[is_token]
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pool", text.POOLS)
def test_a_row_of_only_padding_gives_finite_features(pool):
    model = text.text_transformer(**TINY_TEXT, pool=pool)
    tokens = padded([[], random_tokens(np.random.default_rng(0), 4)], 8)
    features, _ = init_with_output(model, tokens)
    assert np.all(np.isfinite(features))


@pytest.mark.parametrize("causal", [True, False])
def test_causal_positions_do_not_see_later_tokens(causal):
    rng = np.random.default_rng(2)
    tokens = random_tokens(rng, (3, 10))
    changed = tokens.copy()
    changed[:, 5:] = random_tokens(rng, (3, 5))
    model = text.text_transformer(**TINY_TEXT, causal=causal)
    _, variables = init_with_output(model, tokens)
    before = encoder_states(model, variables, tokens)
    after = encoder_states(model, variables, changed)
    early_unchanged = np.allclose(before[:, :5], after[:, :5], rtol=1e-5, atol=1e-5)
    assert early_unchanged == causal
    assert not np.allclose(before[:, 5:], after[:, 5:], atol=1e-3)


@pytest.mark.parametrize("pool", text.POOLS)
def test_changing_a_real_token_changes_the_features(pool):
    rng = np.random.default_rng(3)
    tokens = padded([random_tokens(rng, 6), random_tokens(rng, 9)], 12)
    changed = tokens.copy()
    changed[:, 0] = tokens[:, 0] % (TINY_TEXT["vocab_size"] - 1) + 1
    model = text.text_transformer(**TINY_TEXT, pool=pool)
    _, variables = init_with_output(model, tokens)
    before = apply(model, variables, tokens)
    after = apply(model, variables, changed)
    for row in range(2):
        assert not np.allclose(before[row], after[row], atol=1e-3)


def _with_stacked_encoder(variables, depth):
    params = dict(variables["params"])
    params["encoder"] = stack_block_params(params["encoder"], depth)
    return {"params": params}


@pytest.mark.parametrize("remat_policy", ["none", "dots_saveable"])
def test_scanned_and_rematerialised_towers_equal_the_layer_loop(remat_policy):
    """nn.scan over the blocks (parameters stacked by `stack_block_params`) and nn.remat give
    the loop's features and the loop's gradients, for the masked text tower and the ViT."""
    rng = np.random.default_rng(0)
    tokens = padded([random_tokens(rng, (5,)), random_tokens(rng, (9,))], 12)
    images = rng.random((2, 8, 8, 3), np.float32)
    towers = [
        (lambda **kw: text.text_transformer(**TINY_TEXT, **kw), tokens),
        (lambda **kw: vit.vit("mu/4", depth=3, **kw), images),
    ]
    for make, inputs in towers:
        loop = make()
        variables = loop.init(jax.random.PRNGKey(0), inputs, train=False)
        depth = loop.depth
        scanned = make(scan_layers=True, remat_policy=remat_policy)
        stacked = _with_stacked_encoder(variables, depth)
        assert jax.tree.structure(stacked) == jax.tree.structure(
            scanned.init(jax.random.PRNGKey(0), inputs, train=False))

        def loss(model, params):
            return jnp.sum(jnp.sin(model.apply({"params": params}, inputs, train=False)))

        np.testing.assert_allclose(apply(scanned, stacked, inputs),
                                   apply(loop, variables, inputs), rtol=1e-5, atol=1e-6)
        grads_loop = jax.grad(lambda p: loss(loop, p))(variables["params"])
        grads_scanned = jax.grad(lambda p: loss(scanned, p))(stacked["params"])
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=2e-5),
                     grads_scanned, _with_stacked_encoder({"params": grads_loop}, depth)["params"])


def test_unknown_remat_policy_is_refused():
    with pytest.raises(ValueError, match="unknown remat_policy 'everything'"):
        vit.vit("mu/4", remat_policy="everything").init(
            jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)), train=False)
