"""Writes image-text shards in img2dataset's layouts from a labelled image folder or a TFDS set.

    python -m contrastive_jax.tools.make_shards --source=folder:DIR|tfds:NAME --split=train \
        --format=tfrecord|wds --out=DIR --shard_size=N [--caption_key=captions/text \
        --data_dir=TFDS_DIR --seed=0]

so that tests, benchmarks and users without img2dataset have what it would write: shards
OUT/00000.tar (or .tfrecord), 00001 ... of N samples each (the last one fewer), each with its
img2dataset `{shard}_stats.json`. A sample is its key, its encoded image as stored (no re-encoding;
`jpg` or `png`), `txt`: its first caption, and the metadata columns `key`, `status` ("success"),
`caption` (= txt), `captions` (all its captions) and, for labelled sources, `label`: in wds a
`{key}.json`, in TFRecord one feature each. Captions are the class-name prompts the image-text
pipeline trains with (`image_text_pipeline.class_captions`) or, with --caption_key, the TFDS text
feature's captions; read them back with data.caption_key "txt" (the first) or "captions" (one
drawn each epoch, as the folder source does). A folder's examples are written in an order
shuffled by --seed (a folder is stored by class); TFDS's in their (already shuffled) file order.
Every file is written whole or not at all; OUT must be new or empty.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
from typing import Iterator

import ml_collections
import numpy as np
import tensorflow as tf

from contrastive_jax import cli, files
from contrastive_jax.data import image_text_pipeline, numpy_data, sources

Example = tuple[bytes, list[bytes], int]  # (encoded image, captions, label or -1)


def image_format(image: bytes, where: str) -> str:
    """'jpg' or 'png' from an encoded image's first bytes; DataError naming `where` else."""
    if image.startswith(b"\xff\xd8"):
        return "jpg"
    if image.startswith(b"\x89PNG"):
        return "png"
    raise numpy_data.DataError(f"{where} is neither a JPEG nor a PNG image")


def examples(data_config, split: str, seed: int) -> Iterator[Example]:
    """Every example of `split` of a folder (in an order shuffled by `seed`) or TFDS source."""
    kind, root = numpy_data.parse_source(data_config.source)
    captions = image_text_pipeline.caption_source(data_config)
    if kind == "folder":
        paths, labels, _ = numpy_data.folder_files(root, split, data_config.train_split)
        for i in np.random.default_rng(seed).permutation(len(paths)):
            with open(paths[i], "rb") as f:
                image = f.read()
            image_format(image, paths[i])
            yield image, list(captions.candidates(tf.constant(labels[i])).numpy()), labels[i]
    else:
        builder = sources.tfds_builder(data_config)
        records = sources.tfds_records(builder, split, data_config, captions.fields).map(
            lambda i, image, *rest: (i, image, captions.candidates(*rest), rest[0]))
        for i, image, texts, label in records.as_numpy_iterator():
            image_format(image, f"example {i} of {data_config.source!r} split {split!r}")
            yield image, list(texts), int(label) if captions.labelled else -1


def _metadata(key: str, captions: list[bytes], label: int) -> dict:
    texts = [c.decode("utf-8") for c in captions]
    meta = {"key": key, "status": "success", "caption": texts[0], "captions": texts}
    if label >= 0:
        meta["label"] = label
    return meta


def _tar_member(tar: tarfile.TarFile, name: str, contents: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(contents), 0o444
    tar.addfile(info, io.BytesIO(contents))


def _write_wds(path: str, samples: list[tuple[str, Example]]) -> None:
    with files.atomic_write(path, "wb") as f, tarfile.open(fileobj=f, mode="w") as tar:
        for key, (image, captions, label) in samples:
            _tar_member(tar, f"{key}.{image_format(image, key)}", image)
            _tar_member(tar, f"{key}.txt", captions[0])
            _tar_member(tar, f"{key}.json",
                        json.dumps(_metadata(key, captions, label), indent=4).encode())


def _feature(value) -> tf.train.Feature:
    if isinstance(value, int):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))
    values = value if isinstance(value, list) else [value]
    return tf.train.Feature(bytes_list=tf.train.BytesList(
        value=[v.encode() if isinstance(v, str) else v for v in values]))


def _write_tfrecord(path: str, samples: list[tuple[str, Example]]) -> None:
    """Through TF's in-memory filesystem (TFRecordWriter writes only to a path), then whole."""
    buffer = f"ram://{os.getpid()}/{os.path.basename(path)}"
    with tf.io.TFRecordWriter(buffer) as writer:
        for key, (image, captions, label) in samples:
            features = {k: _feature(v) for k, v in _metadata(key, captions, label).items()}
            features.update({image_format(image, key): _feature(image),
                             "txt": _feature(captions[0])})
            writer.write(tf.train.Example(features=tf.train.Features(
                feature=features)).SerializeToString())
    with tf.io.gfile.GFile(buffer, "rb") as source, files.atomic_write(path, "wb") as f:
        shutil.copyfileobj(source, f)
    tf.io.gfile.remove(buffer)


def write_shards(data_config, split: str, fmt: str, out: str, shard_size: int,
                 seed: int = 0) -> list[str]:
    """Writes `split` of `data_config.source` as shards of `shard_size` into `out` (new or
    empty); returns the shard paths."""
    if shard_size <= 0:
        raise ValueError(f"--shard_size must be > 0, got {shard_size}")
    if fmt not in ("wds", "tfrecord"):
        raise ValueError(f"--format must be wds or tfrecord, got {fmt!r}")
    if numpy_data.parse_source(data_config.source)[0] not in ("folder", "tfds"):
        raise numpy_data.DataError(f"make_shards reads folder: and tfds: sources, not "
                                   f"{data_config.source!r}")
    if os.path.isdir(out) and os.listdir(out):
        raise ValueError(f"--out={out} is not empty; write shards into a new or empty folder")
    os.makedirs(out, exist_ok=True)
    digits = len(str(shard_size - 1))
    written, batch = [], []

    def flush():
        shard = len(written)
        path = os.path.join(out, f"{shard:05d}.{'tar' if fmt == 'wds' else 'tfrecord'}")
        samples = [(f"{shard:05d}{i:0{digits}d}", example) for i, example in enumerate(batch)]
        (_write_wds if fmt == "wds" else _write_tfrecord)(path, samples)
        with files.atomic_write(os.path.join(out, f"{shard:05d}_stats.json")) as f:
            json.dump({"count": len(batch), "successes": len(batch), "failed_to_download": 0,
                       "failed_to_resize": 0}, f, indent=4)
        written.append(path)
        batch.clear()

    for example in examples(data_config, split, seed):
        batch.append(example)
        if len(batch) == shard_size:
            flush()
    if batch:
        flush()
    if not written:
        raise numpy_data.DataError(f"{data_config.source!r} split {split!r} has no examples")
    return written


def main(argv=None) -> None:
    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", required=True, help="folder:DIR or tfds:NAME[:VERSION]")
    parser.add_argument("--split", default="train")
    parser.add_argument("--format", required=True, choices=("wds", "tfrecord"))
    parser.add_argument("--out", required=True, help="a new or empty folder")
    parser.add_argument("--shard_size", type=int, default=10_000,
                        help="samples per shard (img2dataset's default: 10,000)")
    parser.add_argument("--caption_key", default="",
                        help="a TFDS text feature (captions/text); '': class-name prompts")
    parser.add_argument("--data_dir", default="", help="TFDS data_dir")
    parser.add_argument("--seed", type=int, default=0, help="order of a folder's examples")
    args = parser.parse_args(argv)
    data_config = ml_collections.ConfigDict(dict(
        source=args.source, data_dir=args.data_dir, train_split=args.split,
        caption_key=args.caption_key))
    paths = write_shards(data_config, args.split, args.format, args.out, args.shard_size,
                         args.seed)
    print(f"wrote {len(paths)} {args.format} shards to {args.out}", flush=True)


if __name__ == "__main__":
    cli.with_one_line_errors(main)()
