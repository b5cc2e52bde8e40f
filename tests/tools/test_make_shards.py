"""Tests of tools.make_shards: what it writes from CIFAR-10 JPEGs and a tiny TFDS caption set,
read back with Python's tarfile and tf.train.Example (img2dataset's layouts), its files whole or
absent, and its command line's one-line errors."""

import json
import tarfile

import ml_collections
import pytest
import tensorflow as tf

from contrastive_jax.data import image_text_pipeline as itp
from contrastive_jax.data.sources import DataError
from contrastive_jax.tools import make_shards

from support import first_per_class
from tiny_tfds import CAPTIONS, CLASS_NAMES


def config(source, **overrides):
    return ml_collections.ConfigDict({"source": source, "data_dir": "", "train_split": "train",
                                      "caption_key": "", **overrides})


@pytest.fixture(scope="module")
def images(cifar_folder, tmp_path_factory):
    """The first 2 training JPEGs of each CIFAR-10 class."""
    return first_per_class(cifar_folder, tmp_path_factory.mktemp("cifar_small"), 2)


def wds_samples(folder):
    """[(shard name, key, {extension: contents})] in member order, with tarfile."""
    out = []
    for path in sorted(folder.glob("*.tar")):
        with tarfile.open(path) as tar:
            for member in tar.getmembers():
                key, extension = member.name.split(".", 1)
                if not out or out[-1][1] != key:
                    out.append((path.stem, key, {}))
                out[-1][2][extension] = tar.extractfile(member).read()
    return out


def tfrecord_samples(folder):
    """[(shard name, {feature: values})] with tf.train.Example."""
    out = []
    for path in sorted(folder.glob("*.tfrecord")):
        for record in tf.data.TFRecordDataset(str(path)).as_numpy_iterator():
            features = tf.train.Example.FromString(record).features.feature
            out.append((path.stem, {name: list(getattr(f, f.WhichOneof("kind")).value)
                                    for name, f in features.items()}))
    return out


def test_folder_shards_are_img2dataset_s_webdataset_layout(images, tmp_path):
    paths = make_shards.write_shards(config(f"folder:{images}"), "train", "wds",
                                     str(tmp_path / "out"), 6)
    assert [p.rsplit("/", 1)[1] for p in paths] == [f"0000{i}.tar" for i in range(4)]
    samples = wds_samples(tmp_path / "out")
    class_of = {p.read_bytes(): p.parent.name for p in images.glob("train/*/*.jpg")}
    classes = sorted(set(class_of.values()))
    assert sorted(contents["jpg"] for _, _, contents in samples) == sorted(class_of)
    for i, (shard, key, contents) in enumerate(samples):
        assert list(contents) == ["jpg", "txt", "json"]
        assert shard == f"{i // 6:05d}" and key == f"{shard}{i % 6}"
        meta = json.loads(contents["json"])
        name = class_of[contents["jpg"]]
        assert meta == {"key": key, "status": "success", "caption": meta["captions"][0],
                        "captions": itp.class_captions(name), "label": classes.index(name)}
        assert contents["txt"].decode() == meta["captions"][0]
    for shard, size in zip(range(4), (6, 6, 6, 2)):
        stats = json.loads((tmp_path / "out" / f"{shard:05d}_stats.json").read_text())
        assert stats["count"] == stats["successes"] == size


def test_tfrecord_shards_hold_the_webdataset_samples_as_features(images, tmp_path):
    for fmt in ("wds", "tfrecord"):
        make_shards.write_shards(config(f"folder:{images}"), "train", fmt,
                                 str(tmp_path / fmt), 6, seed=3)
    records = tfrecord_samples(tmp_path / "tfrecord")
    assert len(records) == 20
    for (shard, key, contents), (tf_shard, features) in zip(wds_samples(tmp_path / "wds"),
                                                            records):
        meta = json.loads(contents["json"])
        assert tf_shard == shard
        assert features == {
            "key": [key.encode()], "jpg": [contents["jpg"]], "txt": [contents["txt"]],
            "status": [b"success"], "caption": [meta["caption"].encode()],
            "captions": [c.encode() for c in meta["captions"]], "label": [meta["label"]]}


def test_a_tfds_caption_set_keeps_every_caption(captions_tfds_dir, tmp_path):
    source = config("tfds:contrastive_jax_captions_tiny:1.0.0", data_dir=captions_tfds_dir,
                    caption_key="captions/text")
    make_shards.write_shards(source, "train", "wds", str(tmp_path), 2)
    samples = wds_samples(tmp_path)
    assert [list(contents) for _, _, contents in samples] == [["png", "txt", "json"]] * 3
    found = sorted((json.loads(c["json"])["captions"], json.loads(c["json"])["label"])
                   for _, _, c in samples)
    assert found == sorted((captions, i) for i, captions in enumerate(CAPTIONS))
    assert all(c["txt"].decode() == json.loads(c["json"])["captions"][0] for _, _, c in samples)


def test_a_labelled_tfds_set_is_captioned_with_its_class_prompts(captions_tfds_dir, tmp_path):
    source = config("tfds:contrastive_jax_captions_tiny:1.0.0", data_dir=captions_tfds_dir)
    make_shards.write_shards(source, "train", "tfrecord", str(tmp_path), 5)
    found = {features["label"][0]: features["captions"] for _, features in
             tfrecord_samples(tmp_path)}
    assert found == {i: [c.encode() for c in itp.class_captions(name)]
                     for i, name in enumerate(CLASS_NAMES)}


def test_a_file_that_is_not_an_image_stops_the_writer_and_leaves_only_whole_files(
        images, tmp_path):
    folder = tmp_path / "images"
    first_per_class(images, folder, 2)
    (folder / "train" / "cat" / "zz_notes.jpg").write_text("not an image")
    with pytest.raises(DataError, match="zz_notes.jpg is neither a JPEG nor a PNG"):
        make_shards.write_shards(config(f"folder:{folder}"), "train", "wds",
                                 str(tmp_path / "out"), 3)
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert all(not name.startswith(".") for name in written)
    for path in (tmp_path / "out").glob("*.tar"):
        with tarfile.open(path) as tar:
            assert len(tar.getmembers()) == 9
        assert (tmp_path / "out" / f"{path.stem}_stats.json").exists()


def error_of(capsys, argv):
    with pytest.raises(SystemExit) as exit_info:
        make_shards.cli.with_one_line_errors(make_shards.main)(argv)
    assert exit_info.value.code == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    return lines[0]


def test_the_command_writes_shards_and_refuses_bad_input_with_one_line(images, tmp_path,
                                                                       capsys):
    out = str(tmp_path / "out")
    make_shards.main([f"--source=folder:{images}", "--format=tfrecord", f"--out={out}",
                      "--shard_size=8"])
    assert capsys.readouterr().out.strip() == f"wrote 3 tfrecord shards to {out}"
    assert error_of(capsys, [f"--source=folder:{images}", "--format=wds", f"--out={out}"]) == (
        f"error: --out={out} is not empty; write shards into a new or empty folder")
    assert error_of(capsys, ["--source=demo", "--format=wds", f"--out={tmp_path}/new"]) == (
        "error: make_shards reads folder: and tfds: sources, not 'demo'")
    assert error_of(capsys, [f"--source=folder:{images}", "--format=zip",
                             f"--out={tmp_path}/new"]).startswith(
        "error: argument --format: invalid choice: 'zip'")
    assert error_of(capsys, [f"--source=folder:{images}", "--format=wds", "--shard_size=0",
                             f"--out={tmp_path}/new"]) == "error: --shard_size must be > 0, got 0"
