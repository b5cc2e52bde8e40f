"""Zero-shot prompts: held out from the training captions, readable ImageNet names, the split read
up front, and a text length that holds the captions."""

import os
import re

import pytest
import tensorflow as tf

from contrastive_jax import train
from contrastive_jax.data import sources as data_sources, image_text_pipeline, tokenizer
from contrastive_jax.evaluation import zeroshot
from contrastive_jax.evaluation import image_text
from contrastive_jax.tools import make_imagenet_names

from support import REPO, image_text_config, load_config

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
    """The shipped file, read back: 1,000 rows of WordNet id and name, ids sorted (TFDS
    imagenet2012's label order), names non-empty and distinct even when lowercased."""
    with open(zeroshot.NAMES_FILE, encoding="utf-8") as f:
        rows = [line.rstrip("\n").split("\t") for line in f if not line.startswith("#")]
    assert len(rows) == 1000 and all(len(row) == 2 for row in rows)
    ids, names = zip(*rows)
    assert list(ids) == sorted(set(ids)) and all(re.fullmatch(r"n\d{8}", i) for i in ids)
    assert all(name.strip() == name and name and "_" not in name for name in names)
    assert len({name.lower() for name in names}) == 1000
    assert [zeroshot.readable(i) for i in ids] == list(names)
    assert zeroshot.readable("n01440764") == "tench"
    assert zeroshot.prompts("n01443537", ("a photo of a {}.",)) == ["a photo of a goldfish."]
    assert zeroshot.readable("golden_retriever") == "golden retriever"


def test_names_builder_refuses_names_that_differ_only_in_case():
    lemmas = {"n00000001": "Cardigan, Cardigan Welsh corgi", "n00000002": "cardigan",
              "n00000003": "sea_anemone, anemone"}
    with pytest.raises(ValueError, match="cardigan"):
        make_imagenet_names.class_names(sorted(lemmas), lemmas)
    lemmas["n00000001"] = "Pembroke, Pembroke Welsh corgi"
    assert make_imagenet_names.class_names(sorted(lemmas), lemmas) == [
        "Pembroke", "cardigan", "sea anemone"]


def image_folder(root, splits, labels):
    """folder:ROOT with one 16x16 PNG per label in each split."""
    for split in splits:
        for label in labels:
            path = root / split / label / "0.png"
            path.parent.mkdir(parents=True)
            tf.io.write_file(str(path), tf.io.encode_png(tf.zeros([16, 16, 3], tf.uint8)))
    return f"folder:{root}"


def test_a_zero_shot_split_the_source_lacks_is_refused_before_training(tmp_path):
    source = image_folder(tmp_path / "images", ("train", "test"), ("a", "b"))
    config = image_text_config("clip", eval_every=0, batch_size=8, **{
        "data.source": source, "eval.zeroshot_split": "validation"})
    with pytest.raises(data_sources.DataError, match="eval.zeroshot_split"):
        train.Trainer(config, str(tmp_path / "run"))


def test_trainer_zero_shot_reads_its_split_and_prompts_with_human_names(tmp_path, monkeypatch):
    """Classes named by WordNet ids, a "validation" split and no "test" (data.eval_split): the
    evaluation reads eval.zeroshot_split and embeds every evaluation template filled with the
    classes' names, never their ids."""
    source = image_folder(tmp_path / "images", ("train", "validation"), ("n01440764", "n01443537"))
    config = image_text_config("clip", eval_every=0, batch_size=8, **{
        "data.source": source, "data.eval_split": "test", "eval.zeroshot_split": "validation",
        "eval.batch_size": 8})
    trainer = train.Trainer(config, str(tmp_path / "run"))
    said = []
    get_tokenizer = tokenizer.get_tokenizer

    class Recording:
        def __init__(self, data_config):
            self.inner = get_tokenizer(data_config)

        def tokenize(self, texts):
            said.extend(texts)
            return self.inner.tokenize(texts)

    monkeypatch.setattr(tokenizer, "get_tokenizer", Recording)
    results = trainer.evaluate(trainer.initial_state())
    assert 0.0 <= results["zeroshot_top1"] <= 1.0
    assert sorted(said) == sorted(template.format(name) for name in ("tench", "goldfish")
                                  for template in zeroshot.EVAL_TEMPLATES)


def test_b16_configs_read_imagenet_validation_and_siglip_keeps_real_captions():
    for name in ("clip_vit_b16.py", "siglip_vit_b16.py"):
        config = load_config(os.path.join(REPO, "configs", name))
        assert config.eval.zeroshot_source == "tfds:imagenet2012"
        assert image_text.zeroshot_split(config) == "validation"
    siglip = load_config(os.path.join(REPO, "configs", "siglip_vit_b16.py"))
    assert siglip.optimizer.weight_decay_mode == "decoupled"
    assert siglip.data.tokenizer == "bytes"
    byte_tokenizer = tokenizer.get_tokenizer(siglip.data)
    caption = "A man riding a wave on top of a surfboard in the ocean at dusk"
    assert len(caption.encode()) == 62 == siglip.data.max_text_len - 2
    for text, kept in ((caption, caption), (caption + ".", caption)):
        ids = byte_tokenizer.tokenize([text]).numpy()[0]
        assert byte_tokenizer.detokenize(ids) == kept


@pytest.mark.parametrize("name", ["clip_cifar10.py", "siglip_cifar10.py"])
def test_cifar_configs_keep_every_caption_and_prompt_whole(name):
    config = load_config(os.path.join(REPO, "configs", name))
    texts = [text for label in CIFAR10_CLASSES
             for text in image_text_pipeline.class_captions(label)
             + zeroshot.prompts(label, zeroshot.EVAL_TEMPLATES)]
    byte_tokenizer = tokenizer.get_tokenizer(config.data)
    ids = byte_tokenizer.tokenize(texts).numpy()
    assert [byte_tokenizer.detokenize(row) for row in ids] == texts
