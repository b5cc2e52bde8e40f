"""Tests of contrastive_jax.data.input_pipeline, with the data_sources and host_shards it reads
through, on small image folders, a tiny TFDS dataset and demo.

Every folder example is a solid colour that encodes its label (value 10 * label), and in the
"one image per class" trees the label is the example's id, so batches can be checked for which
examples they hold.
"""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from contrastive_jax import config_defaults
from contrastive_jax.augment import spec, tf_ops
from contrastive_jax.data import sources as data_sources
from contrastive_jax.data import input_pipeline as ip

from augment import reference_views

SIZE = 16


def _write_jpeg(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.full((SIZE, SIZE, 3), value, np.uint8)
    tf.io.write_file(str(path), tf.io.encode_jpeg(tf.constant(image), quality=100))


def _make_tree(root, split, num_classes, per_class=1):
    for label in range(num_classes):
        for k in range(per_class):
            _write_jpeg(root / split / f"c{label:02d}" / f"{k:03d}.jpg", 10 * label)


def _config(source, **overrides):
    cfg = config_defaults.base().data
    cfg.update(dict(
        source=source, data_dir="", image_size=SIZE, train_split="train", eval_split="test",
        color_strength=0.5, blur=False, crop_area_min=0.08, solarize_prob=0.0,
        shuffle_files=True))
    cfg.update(overrides)
    return cfg


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """24 training classes of one image each; a test split of 22 (classes 11 and 20 missing)."""
    root = tmp_path_factory.mktemp("images")
    _make_tree(root, "train", 24)
    for label in range(24):
        if label not in (11, 20):
            _write_jpeg(root / "test" / f"c{label:02d}" / "000.jpg", 10 * label)
    return root


def _take(iterator, k):
    return [next(iterator) for _ in range(k)]


def test_folder_info_and_class_names(tree):
    cfg = _config(f"folder:{tree}")
    assert data_sources.dataset_info(cfg) == (24, 24)
    assert data_sources.class_names(cfg) == [f"c{k:02d}" for k in range(24)]
    assert data_sources.num_examples(cfg, "test") == 22


def test_train_batch_shapes_and_ranges(tree):
    batch = next(ip.train_iterator(_config(f"folder:{tree}"), global_batch_size=8, seed=0,
                                   process_index=0, process_count=1))
    assert set(batch) == {"view1", "view2", "label"}
    for key in ("view1", "view2"):
        assert batch[key].shape == (8, SIZE, SIZE, 3) and batch[key].dtype == np.float32
        assert batch[key].min() >= 0.0 and batch[key].max() <= 1.0
    assert batch["label"].shape == (8,) and batch["label"].dtype == np.int32
    assert not np.array_equal(batch["view1"], batch["view2"])


def test_each_example_once_per_epoch_across_two_hosts(tree):
    cfg = _config(f"folder:{tree}")
    per_host = [_take(ip.train_iterator(cfg, global_batch_size=8, seed=3, process_index=p,
                                        process_count=2), 6) for p in range(2)]
    # 24 examples, 12 per host, 4 per host batch: 3 batches per epoch.
    for epoch in range(2):
        labels = np.concatenate([b["label"] for host in per_host
                                 for b in host[3 * epoch:3 * epoch + 3]])
        assert sorted(labels.tolist()) == list(range(24)), epoch
    for host in per_host:
        first = np.concatenate([b["label"] for b in host[:3]])
        second = np.concatenate([b["label"] for b in host[3:]])
        assert sorted(first) == sorted(second) and not np.array_equal(first, second)
    hosts = [set(np.concatenate([b["label"] for b in host[:3]]).tolist()) for host in per_host]
    assert not hosts[0] & hosts[1]


def test_resume_yields_the_uninterrupted_batches(tree):
    cfg = _config(f"folder:{tree}")
    kwargs = dict(global_batch_size=8, seed=5, process_index=1, process_count=2)
    fresh = _take(ip.train_iterator(cfg, **kwargs), 6)
    resumed = _take(ip.train_iterator(cfg, start_step=2, **kwargs), 4)  # Crosses an epoch.
    for a, b in zip(fresh[2:], resumed):
        for key in ("view1", "view2", "label"):
            np.testing.assert_array_equal(a[key], b[key])


def test_train_views_equal_per_example_two_views(tmp_path, monkeypatch):
    # Noise images of assorted sizes, so that crops, flips and colour changes all show. Chunks of
    # 4 examples in stage 1, so that the batch of 6 spans two of them.
    monkeypatch.setattr(ip, "_CROP_CHUNK", 4)
    rng = np.random.default_rng(0)
    for k in range(6):
        path = tmp_path / "train" / f"c{k % 2}" / f"{k}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        image = rng.integers(0, 256, size=(SIZE + 3 * k, SIZE + 5 - k, 3), dtype=np.uint8)
        tf.io.write_file(str(path), tf.io.encode_png(image))
    cfg = _config(f"folder:{tmp_path}", blur=True, solarize_prob=0.3, color_strength=1.0,
                  grayscale_prob=0.5)
    batch = next(ip.train_iterator(cfg, global_batch_size=6, seed=4, start_step=1,
                                   process_index=0, process_count=1))
    # The same examples' (epoch, index), from stage 1 of the same stream.
    source = ip.train_source(cfg, 4, 6, 0, 1)
    records = next(ip.crop_stage(cfg, 4, source, chunk=6).as_numpy_iterator())
    assert records["color_draws"].factors.shape == (6, 2, 4)
    split = data_sources.indexed_split(cfg, "train")
    for i, (epoch, index) in enumerate(zip(records["epoch"], records["index"])):
        image, label = split.load(index)
        views = reference_views.two_views(image, tf_ops.example_seed(4, epoch, index),
                                          spec.view_specs(cfg))
        assert batch["label"][i] == label.numpy() == records["label"][i]
        for key, view in zip(("view1", "view2"), views):
            np.testing.assert_allclose(batch[key][i], view.numpy(), atol=1e-5)


def test_small_crops_equal_per_example_views_and_leave_the_two_views_alone(tmp_path,
                                                                           monkeypatch):
    """SwAV's multi-crop: each example's V small views are the reference's views of its
    `small_crop_seeds` (a function of seed, epoch and index, so resumes are exact), at their own
    size and area; the two views are bit for bit those of a run without small crops."""
    monkeypatch.setattr(ip, "_CROP_CHUNK", 4)
    rng = np.random.default_rng(3)
    for k in range(6):
        path = tmp_path / "train" / f"c{k % 2}" / f"{k}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        image = rng.integers(0, 256, size=(SIZE + 2 * k, SIZE + 4 - k, 3), dtype=np.uint8)
        tf.io.write_file(str(path), tf.io.encode_png(image))
    plain = _config(f"folder:{tmp_path}", blur=True, color_strength=1.0, grayscale_prob=0.5)
    multi = _config(f"folder:{tmp_path}", blur=True, color_strength=1.0, grayscale_prob=0.5,
                    small_crops=2, small_crop_size=8, small_crop_area_min=0.05,
                    small_crop_area_max=0.3)
    kwargs = dict(global_batch_size=6, seed=4, start_step=1, process_index=0, process_count=1)
    batch = next(ip.train_iterator(multi, **kwargs))
    want = next(ip.train_iterator(plain, **kwargs))
    assert batch["small_views"].shape == (6, 2, 8, 8, 3) and "small_views" not in want
    for key in ("view1", "view2", "label"):
        np.testing.assert_array_equal(batch[key], want[key])
    records = next(ip.crop_stage(multi, 4, ip.train_source(multi, 4, 6, 0, 1),
                                 chunk=6).as_numpy_iterator())
    split = data_sources.indexed_split(multi, "train")
    small_spec = dataclasses.replace(spec.view_specs(multi)[0], image_size=8,
                                     crop_area_range=(0.05, 0.3))
    for i, (epoch, index) in enumerate(zip(records["epoch"], records["index"])):
        image, _ = split.load(index)
        seeds = tf_ops.small_crop_seeds(4, epoch, index, 2)
        for v in range(2):
            expected = reference_views.simclr_view(image, seeds[v], small_spec).numpy()
            np.testing.assert_allclose(batch["small_views"][i, v], expected, atol=1e-5)


@pytest.mark.parametrize("grayscale_prob", [0.0, 1.0])
def test_grayscale_prob_reaches_the_host_views(tmp_path, grayscale_prob):
    rng = np.random.default_rng(1)
    for k in range(4):
        path = tmp_path / "train" / f"c{k}" / "0.png"
        path.parent.mkdir(parents=True)
        image = rng.integers(0, 256, size=(SIZE, SIZE, 3), dtype=np.uint8)
        tf.io.write_file(str(path), tf.io.encode_png(image))
    cfg = _config(f"folder:{tmp_path}", color_strength=0.0, grayscale_prob=grayscale_prob)
    batch = next(ip.train_iterator(cfg, global_batch_size=4, seed=0, process_index=0,
                                   process_count=1))
    for key in ("view1", "view2"):
        channel_spread = np.ptp(batch[key], axis=-1).max(axis=(1, 2))  # Per image.
        if grayscale_prob:
            np.testing.assert_allclose(channel_spread, 0.0, atol=1e-6)
        else:
            assert (channel_spread > 0.1).all()


def test_seed_changes_order_and_views(tree):
    cfg = _config(f"folder:{tree}")
    a = next(ip.train_iterator(cfg, global_batch_size=8, seed=0, process_index=0,
                               process_count=1))
    b = next(ip.train_iterator(cfg, global_batch_size=8, seed=1, process_index=0,
                               process_count=1))
    assert not np.array_equal(a["label"], b["label"])


def test_global_batch_must_divide_over_processes(tree):
    with pytest.raises(ValueError, match="does not divide"):
        ip.train_iterator(_config(f"folder:{tree}"), global_batch_size=9, seed=0,
                          process_index=0, process_count=2)


def test_eval_visits_every_example_once_with_padding(tree):
    cfg = _config(f"folder:{tree}")
    per_host = [list(ip.eval_iterator(cfg, "test", global_batch_size=8, process_index=p,
                                      process_count=2)) for p in range(2)]
    assert len(per_host[0]) == len(per_host[1]) == 3  # 22 examples: 11 per host, 4 per batch.
    labels, padding = [], 0
    for host in per_host:
        for batch in host:
            assert batch["image"].shape == (4, SIZE, SIZE, 3) and batch["mask"].dtype == bool
            mask = batch["mask"]
            labels += batch["label"][mask].tolist()
            padding += int((~mask).sum())
            assert (batch["image"][~mask] == 0).all()
            # The image holds its own label (solid colour 10 * label).
            values = batch["image"][mask].mean(axis=(1, 2, 3)) * 255
            np.testing.assert_allclose(values, 10 * batch["label"][mask], atol=2)
    expected = [k for k in range(24) if k not in (11, 20)]  # Labels follow the train classes.
    assert sorted(labels) == expected and padding == 2


def test_eval_single_host_exact_batches(tree):
    batches = list(ip.eval_iterator(_config(f"folder:{tree}"), "test", global_batch_size=11,
                                    process_index=0, process_count=1))
    assert len(batches) == 2 and all(b["mask"].all() for b in batches)


def test_corrupt_jpeg_error_names_the_file(tmp_path):
    _make_tree(tmp_path, "train", 3, per_class=3)
    good = tf.io.read_file(str(tmp_path / "train" / "c00" / "000.jpg")).numpy()
    bad = tmp_path / "train" / "c01" / "bad.jpg"
    bad.write_bytes(good[: len(good) // 2])  # A truncated JPEG.
    junk = tmp_path / "test" / "c00" / "junk.jpg"
    junk.parent.mkdir(parents=True)
    junk.write_bytes(b"this is not an image")
    cfg = _config(f"folder:{tmp_path}")
    iterator = ip.train_iterator(cfg, global_batch_size=2, seed=0, process_index=0,
                                 process_count=1)
    with pytest.raises(data_sources.DataError, match="bad.jpg"):
        _take(iterator, 5)  # One epoch of 10 examples.
    with pytest.raises(data_sources.DataError, match="junk.jpg"):
        list(ip.eval_iterator(cfg, "test", global_batch_size=2, process_index=0,
                              process_count=1))


def test_empty_and_missing_folders_are_named(tmp_path):
    (tmp_path / "train").mkdir()
    cfg = _config(f"folder:{tmp_path}")
    with pytest.raises(data_sources.DataError, match=f"{tmp_path}/train.*no class sub-folders"):
        ip.train_iterator(cfg, global_batch_size=2, seed=0, process_index=0, process_count=1)
    (tmp_path / "train" / "cat").mkdir()
    (tmp_path / "train" / "cat" / "notes.txt").write_text("no images here")
    with pytest.raises(data_sources.DataError, match=f"{tmp_path}/train.*no images"):
        data_sources.dataset_info(cfg)
    with pytest.raises(data_sources.DataError, match=f"{tmp_path}/test.*does not exist"):
        ip.eval_iterator(cfg, "test", global_batch_size=2, process_index=0, process_count=1)


@pytest.mark.parametrize("source", ["foo:bar", "folder:", "tfds", "demo:x", ""])
def test_unknown_source_is_named(source):
    with pytest.raises(data_sources.DataError, match="unknown data source"):
        data_sources.parse_source(source)


def test_source_parsing():
    assert data_sources.parse_source("folder:/a/b") == ("folder", "/a/b")
    assert data_sources.parse_source("tfds:cifar10:3.0.2") == ("tfds", "cifar10:3.0.2")
    assert data_sources.parse_source("demo") == ("demo", "")
    assert data_sources.parse_source("synthetic") == ("synthetic", "")


def test_demo_source_splits():
    train_x, train_y = data_sources.demo_arrays("train")
    test_x, test_y = data_sources.demo_arrays("test")
    assert train_x.shape == (4000, 28, 28, 3) and test_x.shape == (1000, 28, 28, 3)
    assert train_x.dtype == np.uint8 and train_y.dtype == np.int32
    assert (train_x[..., 0] == train_x[..., 2]).all()  # Gray repeated over the channels.
    assert set(train_y.tolist()) == set(test_y.tolist()) == set(range(10))
    assert train_x.reshape(4000, -1).max() == 255  # Real digits, not blank.
    train_rows = {row.tobytes() for row in train_x[..., 0].reshape(4000, -1)}
    assert not any(row.tobytes() in train_rows for row in test_x[..., 0].reshape(1000, -1))
    cfg = _config("demo", image_size=32)
    assert data_sources.dataset_info(cfg) == (4000, 10)
    assert data_sources.num_examples(cfg, "test") == 1000
    batch = next(ip.train_iterator(cfg, global_batch_size=4, seed=0, process_index=0,
                                   process_count=1))
    assert batch["view1"].shape == (4, 32, 32, 3)
    evals = list(ip.eval_iterator(cfg, "test", global_batch_size=300, process_index=1,
                                  process_count=2))
    assert len(evals) == 4 and sum(int(b["mask"].sum()) for b in evals) == 500


def test_synthetic_source():
    cfg = _config("synthetic", synthetic_num_examples=64, synthetic_num_classes=5)
    assert data_sources.dataset_info(cfg) == (64, 5)
    batch = next(ip.train_iterator(cfg, global_batch_size=8, seed=0, process_index=0,
                                   process_count=1))
    assert batch["view1"].shape == (8, SIZE, SIZE, 3)
    assert ((0 <= batch["label"]) & (batch["label"] < 5)).all()


class ContrastiveJaxTiny(tfds.core.GeneratorBasedBuilder):
    """12 training and 5 test images; example i is the solid colour 20 * i with label i."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(8, 8, 3)),
            "label": tfds.features.ClassLabel(num_classes=12)}))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(12), "test": self._generate_examples(5)}

    def _generate_examples(self, n):
        for i in range(n):
            yield i, {"image": np.full((8, 8, 3), 20 * i, np.uint8), "label": i}


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("tfds")
    ContrastiveJaxTiny(data_dir=str(data_dir)).download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    return data_dir


def test_tfds_train_and_eval(tfds_dir):
    cfg = _config("tfds:contrastive_jax_tiny:1.0.0", data_dir=str(tfds_dir), image_size=8)
    assert data_sources.dataset_info(cfg) == (12, 12)
    kwargs = dict(global_batch_size=4, seed=1, process_count=2)
    per_host = [_take(ip.train_iterator(cfg, process_index=p, **kwargs), 6) for p in range(2)]
    for epoch in range(2):  # 6 examples per host, 2 per batch: 3 batches per epoch.
        labels = [v for host in per_host for b in host[3 * epoch:3 * epoch + 3]
                  for v in b["label"].tolist()]
        assert sorted(labels) == list(range(12))
    resumed = _take(ip.train_iterator(cfg, process_index=1, start_step=2, **kwargs), 3)
    for a, b in zip(per_host[1][2:], resumed):
        np.testing.assert_array_equal(a["view1"], b["view1"])
        np.testing.assert_array_equal(a["label"], b["label"])
    evals = [list(ip.eval_iterator(cfg, "test", global_batch_size=4, process_index=p,
                                   process_count=2)) for p in range(2)]
    assert len(evals[0]) == len(evals[1]) == 2
    seen = [v for host in evals for b in host for v in b["label"][b["mask"]].tolist()]
    assert sorted(seen) == list(range(5))
    for host in evals:
        for b in host:
            np.testing.assert_allclose(b["image"][b["mask"]].mean(axis=(1, 2, 3)) * 255,
                                       20 * b["label"][b["mask"]], atol=1)


def test_tfds_missing_dataset_names_it_and_data_dir(tfds_dir):
    cfg = _config("tfds:no_such_dataset_xyz", data_dir=str(tfds_dir))
    with pytest.raises(data_sources.DataError, match=f"no_such_dataset_xyz.*{tfds_dir}"):
        data_sources.dataset_info(cfg)
    cfg = _config("tfds:mnist", data_dir=str(tfds_dir))  # Known to TFDS, not prepared here.
    with pytest.raises(data_sources.DataError, match=f"'mnist' is not prepared.*{tfds_dir}"):
        ip.train_iterator(cfg, global_batch_size=2, seed=0, process_index=0, process_count=1)
