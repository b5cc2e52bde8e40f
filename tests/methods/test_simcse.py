"""SimCSE for the text tower of CLIP and SigLIP: dropout off leaves the tower and the CLIP loss as
they were, dropout on makes two different views of one caption and different masks on every
device, the SimCSE term matches a numpy reference, and settings that cannot work are refused."""

import functools

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from contrastive_jax import config_checks, losses, methods, parallel, train_step
from contrastive_jax.methods import clip, image_text
from contrastive_jax.models import text

from support import image_text_config

N = 4
LENGTH = 24


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def numpy_cross_entropy_of_diagonal(logits):
    logits = logits - logits.max(axis=1, keepdims=True)
    log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return -np.mean(np.diag(log_probs))


def numpy_info_nce(query, key, temperature):
    return numpy_cross_entropy_of_diagonal(unit(query) @ unit(key).T / temperature)


def random_pairs(n=N, seed=0):
    rng = np.random.default_rng(seed)
    return {"image": rng.random((n, 16, 16, 3), np.float32),
            "text": rng.integers(1, 259, (n, LENGTH)).astype(np.int32)}


@functools.cache
def initial_params(method):
    """The tiny towers' variables, which neither dropout nor SimCSE changes. SigLIP's are
    CLIP's with a bias (an initialisation compiled once, not twice)."""
    if method == "siglip":
        clip_variables = initial_params("clip")
        bias = np.float32(image_text_config("siglip").loss.init_bias)
        return {**clip_variables, "params": {**clip_variables["params"], "bias": bias}}
    config = image_text_config(method)
    model = clip.build_model(config, 10, None)
    return jax.jit(lambda: clip.METHOD.init_variables(model, config, jax.random.PRNGKey(0)))()


def setup(method="clip", **overrides):
    """A tiny config, the method module, its model and the initial variables."""
    config = config_checks.resolve_steps(image_text_config(method, **overrides), 64)
    module = methods.get(method)
    return config, module, module.build_model(config, 10, None), initial_params(method)


def tower(dropout_rate):
    return text.text_transformer(vocab_size=259, max_len=LENGTH, width=32, depth=1, num_heads=2,
                                 dropout_rate=dropout_rate)


def test_text_tower_without_dropout_is_the_deterministic_tower():
    """The parameter tree does not depend on the rate; at rate 0 a training call (given a
    dropout key) equals the inference call bit for bit, and so does the inference call of a
    tower with dropout."""
    tokens = random_pairs()["text"]
    init = lambda rate: tower(rate).init(jax.random.PRNGKey(0), tokens, train=False)
    assert jax.eval_shape(lambda: init(0.0)) == jax.eval_shape(lambda: init(0.1))

    @jax.jit
    def three_calls():
        variables, key = init(0.0), {"dropout": jax.random.PRNGKey(1)}
        return (tower(0.0).apply(variables, tokens, train=False),
                tower(0.0).apply(variables, tokens, train=True, rngs=key),
                tower(0.1).apply(variables, tokens, train=False))

    inference, training, inference_of_dropout_tower = three_calls()
    np.testing.assert_array_equal(training, inference)
    np.testing.assert_array_equal(inference_of_dropout_tower, inference)


def test_dropout_makes_two_different_views_of_one_caption():
    """pair_parts with SimCSE on sends each caption through the tower twice in one batch: the
    views differ from each other and from the inference embedding, and one key gives the same
    views again."""
    config, _, model, variables = setup(**{"model.text_dropout": 0.1, "loss.simcse_weight": 1.0})
    batch = random_pairs()

    @jax.jit
    def views_and_inference(key):
        views, _ = clip.loss_parts(model, config, None, key).embed(variables["params"], {},
                                                                   batch)
        return views, clip.METHOD.embed_texts(model)(variables, batch["text"])

    views, inference = views_and_inference(jax.random.PRNGKey(3))
    view1, view2 = np.asarray(views["text"]), np.asarray(views["text_view2"])
    for a, b in ((view1, view2), (view1, inference), (view2, inference)):
        assert np.abs(a - b).min(axis=1).max() > 1e-4  # Every row differs.
    np.testing.assert_array_equal(views_and_inference(jax.random.PRNGKey(3))[0]["text"], view1)


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_every_device_draws_its_own_dropout_masks(dropout):
    """8 devices, the same captions and step key on each (shard_map): with dropout their text
    embeddings differ from device to device, without it they agree exactly."""
    config, _, model, variables = setup(**{"model.text_dropout": dropout})
    pairs = random_pairs(n=2)
    tiled = jax.tree.map(lambda x: np.concatenate([x] * jax.device_count()), pairs)

    def per_device(params, batch, rng):
        key = image_text.dropout_key(rng, parallel.AXIS)
        return clip.loss_parts(model, config, parallel.AXIS, key).embed(params, {}, batch)[0]

    mesh = parallel.make_mesh()
    run = parallel.wrap(per_device, "shard_map", mesh, in_specs=(P(), P(parallel.AXIS), P()),
                        out_specs=P(parallel.AXIS))
    texts = np.asarray(run(variables["params"],
                           parallel.host_batch_to_devices(tiled, "shard_map", mesh),
                           jax.random.PRNGKey(5))["text"]).reshape(jax.device_count(), 2, -1)
    differences = np.abs(texts[1:] - texts[0]).max(axis=(1, 2))
    if dropout:
        assert differences.min() > 1e-4, differences
    else:
        np.testing.assert_array_equal(differences, 0.0)


@pytest.mark.parametrize("method", ["clip", "siglip"])
def test_simcse_term_matches_numpy(method):
    """loss_fn = the image-text loss on (image, text view 1) + weight * the one-directional
    InfoNCE of view 1 against view 2 at temperature 0.05, the views being those of the step
    key's masks."""
    weight = 0.7
    config, module, model, variables = setup(method, **{
        "model.text_dropout": 0.1, "loss.simcse_weight": weight})
    batch, rng = random_pairs(), jax.random.PRNGKey(2)
    params = variables["params"]
    state = train_step.TrainState(step=0, params=params, batch_stats={}, opt_state=(), extra={})

    @jax.jit
    def loss_and_views():
        loss, (_, metrics) = module.loss_fn(model, config, params, state, batch, rng, None)
        views, _ = module.loss_parts(model, config, None, rng).embed(params, {}, batch)
        return loss, metrics, views

    loss, metrics, views = loss_and_views()
    want_simcse = numpy_info_nce(np.asarray(views["text"]), np.asarray(views["text_view2"]),
                                 config.loss.simcse_temperature)
    scale = np.exp(params["log_scale"])
    if method == "clip":
        base = losses.clip_loss(views["image"], views["text"], scale)
    else:
        base = losses.siglip_loss(views["image"], views["text"], scale, params["bias"])
    np.testing.assert_allclose(metrics["simcse_loss"], want_simcse, rtol=1e-5)
    np.testing.assert_allclose(loss, base + weight * want_simcse, rtol=1e-5)


def test_simcse_weight_zero_leaves_the_clip_loss_unchanged():
    """The default config (no dropout, weight 0): CLIP's loss is numpy's symmetric
    cross-entropy of the inference embeddings, and no SimCSE term is reported."""
    config, _, model, variables = setup()
    assert config.loss.simcse_weight == 0.0 and config.model.text_dropout == 0.0
    batch = random_pairs()
    params = variables["params"]
    state = train_step.TrainState(step=0, params=params, batch_stats={}, opt_state=(), extra={})

    @jax.jit
    def loss_and_embeddings():
        loss, (_, metrics) = clip.loss_fn(model, config, params, state, batch,
                                          jax.random.PRNGKey(0), None)
        return (loss, metrics, clip.METHOD.embed_images(model)(variables, batch["image"]),
                clip.METHOD.embed_texts(model)(variables, batch["text"]))

    loss, metrics, image, texts = loss_and_embeddings()
    logits = np.exp(params["log_scale"]) * unit(np.asarray(image)) @ unit(np.asarray(texts)).T
    want = 0.5 * (numpy_cross_entropy_of_diagonal(logits)
                  + numpy_cross_entropy_of_diagonal(logits.T))
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    assert "simcse_loss" not in metrics


@pytest.mark.parametrize("overrides,message", [
    ({"loss.simcse_weight": 0.5}, "needs config.model.text_dropout > 0"),
    ({"model.text_dropout": 0.1, "loss.simcse_weight": 0.5, "loss.simcse_temperature": 0.0},
     "simcse_temperature must be > 0"),
    ({"model.text_dropout": 0.1, "grad_cache_chunks": 2}, "text_dropout > 0 .* gradient"),
    ({"model.text_dropout": 0.1, "parallel": "fsdp"}, "text_dropout > 0 .*fsdp"),
    ({"model.text_dropout": 1.0}, r"text_dropout must be in \[0, 1\)"),
])
def test_settings_that_cannot_work_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        train_step.validate(image_text_config("siglip", **overrides))
