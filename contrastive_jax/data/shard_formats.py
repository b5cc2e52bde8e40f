"""The two layouts img2dataset writes image-text shards in, read in Python and inside tf.data.

- `wds`: webdataset tar files. A sample's members share a key (the member name up to the first
  dot of its base name) and differ by extension: `{key}.jpg` (or .jpeg, .png, .webp), `{key}.txt`
  (the caption) and `{key}.json` (img2dataset's metadata: `status`, `key`, the saved columns).
- `tfrecord`: TFRecord files of tf.train.Example, bytes features `key`, the image under its
  format's name (`jpg` ...), `txt` (the caption) and every metadata column as a feature.

The caption is the column `caption_key` names: "txt" (img2dataset's caption), or any other column
it saved (save_additional_columns): a `.json` field of a wds sample, a feature of a TFRecord
example. A column holding a list of strings gives the sample several captions. A sample whose
`status` is other than "success" is not usable and is skipped (img2dataset keeps failed samples
out of its shards, but other writers may not). A shard cut short or with a corrupt tar header
raises DataError naming it.
"""

from __future__ import annotations

import json
from typing import IO, Iterator, NamedTuple

import numpy as np
import tensorflow as tf

from contrastive_jax.data.numpy_data import DataError

FORMATS = ("wds", "tfrecord")
IMAGE_FIELDS = ("jpg", "jpeg", "png", "webp")  # img2dataset's encode formats, in that order.
_TAR_BLOCK = 512
_CHUNK = 256  # Samples handed on at once inside tf.data, whose cost is per element.


class Sample(NamedTuple):
    """One sample of a shard: its key, encoded image (b"" if none), captions and whether its
    status lets it train."""

    key: str
    image: bytes
    captions: list[bytes] | None  # None: the caption column is missing.
    usable: bool


def _open(path: str) -> IO[bytes]:
    """A local file through Python's buffered reads (a few times faster), others through TF's
    file systems (gs:// ...)."""
    return tf.io.gfile.GFile(path, "rb") if "://" in path else open(path, "rb")


# ------------------------------------------------------------------------------------------------
# webdataset tar files.


def _octal(field: bytes) -> int:
    """A tar number field: octal digits ended by NUL or space, or GNU base-256 (over 8 GiB)."""
    if field[0] & 0x80:
        return int.from_bytes(field[1:], "big")
    return int(field.strip(b" \0") or b"0", 8)


def _pax_path(records: bytes) -> bytes | None:
    """The `path` of a pax extended header ("LEN key=value\\n" records), if it has one."""
    pos = 0
    while pos < len(records):
        space = records.index(b" ", pos)
        length = int(records[pos:space])
        key, _, value = records[space + 1:pos + length - 1].partition(b"=")
        if key == b"path":
            return value
        pos += length
    return None


def tar_members(stream: IO[bytes], path: str) -> Iterator[tuple[bytes, bytes]]:
    """(name, contents) of every regular file of a tar stream, in order (ustar, pax and GNU long
    names). DataError naming `path` for a header that fails its checksum or a stream that ends
    before tar's end-of-archive block; an empty file has no members."""
    offset, long_name, read = 0, None, stream.read
    while True:
        header = read(_TAR_BLOCK)
        if len(header) < _TAR_BLOCK:
            if not header and offset == 0:
                return
            raise DataError(f"wds shard {path} is cut short at byte {offset + len(header)} "
                            "(no end-of-archive block): truncated?")
        # tar's checksum is the header's byte sum, its own field read as 8 spaces. Checked mod
        # 255, without a Python loop: 256 = 1 (mod 255), so a number's base-256 digits sum to
        # it mod 255 (a byte that moved by exactly 255 goes unseen).
        checksum = header[148:156]
        if (int.from_bytes(header, "little") - int.from_bytes(checksum, "little")
                + 8 * ord(" ") - _octal(checksum)) % 255:
            if header.count(0) == _TAR_BLOCK:  # The end-of-archive block.
                return
            raise DataError(f"wds shard {path} has a corrupt tar header at byte {offset}")
        size = _octal(header[124:136])
        padded = size + (-size) % _TAR_BLOCK
        body = read(padded)
        if len(body) < padded:
            raise DataError(f"wds shard {path} is cut short in the member at byte {offset}: "
                            "truncated?")
        offset += _TAR_BLOCK + padded
        kind = header[156]
        if kind in b"0\0" or kind == ord("7"):
            if long_name is None:
                long_name = header[:100].split(b"\0", 1)[0]
                if header[257:262] == b"ustar" and header[345]:
                    long_name = header[345:500].split(b"\0", 1)[0] + b"/" + long_name
            yield long_name, body[:size]
            long_name = None
        elif kind == ord("x"):
            long_name = _pax_path(body[:size]) or long_name
        elif kind == ord("L"):
            long_name = body[:size].rstrip(b"\0")
        elif kind != ord("g"):  # Directories, links: not sample files.
            long_name = None


def _split_name(name: bytes) -> tuple[bytes, str]:
    """webdataset's key and extension: b'dir/0001.seg.png' -> (b'dir/0001', 'seg.png')."""
    slash = name.rfind(b"/") + 1
    dot = name.find(b".", slash)
    if dot < 0:
        return name, ""
    return name[:dot], name[dot + 1:].decode("utf-8").lower()


def _wds_sample(key: str, members: dict[str, bytes], caption_key: str, path: str) -> Sample:
    image = next((members[e] for e in IMAGE_FIELDS if e in members), b"")
    meta = {}
    if "json" in members:
        try:
            meta = json.loads(members["json"])
        except ValueError as error:
            raise DataError(f"sample {key} of wds shard {path} has a corrupt .json: "
                            f"{error}") from None
    if caption_key in members:
        captions = [members[caption_key]]
    else:
        captions = _column_captions(meta.get(caption_key, None), caption_key, key, path)
    return Sample(key, image, captions, meta.get("status", "success") == "success")


def _column_captions(value, caption_key: str, key: str, path: str) -> list[bytes] | None:
    if value is None:
        return None
    values = value if isinstance(value, list) else [value]
    if not all(isinstance(v, str) for v in values):
        raise DataError(f"column {caption_key!r} (data.caption_key) of sample {key} in shard "
                        f"{path} holds {value!r}, not a text or a list of texts")
    return [v.encode("utf-8") for v in values]


def wds_samples(path: str, caption_key: str) -> Iterator[Sample]:
    """The samples of a webdataset tar shard, in order."""
    key, members = None, {}
    with _open(path) as stream:
        for name, contents in tar_members(stream, path):
            member_key, extension = _split_name(name)
            if member_key != key:
                if members:
                    yield _wds_sample(key.decode("utf-8"), members, caption_key, path)
                key, members = member_key, {}
            members[extension] = contents
    if members:
        yield _wds_sample(key.decode("utf-8"), members, caption_key, path)


def _wds_chunks(path: bytes, caption_key: bytes):
    """`wds_samples` in chunks for tf.data, as `chunks` yields them (captions padded)."""
    def arrays(samples: list[Sample]):
        counts = [len(s.captions or ()) for s in samples]
        captions = np.full([len(samples), max(counts)], b"", object)
        for row, sample in zip(captions, samples):
            row[:len(sample.captions or ())] = sample.captions or ()
        return (np.array([s.key.encode() for s in samples], object),
                np.array([s.image for s in samples], object), captions,
                np.array(counts, np.int32), np.array([s.usable for s in samples], bool))

    chunk = []
    for sample in wds_samples(path.decode(), caption_key.decode()):
        chunk.append(sample)
        if len(chunk) == _CHUNK:
            yield arrays(chunk)
            chunk = []
    if chunk:
        yield arrays(chunk)


# ------------------------------------------------------------------------------------------------
# TFRecord files.


def _feature_captions(feature, caption_key: str, key: str, path: str) -> list[bytes]:
    if feature.WhichOneof("kind") not in ("bytes_list", None):
        raise DataError(f"feature {caption_key!r} (data.caption_key) of sample {key} in shard "
                        f"{path} is not text")
    return list(feature.bytes_list.value)


def _first_bytes(features, name: str) -> bytes:
    """The first value of a bytes feature, b"" if the example lacks it."""
    feature = features.get(name)
    return feature.bytes_list.value[0] if feature is not None and feature.bytes_list.value else b""


def tfrecord_samples(path: str, caption_key: str) -> Iterator[Sample]:
    """The samples of a TFRecord shard, in order."""
    try:
        for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
            features = tf.train.Example.FromString(record).features.feature
            key = _first_bytes(features, "key").decode("utf-8", "replace")
            image = next((_first_bytes(features, e) for e in IMAGE_FIELDS
                          if _first_bytes(features, e)), b"")
            captions = (_feature_captions(features[caption_key], caption_key, key, path)
                        if caption_key in features else None)
            yield Sample(key, image, captions,
                         _first_bytes(features, "status") in (b"", b"success"))
    except tf.errors.OpError as error:
        raise DataError(f"tfrecord shard {path} is cut short or corrupt: "
                        f"{error.message.strip().splitlines()[0]}") from None


# ------------------------------------------------------------------------------------------------
# Both.


def samples(fmt: str, path: str, caption_key: str) -> Iterator[Sample]:
    """The samples of shard `path` in format `fmt` ('wds' or 'tfrecord'), in order."""
    return (wds_samples if fmt == "wds" else tfrecord_samples)(path, caption_key)


def check_sample(sample: Sample, caption_key: str, path: str) -> None:
    """DataError naming the sample and shard if a usable sample lacks its image or caption."""
    if not sample.image:
        raise DataError(f"sample {sample.key} of shard {path} has no image "
                        f"({', '.join(IMAGE_FIELDS)})")
    if not sample.captions:
        raise DataError(f"sample {sample.key} of shard {path} has no caption {caption_key!r} "
                        "(data.caption_key)")


def scan(fmt: str, path: str, caption_key: str) -> tuple[int, int]:
    """(usable samples, samples marked failed) of a shard, every usable one checked."""
    usable = failed = 0
    for sample in samples(fmt, path, caption_key):
        if sample.usable:
            check_sample(sample, caption_key, path)
            usable += 1
        else:
            failed += 1
    return usable, failed


def chunks(fmt: str, path: tf.Tensor, caption_key: str) -> tf.data.Dataset:
    """A shard's samples inside tf.data, a chunk at a time (tf.data's cost is per element):
    (keys [c], encoded images [c], captions [c, k] padded with "", caption counts int32 [c],
    usable [c])."""
    if fmt == "wds":
        spec = (tf.TensorSpec([None], tf.string), tf.TensorSpec([None], tf.string),
                tf.TensorSpec([None, None], tf.string), tf.TensorSpec([None], tf.int32),
                tf.TensorSpec([None], tf.bool))
        return tf.data.Dataset.from_generator(_wds_chunks, args=(path, caption_key),
                                              output_signature=spec)
    features = {name: tf.io.FixedLenFeature([], tf.string, b"")
                for name in ("key", "status", *IMAGE_FIELDS)}
    features[caption_key] = tf.io.VarLenFeature(tf.string)

    def parse(serialized):
        example = tf.io.parse_example(serialized, features)
        images = tf.stack([example[name] for name in IMAGE_FIELDS], axis=1)
        first = tf.argmax(tf.cast(tf.strings.length(images) > 0, tf.int32), axis=1)
        usable = (example["status"] == b"") | (example["status"] == b"success")
        captions = tf.RaggedTensor.from_sparse(example[caption_key])
        return (example["key"], tf.gather(images, first, batch_dims=1), captions.to_tensor(b""),
                tf.cast(captions.row_lengths(), tf.int32), usable)

    return tf.data.TFRecordDataset(path).batch(_CHUNK).map(parse)
