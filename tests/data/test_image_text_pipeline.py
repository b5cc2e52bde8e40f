"""Tests of contrastive_jax.data.image_text_pipeline on an image folder, the demo digits and a tiny TFDS
caption dataset.

Every image is a solid colour that names its example (folder: 20 * label; TFDS: 40 * (i + 1)), so
a batch's images tell which examples it holds, and its captions can be checked against them.
"""

import ml_collections
import numpy as np
import pytest
import sentencepiece
import tensorflow as tf

from contrastive_jax.data import image_text_pipeline as itp
from contrastive_jax.evaluation import zeroshot
from contrastive_jax.data import tokenizer as tok
from contrastive_jax.data.sources import DataError

from tiny_tfds import CAPTIONS, CLASS_NAMES

SIZE = 16
MAX_LEN = 48
NUM_CLASSES = 12


def _config(source, **overrides):
    cfg = ml_collections.ConfigDict(dict(
        source=source, data_dir="", image_size=SIZE, train_split="train", eval_split="test",
        crop_area_min=0.5, tokenizer="bytes", max_text_len=MAX_LEN, caption_key=""))
    cfg.update(overrides)
    return cfg


def _take(iterator, k):
    return [next(iterator) for _ in range(k)]


def _colour(images):
    """The solid colour (0-255) of each image in [n, S, S, 3]."""
    return np.round(images.mean(axis=(1, 2, 3)) * 255)


def _texts(ids):
    return [tok.ByteTokenizer(MAX_LEN).detokenize(row) for row in ids]


def _assert_batches_equal(a, b):
    assert set(a) == set(b)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])


def test_class_captions_fill_every_training_template():
    captions = itp.class_captions("golden_retriever")
    assert len(set(captions)) == len(zeroshot.TRAIN_TEMPLATES)
    assert all("golden retriever" in c and "_" not in c for c in captions)
    assert itp.class_captions("cat")[0] == zeroshot.TRAIN_TEMPLATES[0].format("cat")


# ------------------------------------------------------------------------------------------------
# Class-name captions: an image folder and the demo digits.


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """12 training classes class_00 ... class_11 of one image each."""
    root = tmp_path_factory.mktemp("images")
    for label in range(NUM_CLASSES):
        path = root / "train" / f"class_{label:02d}" / "000.jpg"
        path.parent.mkdir(parents=True)
        image = tf.fill([SIZE, SIZE, 3], tf.constant(20 * label, tf.uint8))
        tf.io.write_file(str(path), tf.io.encode_jpeg(image, quality=100))
    return root


def test_folder_batches_hold_captions_of_their_class(tree):
    cfg = _config(f"folder:{tree}")
    batches = _take(itp.train_iterator(cfg, global_batch_size=6, seed=0, process_index=0,
                                       process_count=1), 8)  # 4 epochs.
    captions_of = {}
    for batch in batches:
        assert set(batch) == {"image", "text", "label"}
        assert batch["image"].shape == (6, SIZE, SIZE, 3) and batch["image"].dtype == np.float32
        assert 0 <= batch["image"].min() and batch["image"].max() <= 1
        assert batch["text"].shape == (6, MAX_LEN) and batch["text"].dtype == np.int32
        assert batch["label"].shape == (6,) and batch["label"].dtype == np.int32
        np.testing.assert_allclose(_colour(batch["image"]), 20 * batch["label"], atol=2)
        for label, text in zip(batch["label"], _texts(batch["text"])):
            assert text in itp.class_captions(f"class_{label:02d}"), (label, text)
            captions_of.setdefault(int(label), set()).add(text)
    assert sorted(captions_of) == list(range(NUM_CLASSES))
    assert max(len(c) for c in captions_of.values()) > 1  # Templates are drawn per epoch.


def test_folder_resume_and_disjoint_hosts(tree):
    cfg = _config(f"folder:{tree}")
    kwargs = dict(global_batch_size=4, seed=7, process_count=2)
    per_host = [_take(itp.train_iterator(cfg, process_index=p, **kwargs), 6) for p in range(2)]
    # 6 examples per host, 2 per host batch: 3 batches per epoch.
    epoch0 = [{int(v) for b in host[:3] for v in b["label"]} for host in per_host]
    assert len(epoch0[0]) == len(epoch0[1]) == 6 and not epoch0[0] & epoch0[1]
    resumed = _take(itp.train_iterator(cfg, process_index=1, start_step=2, **kwargs), 4)
    for a, b in zip(per_host[1][2:], resumed):  # Crosses an epoch boundary.
        _assert_batches_equal(a, b)


def test_demo_captions_name_the_digit():
    cfg = _config("demo")
    batch = next(itp.train_iterator(cfg, global_batch_size=8, seed=1, process_index=0,
                                    process_count=1))
    assert batch["image"].shape == (8, SIZE, SIZE, 3) and batch["text"].shape == (8, MAX_LEN)
    for label, text in zip(batch["label"], _texts(batch["text"])):
        assert text in itp.class_captions(str(label))


def test_class_captions_have_no_retrieval_eval(tree):
    cfg = _config(f"folder:{tree}")
    assert not itp.has_captions(cfg)
    with pytest.raises(DataError, match="retrieval needs a caption dataset"):
        itp.eval_iterator(cfg, "train", global_batch_size=2, process_index=0, process_count=1)
    cfg.caption_key = "caption"
    with pytest.raises(DataError, match="caption_key='caption' needs a 'tfds:' source"):
        itp.train_iterator(cfg, global_batch_size=2, seed=0, process_index=0, process_count=1)


# ------------------------------------------------------------------------------------------------
# TFDS captions.

def _tfds_config(captions_tfds_dir, **overrides):
    overrides = {"caption_key": "captions/text", **overrides}
    return _config("tfds:contrastive_jax_captions_tiny:1.0.0", data_dir=captions_tfds_dir, image_size=8,
                   **overrides)


def _example(images):
    """The example index each solid-colour TFDS image shows."""
    return (_colour(images) / 40 - 1).round().astype(int).tolist()


def test_tfds_captions_train(captions_tfds_dir):
    cfg = _tfds_config(captions_tfds_dir, label_key="none")  # Unlabelled, as coco_captions is.
    assert itp.has_captions(cfg)
    kwargs = dict(global_batch_size=2, seed=3, process_count=2)
    per_host = [_take(itp.train_iterator(cfg, process_index=p, **kwargs), 12) for p in range(2)]
    chosen = {}
    for host in per_host:
        for batch in host:
            assert set(batch) == {"image", "text"}
            assert batch["image"].shape == (1, 8, 8, 3) and batch["text"].shape == (1, MAX_LEN)
            for i, text in zip(_example(batch["image"]), _texts(batch["text"])):
                assert text in CAPTIONS[i], (i, text)
                chosen.setdefault(i, set()).add(text)
    assert sorted(chosen) == [0, 1, 2]
    assert all(len(c) > 1 for c in chosen.values())  # Captions are drawn per epoch.
    hosts = [set(_example(np.concatenate([b["image"] for b in host]))) for host in per_host]
    assert not hosts[0] & hosts[1] and hosts[0] | hosts[1] == {0, 1, 2}
    for p in range(2):
        resumed = _take(itp.train_iterator(cfg, process_index=p, start_step=3, **kwargs), 4)
        for a, b in zip(per_host[p][3:], resumed):
            _assert_batches_equal(a, b)


def test_tfds_labels_and_class_captions(captions_tfds_dir):
    batch = next(itp.train_iterator(_tfds_config(captions_tfds_dir), global_batch_size=3, seed=0,
                                    process_index=0, process_count=1))
    assert set(batch) == {"image", "text", "label"}
    assert _example(batch["image"]) == batch["label"].tolist()
    for label, text in zip(batch["label"], _texts(batch["text"])):
        assert text in CAPTIONS[label]
    cfg = _tfds_config(captions_tfds_dir, caption_key="")
    batch = next(itp.train_iterator(cfg, global_batch_size=3, seed=0, process_index=0,
                                    process_count=1))
    for label, text in zip(batch["label"], _texts(batch["text"])):
        assert text in itp.class_captions(CLASS_NAMES[label])
    cfg.label_key = "none"
    with pytest.raises(DataError, match="no label feature 'none'"):
        itp.train_iterator(cfg, global_batch_size=3, seed=0, process_index=0, process_count=1)


def test_tfds_retrieval_eval(captions_tfds_dir):
    cfg = _tfds_config(captions_tfds_dir)
    per_host = [list(itp.eval_iterator(cfg, "test", global_batch_size=4, captions_per_image=3,
                                       process_index=p, process_count=2)) for p in range(2)]
    assert len(per_host[0]) == len(per_host[1]) == 1
    seen, padding = [], 0
    for host in per_host:
        batch = host[0]
        assert set(batch) == {"image", "text", "mask"}
        assert batch["image"].shape == (2, 8, 8, 3) and batch["text"].shape == (2, 3, MAX_LEN)
        mask = batch["mask"]
        padding += int((~mask).sum())
        assert (batch["image"][~mask] == 0).all() and (batch["text"][~mask] == 0).all()
        for i, texts in zip(_example(batch["image"][mask]), batch["text"][mask]):
            seen.append(i)
            expected = CAPTIONS[i][:3]
            assert _texts(texts)[:len(expected)] == expected
            assert (texts[len(expected):] == tok.PAD_ID).all()  # Missing captions: padding.
    assert sorted(seen) == [0, 1, 2] and padding == 1


def test_tfds_sentencepiece_captions(captions_tfds_dir, tmp_path):
    model = tmp_path / "captions.model"
    with open(model, "wb") as f:
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=iter([c for cs in CAPTIONS for c in cs] * 4), model_writer=f,
            vocab_size=40, model_type="bpe", hard_vocab_limit=False, minloglevel=2)
    cfg = _tfds_config(captions_tfds_dir, tokenizer=str(model), max_text_len=24)
    t = tok.get_tokenizer(cfg)
    batch = next(itp.train_iterator(cfg, global_batch_size=3, seed=0, process_index=0,
                                    process_count=1))
    assert batch["text"].shape == (3, 24) and batch["text"].max() < t.vocab_size
    for label, ids in zip(batch["label"], batch["text"]):
        assert t.detokenize(ids) in CAPTIONS[label]
    (evals,) = itp.eval_iterator(cfg, "test", global_batch_size=3, captions_per_image=2,
                                 process_index=0, process_count=1)
    assert evals["text"].shape == (3, 2, 24)
    for i, texts in zip(_example(evals["image"]), evals["text"]):
        assert [t.detokenize(ids) for ids in texts] == CAPTIONS[i][:2]


def test_tfds_unknown_caption_key_is_named(captions_tfds_dir):
    cfg = _tfds_config(captions_tfds_dir, caption_key="captions/txt")
    with pytest.raises(DataError, match="no feature 'captions/txt'.*captions/text"):
        itp.train_iterator(cfg, global_batch_size=2, seed=0, process_index=0, process_count=1)
    cfg.caption_key = "label"
    with pytest.raises(DataError, match="'label'.*not a text"):
        itp.eval_iterator(cfg, "test", global_batch_size=2, process_index=0, process_count=1)
