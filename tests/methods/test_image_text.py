"""CLIP and SigLIP in the train step on 8 simulated devices: the two wrappers agree, SigLIP's ring
and all_gather agree in loss and gradients under both, the scale clamps; zero-shot and retrieval
metrics match brute-force numpy, and the sharded evaluation matches one computed on one device."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from contrastive_jax import methods, parallel, train, train_step
from contrastive_jax.evaluation import functions as evaluate, zeroshot
from contrastive_jax.data import image_text_pipeline, tokenizer
from contrastive_jax.logging import read_metrics
from contrastive_jax.methods import clip, image_text

from support import assert_trees_equal, final_params, image_text_config


def test_clip_pmap_and_shard_map_give_the_same_losses_and_parameters(tmp_path):
    losses, params = {}, {}
    for kind in ("pmap", "shard_map"):
        workdir = str(tmp_path / kind)
        train.train_and_evaluate(image_text_config("clip", parallel=kind), workdir)
        losses[kind] = [row["loss"] for row in read_metrics(workdir) if "loss" in row]
        params[kind] = final_params(workdir)[1]
    assert len(losses["pmap"]) == 3 and losses["pmap"][-1] < losses["pmap"][0]
    np.testing.assert_allclose(losses["pmap"], losses["shard_map"], rtol=1e-5)
    assert_trees_equal(params["pmap"], params["shard_map"], rtol=1e-4, atol=1e-6)


def per_device_loss_and_grads(config, kind):
    """The wrapped `(state, batch) -> (pmean loss, pmean gradients)` of the config's method."""
    method = methods.get(config.method)
    model = method.build_model(config, 10, parallel.AXIS)

    def loss_and_grads(state, batch):
        def loss(params):
            value, _ = method.loss_fn(model, config, params, state, batch,
                                      jax.random.PRNGKey(0), parallel.AXIS)
            return value
        value, grads = jax.value_and_grad(loss)(state.params)
        return jax.lax.pmean(value, parallel.AXIS), jax.lax.pmean(grads, parallel.AXIS)

    P = jax.sharding.PartitionSpec
    return model, parallel.wrap(loss_and_grads, kind, parallel.make_mesh(),
                                in_specs=(P(), P(parallel.AXIS)), out_specs=(P(), P()))


def test_siglip_ring_all_gather_pmap_and_shard_map_agree_in_a_train_step():
    """Same state and batch, 8 devices: the loss and every parameter's gradient (towers, scale,
    bias) agree between the ring and all_gather implementations under both wrappers."""
    rng = np.random.default_rng(0)
    batch = {"image": rng.random((16, 16, 16, 3), np.float32),
             "text": rng.integers(1, 259, (16, 24)).astype(np.int32)}
    mesh, method = parallel.make_mesh(), methods.get("siglip")
    results = {}
    for impl in ("ring", "all_gather"):
        config = image_text_config("siglip", **{"loss.siglip_impl": impl,
                                                "loss.init_bias": -2.0})
        for kind in ("pmap", "shard_map"):
            model, run = per_device_loss_and_grads(config, kind)
            state = jax.device_get(jax.jit(lambda: train_step.create_train_state(
                method, model, config, optax.sgd(0.1), jax.random.PRNGKey(0)))())
            loss, grads = run(parallel.replicate(state, kind, mesh),
                              parallel.host_batch_to_devices(batch, kind, mesh))
            results[impl, kind] = (parallel.unreplicate(loss, kind),
                                   parallel.unreplicate(grads, kind))
    want_loss, want_grads = results["all_gather", "shard_map"]
    largest = max(float(np.abs(g).max()) for g in jax.tree.leaves(want_grads))
    assert abs(float(want_grads["bias"])) > 1e-3  # The bias does get a gradient.
    for key, (loss, grads) in results.items():
        np.testing.assert_allclose(loss, want_loss, rtol=1e-6, err_msg=str(key))
        assert_trees_equal(grads, want_grads, rtol=1e-4,
                           atol=1e-5 * largest)  # float32 sums in another order


def test_clip_scale_is_clamped_after_the_update():
    config = image_text_config("clip")
    state = train_step.TrainState(step=jnp.zeros((), jnp.int32), params={
        "log_scale": jnp.log(150.0), "w": jnp.ones(2)}, batch_stats={}, opt_state=(), extra={})
    clamped = clip.after_update(config, state)
    assert float(clamped.params["log_scale"]) == pytest.approx(math.log(100.0))
    kept = clip.after_update(config, state.replace(params={"log_scale": jnp.log(20.0),
                                                          "w": jnp.ones(2)}))
    assert float(kept.params["log_scale"]) == pytest.approx(math.log(20.0))


def brute_force_recall(images, texts, text_to_image, k):
    """Recall@k by sorting every similarity list (numpy, float64)."""
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
    similarity = unit(images.astype(np.float64)) @ unit(texts.astype(np.float64)).T
    i2t = [bool(set(np.argsort(-row)[:k]) & set(np.flatnonzero(text_to_image == i)))
           for i, row in enumerate(similarity)]
    t2i = [text_to_image[j] in np.argsort(-similarity[:, j])[:k] for j in range(len(texts))]
    return np.mean(i2t), np.mean(t2i)


def test_retrieval_recall_matches_brute_force():
    rng = np.random.default_rng(0)
    images = rng.normal(size=(40, 8)).astype(np.float32)
    text_to_image = np.concatenate([np.arange(40), rng.integers(0, 40, 60)])
    texts = images[text_to_image] + rng.normal(scale=1.5, size=(100, 8)).astype(np.float32)
    results = evaluate.retrieval_recall(images, texts, text_to_image, ks=(1, 5, 10),
                                        chunk_size=16)
    for k in (1, 5, 10):
        i2t, t2i = brute_force_recall(images, texts, text_to_image, k)
        assert results[f"i2t_recall@{k}"] == pytest.approx(i2t)
        assert results[f"t2i_recall@{k}"] == pytest.approx(t2i)
    assert 0 < results["i2t_recall@1"] < results["i2t_recall@10"] < 1


def test_zero_shot_matches_brute_force():
    """Prompt ensembles: each prompt normalised, averaged, normalised; argmax of cosines."""
    rng = np.random.default_rng(1)
    prompts = rng.normal(size=(5, 3, 8)).astype(np.float32)
    labels = rng.integers(0, 5, 200)
    images = prompts[labels].mean(1) + rng.normal(scale=2.0, size=(200, 8)).astype(np.float32)
    unit_prompts = prompts / np.linalg.norm(prompts, axis=-1, keepdims=True)
    classes = unit_prompts.mean(1)
    classes /= np.linalg.norm(classes, axis=-1, keepdims=True)
    predictions = [np.argmax([np.dot(image, c) / np.linalg.norm(image) for c in classes])
                   for image in images]
    want = np.mean(np.asarray(predictions) == labels)
    got = evaluate.zero_shot_top1(images, labels, evaluate.zero_shot_classifier(prompts))
    assert got == pytest.approx(want)
    assert 0.2 < got < 1.0


@pytest.mark.parametrize("kind", ["pmap", "shard_map"])
def test_sharded_evaluation_equals_one_device(captions_tfds_dir, tmp_path, kind):  # noqa: F811
    """Trainer.evaluate on 8 devices (3 captioned, labelled images padded to a batch of 8)
    equals retrieval and zero-shot computed here on one device from the same parameters."""
    config = image_text_config("clip", parallel=kind, **{
        "data.source": "tfds:contrastive_jax_captions_tiny:1.0.0", "data.data_dir": captions_tfds_dir,
        "data.caption_key": "captions/text", "data.image_size": 8, "eval.batch_size": 8,
        "model.variant": "mu/2"})
    trainer = train.Trainer(config, str(tmp_path / "run"))
    state = trainer.initial_state()
    results = trainer.evaluate(state)
    host = parallel.unreplicate({"params": state.params}, kind)
    model = clip.build_model(config, 3, None)
    batch = next(image_text_pipeline.eval_iterator(config.data, "test", global_batch_size=8,
                                                   process_index=0, process_count=1))
    images = np.asarray(clip.METHOD.embed_images(model)(host, batch["image"][:3]))
    valid = np.any(batch["text"][:3] != 0, axis=-1)
    image_of_text, caption = np.nonzero(valid)
    texts = np.asarray(clip.METHOD.embed_texts(model)(host, batch["text"][:3][image_of_text, caption]))
    for k in (1, 5):
        i2t, t2i = brute_force_recall(images, texts, image_of_text, k)
        assert results[f"i2t_recall@{k}"] == pytest.approx(i2t)
        assert results[f"t2i_recall@{k}"] == pytest.approx(t2i)
    names = ["red square", "green field", "blue sea"]
    prompts = [p for name in names for p in zeroshot.prompts(name, zeroshot.EVAL_TEMPLATES)]
    tokens = np.asarray(tokenizer.get_tokenizer(config.data).tokenize(prompts))
    prompt_embeddings = np.asarray(clip.METHOD.embed_texts(model)(host, tokens)).reshape(3, -1, 16)
    want = evaluate.zero_shot_top1(images, np.arange(3),
                                   evaluate.zero_shot_classifier(prompt_embeddings))
    assert results["zeroshot_top1"] == pytest.approx(want)


def test_model_and_tokenizer_agree_on_the_byte_vocabulary():
    """image_text keeps the byte vocabulary size so models build without TensorFlow."""
    assert image_text.BYTE_VOCAB_SIZE == tokenizer.ByteTokenizer.vocab_size
