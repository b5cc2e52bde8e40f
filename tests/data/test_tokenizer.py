"""Tests of contrastive_jax.data.tokenizer: byte and SentencePiece tokenisation, eager and in tf.data."""

import itertools

import ml_collections
import numpy as np
import pytest
import sentencepiece
import tensorflow as tf

from contrastive_jax.data import tokenizer as tok
from contrastive_jax.data.sources import DataError

TEXTS = ["a photo of a cat.", "café crème brûlée", "東京の夜景", "dogs 🐕 and cats 🐈", "", "x"]


def _byte_reference(text: str, max_len: int) -> np.ndarray:
    """[BOS] + bytes + 3 + [EOS] + padding, for a text that fits."""
    data = list(text.encode("utf-8"))
    assert len(data) + 2 <= max_len
    ids = [1] + [b + 3 for b in data] + [2]
    return np.array(ids + [0] * (max_len - len(ids)), np.int32)


def _ids(tokenizer, text) -> np.ndarray:
    return tokenizer.tokenize(tf.constant(text)).numpy()


# ------------------------------------------------------------------------------------------------
# ByteTokenizer.


def test_bytes_exact_ids_and_padding():
    t = tok.ByteTokenizer(12)
    ids = _ids(t, "hé!")
    np.testing.assert_array_equal(ids, _byte_reference("hé!", 12))
    np.testing.assert_array_equal(ids[:6], [1, ord("h") + 3, 0xC3 + 3, 0xA9 + 3, ord("!") + 3, 2])
    assert ids.dtype == np.int32 and (ids[6:] == tok.PAD_ID).all()
    np.testing.assert_array_equal(_ids(t, ""), [1, 2] + [0] * 10)
    assert t.vocab_size == 259 and ids.max() < t.vocab_size


@pytest.mark.parametrize("text", TEXTS)
def test_bytes_round_trip(text):
    t = tok.ByteTokenizer(64)
    ids = _ids(t, text)
    np.testing.assert_array_equal(ids, _byte_reference(text, 64))
    assert t.detokenize(ids) == text


def test_bytes_keep_nul_and_never_emit_padding_inside_text():
    ids = _ids(tok.ByteTokenizer(8), "a\0b")
    np.testing.assert_array_equal(ids, [1, 100, 3, 101, 2, 0, 0, 0])


@pytest.mark.parametrize("max_len", range(2, 16))
def test_bytes_truncation_keeps_eos_and_whole_characters(max_len):
    t = tok.ByteTokenizer(max_len)
    for text in TEXTS:
        ids = _ids(t, text)
        real = ids[ids != tok.PAD_ID]
        assert real[0] == t.BOS_ID and real[-1] == t.EOS_ID
        assert (ids[len(real):] == tok.PAD_ID).all()  # Padding only after EOS.
        kept = bytes(int(i) - 3 for i in real[1:-1])
        decoded = kept.decode("utf-8")  # Raises if a character were split.
        assert text.startswith(decoded)
        # As many whole characters as fit: the next one would not.
        if decoded != text:
            assert len(text[:len(decoded) + 1].encode("utf-8")) > max_len - 2


def test_bytes_batch_equals_per_string():
    t = tok.ByteTokenizer(10)
    batch = t.tokenize(tf.constant(TEXTS)).numpy()
    assert batch.shape == (len(TEXTS), 10) and batch.dtype == np.int32
    for row, text in zip(batch, TEXTS):
        np.testing.assert_array_equal(row, _ids(t, text))
    grid = t.tokenize(tf.constant([TEXTS[:3], TEXTS[3:]])).numpy()
    np.testing.assert_array_equal(grid.reshape(len(TEXTS), 10), batch)


def _check_in_tf_data(t):
    eager = t.tokenize(tf.constant(TEXTS)).numpy()
    per_example = tf.data.Dataset.from_tensor_slices(TEXTS).map(t.tokenize)
    assert per_example.element_spec.shape == (t.max_len,)
    np.testing.assert_array_equal(np.stack(list(per_example.as_numpy_iterator())), eager)
    batched = tf.data.Dataset.from_tensor_slices(TEXTS).batch(4).map(t.tokenize)
    np.testing.assert_array_equal(np.concatenate(list(batched.as_numpy_iterator())), eager)


def test_bytes_in_tf_data_equals_eager():
    _check_in_tf_data(tok.ByteTokenizer(9))


def test_bytes_max_len_too_small():
    with pytest.raises(ValueError, match="at least 2"):
        tok.ByteTokenizer(1)


# ------------------------------------------------------------------------------------------------
# SentencePieceTokenizer.

WORDS = ["cat", "dog", "bird", "horse", "truck", "ship", "frog", "deer"]
PLACES = ["on the grass", "in the sky", "near the river", "under a tree", "at the beach"]
SENTENCES = [f"a photo of a {a} {w} {p}."
             for w, p, a in itertools.product(WORDS, PLACES, ["small", "red", "happy"])]


@pytest.fixture(scope="module")
def spm_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("spm") / "tiny.model"
    with open(path, "wb") as f:
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=iter(SENTENCES), model_writer=f, vocab_size=100, model_type="bpe",
            hard_vocab_limit=False, minloglevel=2)
    return str(path)


def test_sentencepiece_round_trip_and_shift(spm_path):
    t = tok.SentencePieceTokenizer(spm_path, 32)
    sp = sentencepiece.SentencePieceProcessor(model_file=spm_path)
    assert t.vocab_size == sp.vocab_size() + 1
    for text in ["a photo of a red cat near the river.", "a happy frog."]:
        ids = _ids(t, text)
        pieces = sp.encode(text)
        n = len(pieces) + 1
        np.testing.assert_array_equal(ids[:n], [p + 1 for p in pieces] + [sp.eos_id() + 1])
        assert (ids[:n] != tok.PAD_ID).all() and (ids[n:] == tok.PAD_ID).all()
        assert ids.max() < t.vocab_size
        assert t.detokenize(ids) == text


def test_sentencepiece_truncation_keeps_eos(spm_path):
    t = tok.SentencePieceTokenizer(spm_path, 5)
    sp = sentencepiece.SentencePieceProcessor(model_file=spm_path)
    text = "a photo of a small horse at the beach."
    assert len(sp.encode(text)) > 5
    ids = _ids(t, text)
    np.testing.assert_array_equal(ids, [p + 1 for p in sp.encode(text)[:4]] + [sp.eos_id() + 1])
    assert SENTENCES[0].startswith(t.detokenize(_ids(t, SENTENCES[0])))


def test_sentencepiece_batch_and_tf_data(spm_path):
    t = tok.SentencePieceTokenizer(spm_path, 12)
    batch = t.tokenize(tf.constant(TEXTS)).numpy()
    assert batch.shape == (len(TEXTS), 12) and batch.dtype == np.int32
    for row, text in zip(batch, TEXTS):
        np.testing.assert_array_equal(row, _ids(t, text))
    _check_in_tf_data(t)


def test_sentencepiece_bad_files_are_named(tmp_path):
    missing = tmp_path / "nowhere.model"
    with pytest.raises(DataError, match=f"{missing}.*does not exist"):
        tok.SentencePieceTokenizer(str(missing), 8)
    junk = tmp_path / "junk.model"
    junk.write_bytes(b"not a model")
    with pytest.raises(DataError, match=f"{junk}.*not a SentencePiece model"):
        tok.SentencePieceTokenizer(str(junk), 8)


def test_get_tokenizer(spm_path):
    cfg = ml_collections.ConfigDict({"max_text_len": 7})
    t = tok.get_tokenizer(cfg)
    assert isinstance(t, tok.ByteTokenizer) and t.max_len == 7
    cfg.tokenizer = spm_path
    t = tok.get_tokenizer(cfg)
    assert isinstance(t, tok.SentencePieceTokenizer) and t.max_len == 7
    assert tok.get_tokenizer(ml_collections.ConfigDict()).max_len == 32
    cfg.tokenizer = "wordpiece"
    with pytest.raises(DataError, match="unknown tokenizer 'wordpiece'"):
        tok.get_tokenizer(cfg)
