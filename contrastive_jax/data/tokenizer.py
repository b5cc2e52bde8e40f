"""Text -> fixed-length int32 token ids, as TensorFlow ops that run inside tf.data graphs.

Id 0 is always padding (`PAD_ID`): the text model masks attention with `tokens != 0`, so no real
token may take it. Every tokenizer maps a string tensor of any shape [...] to int32
[..., max_len], ends each text with an end-of-text token (kept when the text is truncated, so the
model can read the text's embedding off its last real token) and pads with 0.

- `ByteTokenizer`: UTF-8 bytes, no vocabulary file (the default, `data.tokenizer = "bytes"`).
- `SentencePieceTokenizer`: a SentencePiece model file (`data.tokenizer = "/path/spm.model"`).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import tensorflow as tf

from contrastive_jax.data.sources import DataError

PAD_ID = 0


class Tokenizer(Protocol):
    """What the pipelines and evaluation need of a tokenizer."""

    max_len: int
    vocab_size: int

    def tokenize(self, texts) -> tf.Tensor:
        """string [...] -> int32 [..., max_len]."""

    def detokenize(self, ids) -> str:
        """int [max_len] -> the text, without special tokens and padding."""


def _check_max_len(max_len: int, least: int) -> int:
    if int(max_len) < least:
        raise ValueError(f"max_text_len must be at least {least}, got {max_len}")
    return int(max_len)


def _as_ids(ids) -> np.ndarray:
    ids = np.asarray(ids)
    if ids.ndim != 1:
        raise ValueError(f"detokenize takes one sequence of ids, got shape {ids.shape}")
    return ids.astype(np.int64)


class ByteTokenizer:
    """[BOS] + the text's UTF-8 bytes + [EOS], padded with 0: ids 1 BOS, 2 EOS, byte b -> b + 3.

    A text with more than max_len - 2 bytes is cut at the last character boundary that fits, so
    no multi-byte character is split and EOS stays the last real token.
    """

    BOS_ID = 1
    EOS_ID = 2
    OFFSET = 3  # Id of byte 0.
    vocab_size = 256 + OFFSET

    def __init__(self, max_len: int):
        self.max_len = _check_max_len(max_len, 2)

    def tokenize(self, texts) -> tf.Tensor:
        """string [...] -> int32 [..., max_len]."""
        texts = tf.convert_to_tensor(texts, tf.string)
        room = self.max_len - 2  # Bytes that fit between BOS and EOS.
        # Zero-padded bytes, one more than fits: whether that one starts a character decides
        # whether the cut after `room` bytes is a character boundary.
        raw = tf.cast(tf.io.decode_raw(texts, tf.uint8, fixed_length=room + 1), tf.int32)
        length = tf.strings.length(texts)[..., None]  # In bytes.
        pos = tf.range(room + 1)
        starts_char = tf.bitwise.bitwise_and(raw, 0xC0) != 0x80  # Not a continuation byte.
        boundary = (pos <= length) & ((pos == length) | starts_char | (pos == 0))
        cut = tf.reduce_max(tf.where(boundary, pos, 0), axis=-1, keepdims=True)  # Bytes kept.
        body = tf.where(pos[:room] < cut, raw[..., :room] + self.OFFSET, PAD_ID)
        ids = tf.concat([tf.ones_like(cut) * self.BOS_ID, body, tf.zeros_like(cut)], axis=-1)
        return tf.where(tf.range(self.max_len) == cut + 1, self.EOS_ID, ids)

    def detokenize(self, ids) -> str:
        """int [max_len] -> the text (specials and padding skipped; bad UTF-8 replaced)."""
        data = bytes(int(i) - self.OFFSET for i in _as_ids(ids)
                     if self.OFFSET <= i < self.vocab_size)
        return data.decode("utf-8", errors="replace")


class SentencePieceTokenizer:
    """A SentencePiece model's pieces, ids shifted by +1 so that 0 stays padding.

    Each text becomes its pieces followed by the model's EOS (when the model has one), truncated to
    max_len keeping EOS last, then padded with 0; a model without EOS just ends with the last
    piece that fits. The model's own padding piece, if it has one, is never produced by encoding.
    `vocab_size` is the model's plus one.
    """

    def __init__(self, model_path: str, max_len: int):
        import sentencepiece  # Only this tokenizer needs it.

        self.max_len = _check_max_len(max_len, 1)
        self.model_path = str(model_path)
        if not tf.io.gfile.exists(self.model_path):
            raise DataError(f"SentencePiece model file {self.model_path!r} does not exist "
                            "(data.tokenizer: 'bytes' or the path of a .model file)")
        try:
            with tf.io.gfile.GFile(self.model_path, "rb") as f:  # Local paths and gs://.
                proto = f.read()
        except (tf.errors.OpError, OSError) as e:
            reason = getattr(e, "message", str(e)).strip() or type(e).__name__
            raise DataError(f"cannot read SentencePiece model file {self.model_path!r}: "
                            f"{reason.splitlines()[0]}") from None
        try:
            self._sp = sentencepiece.SentencePieceProcessor(model_proto=proto)
        except RuntimeError:
            raise DataError(f"{self.model_path!r} is not a SentencePiece model file "
                            "(it does not parse as one)") from None
        self.vocab_size = self._sp.vocab_size() + 1
        self._eos = self._sp.eos_id() + 1 if self._sp.eos_id() >= 0 else None

    def _encode(self, texts) -> np.ndarray:
        texts = np.asarray(texts, dtype=object)  # A scalar arrives in graphs as plain bytes.
        flat = texts.reshape(-1).tolist()
        out = np.full((len(flat), self.max_len), PAD_ID, np.int32)
        for row, pieces in zip(out, self._sp.encode(flat)):
            ids = [p + 1 for p in pieces]
            if self._eos is not None:
                ids = ids[:self.max_len - 1] + [self._eos]
            ids = ids[:self.max_len]
            row[:len(ids)] = ids
        return out.reshape(texts.shape + (self.max_len,))

    def tokenize(self, texts) -> tf.Tensor:
        """string [...] -> int32 [..., max_len]."""
        texts = tf.convert_to_tensor(texts, tf.string)
        ids = tf.numpy_function(self._encode, [texts], tf.int32, stateful=False)
        ids.set_shape(texts.shape.concatenate([self.max_len]))
        return ids

    def detokenize(self, ids) -> str:
        """int [max_len] -> the text (padding, EOS and other control pieces skipped)."""
        return self._sp.decode([int(i) - 1 for i in _as_ids(ids) if i != PAD_ID])


def get_tokenizer(data_config) -> Tokenizer:
    """The tokenizer of `data_config.tokenizer` ("bytes" or a path to a SentencePiece .model)."""
    name = str(data_config.get("tokenizer", "bytes"))
    max_len = int(data_config.get("max_text_len", 32))
    if name == "bytes":
        return ByteTokenizer(max_len)
    if name.endswith(".model"):
        return SentencePieceTokenizer(name, max_len)
    raise DataError(f"unknown tokenizer {name!r}: expected 'bytes' or the path of a "
                    "SentencePiece .model file")
