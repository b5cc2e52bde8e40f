"""The bad inputs of the wds: and tfrecord: shard sources: what stops a run with one DataError
naming the file (a glob matching nothing, a shard cut short or corrupt, an image that does not
decode, a sample without its caption, a stats file that miscounts) and what is skipped and
counted (empty shards, samples marked failed). Shards are written here with Python's tarfile and
tf.io.TFRecordWriter, or by make_shards and then damaged.
"""

import io
import json
import logging
import shutil
import tarfile

import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from contrastive_jax.data import image_text_pipeline as itp, shard_index, shard_source
from contrastive_jax.data.sources import DataError
from contrastive_jax.tools import make_shards

from support import first_per_class

JPEG = tf.io.encode_jpeg(tf.fill([8, 8, 3], tf.constant(90, tf.uint8))).numpy()


def data_config(source, **overrides):
    cfg = ml_collections.ConfigDict(dict(
        source=source, data_dir="", image_size=8, train_split="train", crop_area_min=0.5,
        tokenizer="bytes", max_text_len=32, caption_key="", shard_window=2,
        shuffle_buffer=1000))
    cfg.update(overrides)
    return cfg


def iterate(source, batches=8, **overrides):
    """Reads `batches` batches of 2 from `source` (one host)."""
    iterator = itp.train_iterator(data_config(source, **overrides), global_batch_size=2,
                                  seed=0, process_index=0, process_count=1)
    return [next(iterator) for _ in range(batches)]


def write_tar(path, samples):
    """A webdataset tar of `samples`: (key, {extension: contents}), via Python's tarfile."""
    with tarfile.open(path, "w") as tar:
        for key, members in samples:
            for extension, contents in members.items():
                info = tarfile.TarInfo(f"{key}.{extension}")
                info.size = len(contents)
                tar.addfile(info, io.BytesIO(contents))


def sample(key, status="success", **members):
    """A wds sample's members: a JPEG, a caption, img2dataset's json (`members` replace them;
    None drops one)."""
    out = {"jpg": JPEG, "txt": f"caption {key}".encode(),
           "json": json.dumps({"key": key, "status": status}).encode(), **members}
    return key, {k: v for k, v in out.items() if v is not None}


def write_tfrecord(path, samples):
    """TFRecord shard of `samples`: {feature: bytes or list of bytes}."""
    with tf.io.TFRecordWriter(str(path)) as writer:
        for features in samples:
            writer.write(tf.train.Example(features=tf.train.Features(feature={
                k: tf.train.Feature(bytes_list=tf.train.BytesList(
                    value=v if isinstance(v, list) else [v])) for k, v in features.items()}
            )).SerializeToString())


@pytest.fixture(scope="module")
def made(cifar_folder, tmp_path_factory):
    """{format: folder} of make_shards' shards (with stats files) of 12 CIFAR-10 JPEGs, 4 per
    shard, to copy and damage."""
    images = first_per_class(cifar_folder, tmp_path_factory.mktemp("cifar_tiny"), 1)
    out = {}
    for fmt in ("wds", "tfrecord"):
        folder = tmp_path_factory.mktemp(fmt) / "shards"
        make_shards.write_shards(data_config(f"folder:{images}"), "train", fmt, str(folder), 4)
        out[fmt] = folder
    return out


def damaged_copy(made, fmt, tmp_path, damage):
    """A copy of `made[fmt]` whose second shard `damage(bytes) -> bytes` changed; returns
    (source, the damaged shard's path)."""
    folder = tmp_path / fmt
    shutil.copytree(made[fmt], folder)
    path = sorted(folder.glob("*.tar" if fmt == "wds" else "*.tfrecord"))[1]
    path.write_bytes(damage(path.read_bytes()))
    return f"{fmt}:{folder}/*", path


def test_a_glob_matching_nothing_is_refused(tmp_path):
    with pytest.raises(DataError, match=r"no shards match '.*/nothing/\*\.tar'"):
        iterate(f"wds:{tmp_path}/nothing/*.tar")


def test_empty_shards_are_skipped_and_counted(tmp_path, caplog):
    write_tar(tmp_path / "00000.tar", [sample("a"), sample("b")])
    write_tar(tmp_path / "00001.tar", [])  # img2dataset's shard when every download failed.
    (tmp_path / "00002.tar").write_bytes(b"")
    write_tar(tmp_path / "00003.tar", [sample("c")])
    caplog.set_level(logging.INFO)
    cfg = data_config(f"wds:{tmp_path}/*.tar")
    assert shard_index.dataset_info(cfg).num_train_examples == 3
    assert "2 empty shards skipped" in caplog.text
    source = shard_source.train_source(cfg, 0, 0, 0, 1)
    assert sorted(int(r[1]) for r in source.stream.take(3).as_numpy_iterator()) == [0, 1, 2]


def test_only_empty_shards_are_refused(tmp_path):
    write_tar(tmp_path / "00000.tar", [])
    with pytest.raises(DataError, match="hold no usable sample"):
        iterate(f"wds:{tmp_path}/*.tar")


@pytest.mark.parametrize("fmt", ["wds", "tfrecord"])
def test_samples_marked_failed_are_skipped_and_counted(tmp_path, caplog, fmt):
    if fmt == "wds":
        write_tar(tmp_path / "0.tar", [sample("a"), sample("b", "failed_to_download", jpg=None),
                                       sample("c")])
    else:
        write_tfrecord(tmp_path / "0.tfrecord", [
            {"key": b"a", "jpg": JPEG, "txt": b"x", "status": b"success"},
            {"key": b"b", "txt": b"x", "status": b"failed_to_resize"},
            {"key": b"c", "jpg": JPEG, "txt": b"y"}])
    caplog.set_level(logging.INFO)
    source = f"{fmt}:{tmp_path}/*"
    assert shard_index.dataset_info(data_config(source)).num_train_examples == 2
    assert "1 samples marked failed skipped" in caplog.text
    stream = shard_source.train_source(data_config(source), 0, 0, 0, 1).stream
    assert sorted(int(r[1]) for r in stream.take(4).as_numpy_iterator()) == [0, 0, 1, 1]


@pytest.mark.parametrize("fmt", ["wds", "tfrecord"])
def test_a_shard_cut_short_is_named_before_training_without_a_stats_file(made, tmp_path, fmt):
    source, path = damaged_copy(made, fmt, tmp_path, lambda data: data[:len(data) // 2])
    for stats in path.parent.glob("*_stats.json"):
        stats.unlink()
    with pytest.raises(DataError, match=f"shard {path} is cut short"):
        shard_index.dataset_info(data_config(source))


@pytest.mark.parametrize("fmt", ["wds", "tfrecord"])
def test_a_shard_cut_short_is_named_when_read(made, tmp_path, fmt):
    """With img2dataset's stats files the shard is counted without reading it: the run stops
    when it gets there, naming it."""
    source, path = damaged_copy(made, fmt, tmp_path, lambda data: data[:len(data) // 2])
    with pytest.raises(DataError, match=f"shard {path} is cut short"):
        iterate(source)


def test_a_tar_cut_at_a_member_boundary_is_named(made, tmp_path):
    """Cut after a whole member, no end-of-archive block: a count too small, unless noticed."""
    def cut(data):
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            return data[:tar.getmembers()[3].offset]

    source, path = damaged_copy(made, "wds", tmp_path, cut)
    with pytest.raises(DataError, match=f"shard {path} is cut short .*end-of-archive"):
        iterate(source)


def test_a_corrupt_tar_header_is_named(made, tmp_path):
    source, path = damaged_copy(made, "wds", tmp_path,
                                lambda data: data[:60] + b"\x07" + data[61:])  # In a name.
    with pytest.raises(DataError, match=f"shard {path} has a corrupt tar header at byte 0"):
        iterate(source)


def test_a_corrupt_tfrecord_is_named(made, tmp_path):
    def flip(data):
        return data[:100] + bytes([data[100] ^ 0xFF]) + data[101:]

    source, path = damaged_copy(made, "tfrecord", tmp_path, flip)
    with pytest.raises(DataError, match=f"tfrecord shard {path} is cut short or corrupt"):
        iterate(source)


@pytest.mark.parametrize("fmt", ["wds", "tfrecord"])
def test_an_image_that_does_not_decode_names_its_sample_and_shard(tmp_path, fmt):
    bad = b"\xff\xd8 not really a JPEG"
    if fmt == "wds":
        write_tar(tmp_path / "0.tar", [sample("good"), sample("bad", jpg=bad)])
    else:
        write_tfrecord(tmp_path / "0.tfrecord", [{"key": b"good", "jpg": JPEG, "txt": b"x"},
                                                 {"key": b"bad", "jpg": bad, "txt": b"x"}])
    path = next(tmp_path.iterdir())
    with pytest.raises(DataError, match=f"cannot decode the image of sample bad of shard {path}: "
                                        "Unknown image file format"):
        iterate(f"{fmt}:{tmp_path}/*", batches=2)


@pytest.mark.parametrize("fmt", ["wds", "tfrecord"])
@pytest.mark.parametrize("missing", ["txt", "jpg"])
def test_a_sample_without_its_caption_or_image_is_named(tmp_path, fmt, missing):
    """Found by the first read without a stats file, else when the run reads the sample."""
    if fmt == "wds":
        write_tar(tmp_path / "0.tar", [sample("a"), sample("b", **{missing: None})])
    else:
        write_tfrecord(tmp_path / "0.tfrecord", [
            {"key": b"a", "jpg": JPEG, "txt": b"x"},
            {k: v for k, v in {"key": b"b", "jpg": JPEG, "txt": b"x"}.items() if k != missing}])
    path = next(tmp_path.iterdir())
    message = f"sample b of shard {path} has no " + (
        "caption 'txt'" if missing == "txt" else "image")
    with pytest.raises(DataError, match=message):
        shard_index.dataset_info(data_config(f"{fmt}:{tmp_path}/*"))
    (tmp_path / "0_stats.json").write_text(json.dumps({"count": 2, "successes": 2}))
    with pytest.raises(DataError, match=message):
        iterate(f"{fmt}:{tmp_path}/*", batches=2)


def test_a_stats_file_that_miscounts_is_named(tmp_path):
    write_tar(tmp_path / "0.tar", [sample("a"), sample("b")])
    (tmp_path / "0_stats.json").write_text(json.dumps({"count": 3, "successes": 3}))
    with pytest.raises(DataError, match=r"shard .*0\.tar holds 2 usable samples, not the 3"):
        iterate(f"wds:{tmp_path}/*", batches=4)


def test_a_caption_column_of_numbers_is_refused(tmp_path):
    write_tar(tmp_path / "0.tar", [sample("a", json=json.dumps({"captions": [1, 2]}).encode())])
    with pytest.raises(DataError, match="column 'captions'.* not a text or a list of texts"):
        iterate(f"wds:{tmp_path}/*", caption_key="captions")


def test_more_hosts_than_shards_is_refused(tmp_path):
    write_tar(tmp_path / "0.tar", [sample("a"), sample("b")])
    with pytest.raises(DataError, match="1 non-empty shards, too few to give each of 2"):
        shard_source.train_source(data_config(f"wds:{tmp_path}/*"), 0, 0, 1, 2)


def test_pax_and_long_names_are_read_as_tarfile_writes_them(tmp_path):
    """Keys longer than tar's 100-byte name field (pax headers), in sub-folders."""
    key = "deep/" + "k" * 150
    write_tar(tmp_path / "0.tar", [sample(key), sample("short")])
    with tarfile.open(tmp_path / "0.tar") as tar:
        assert tar.pax_headers or any(len(m.name) > 100 for m in tar.getmembers())
    stream = shard_source.train_source(data_config(f"wds:{tmp_path}/*"), 0, 0, 0, 1).stream
    captions = {r[3][0] for r in stream.take(2).as_numpy_iterator()}
    assert captions == {f"caption {key}".encode(), b"caption short"}
    assert np.all([len(b["image"]) == 2 for b in iterate(f"wds:{tmp_path}/*", batches=2)])
