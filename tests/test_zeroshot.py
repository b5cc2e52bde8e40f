"""Zero-shot prompts: held out from the training captions, readable ImageNet names, the split read
up front, and a text length that holds the captions."""

import os

import pytest
import tensorflow as tf

from contrastive_jax import image_text_pipeline, input_pipeline, tokenizer, train, zeroshot

from test_configs import load_config
from test_image_text import image_text_config
from test_train import REPO

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck"]


def test_evaluation_prompts_never_appear_among_training_captions():
    for templates in (zeroshot.TRAIN_TEMPLATES, zeroshot.EVAL_TEMPLATES):
        assert len(set(templates)) == len(templates) >= 8
        assert all(t.count("{}") == 1 for t in templates)
    training = {c for name in CIFAR10_CLASSES for c in image_text_pipeline.class_captions(name)}
    evaluation = {p for name in CIFAR10_CLASSES
                  for p in zeroshot.prompts(name, zeroshot.EVAL_TEMPLATES)}
    assert not training & evaluation
    assert "a photo of a cat." in evaluation


def test_imagenet_names_are_unique_readable_and_in_tfds_label_order():
    names = zeroshot.wordnet_names()
    ids = list(names)
    assert len(ids) == 1000 and ids == sorted(ids)  # TFDS imagenet2012's label order.
    assert all(zeroshot.WORDNET_ID.match(i) for i in ids)
    readable = [zeroshot.readable(i) for i in ids]
    assert len(set(readable)) == 1000 and all(readable)
    assert not any(zeroshot.WORDNET_ID.match(name) for name in readable)
    assert zeroshot.readable("n01440764") == "tench"
    assert zeroshot.prompts("n01443537", ("a photo of a {}.",)) == ["a photo of a goldfish."]
    assert zeroshot.readable("golden_retriever") == "golden retriever"


def test_a_zero_shot_split_the_source_lacks_is_refused_before_training(tmp_path):
    for split in ("train", "test"):
        for label in ("a", "b"):
            path = tmp_path / "images" / split / label / "0.png"
            path.parent.mkdir(parents=True)
            tf.io.write_file(str(path), tf.io.encode_png(tf.zeros([16, 16, 3], tf.uint8)))
    config = image_text_config("clip", eval_every=0, batch_size=8, **{
        "data.source": f"folder:{tmp_path / 'images'}", "eval.zeroshot_split": "validation"})
    with pytest.raises(input_pipeline.DataError, match="eval.zeroshot_split"):
        train.Trainer(config, str(tmp_path / "run"))


def test_b16_configs_read_imagenet_validation_and_siglip_keeps_real_captions():
    for name in ("clip_vit_b16.py", "siglip_vit_b16.py"):
        config = load_config(os.path.join(REPO, "configs", name))
        assert config.eval.zeroshot_source == "tfds:imagenet2012"
        assert train.zeroshot_split(config) == "validation"
    siglip = load_config(os.path.join(REPO, "configs", "siglip_vit_b16.py"))
    assert siglip.optimizer.weight_decay_mode == "decoupled"
    caption = "a man riding a wave on top of a surfboard in the ocean, at dusk!!"[:62]
    ids = tokenizer.get_tokenizer(siglip.data).tokenize([caption]).numpy()[0]
    assert tokenizer.get_tokenizer(siglip.data).detokenize(ids) == caption
