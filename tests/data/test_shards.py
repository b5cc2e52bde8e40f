"""Tests of the wds: and tfrecord: shard sources (data.shard_source, data.shard_formats) on shards
tools.make_shards writes from CIFAR-10 JPEGs: each sample read once per epoch over 1 and 2 hosts
with the bytes and captions the shard holds (read back with Python's tarfile and
tf.train.Example, not the reader under test), the order, exact resume mid-epoch and several
captions per sample. The bad inputs are in test_shard_errors.py.
"""

import collections
import json
import os
import tarfile

import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from contrastive_jax import config_checks, config_defaults, methods, train, train_step
from contrastive_jax.data import availability
from contrastive_jax.bench import input_pipeline as input_bench
from contrastive_jax.data import image_text_pipeline as itp, input_pipeline, shard_index
from contrastive_jax.data import shard_source
from contrastive_jax.data import tokenizer as tok
from contrastive_jax.data.sources import DataError
from contrastive_jax.evaluation import evaluators
from contrastive_jax.tools import make_shards

from support import REPO, first_per_class, image_text_config, load_config
from tiny_tfds import CAPTIONS as TFDS_CAPTIONS

FORMATS = ("wds", "tfrecord")
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
           "truck")
PER_CLASS = 3  # 30 images: shards of 4 are 7 full ones and one of 2.
SHARD_SIZE = 4
MAX_LEN = 48


def data_config(source, **overrides):
    cfg = ml_collections.ConfigDict(dict(
        source=source, data_dir="", image_size=16, train_split="train", crop_area_min=0.5,
        tokenizer="bytes", max_text_len=MAX_LEN, caption_key="", shard_window=3,
        shuffle_buffer=50_000))
    cfg.update(overrides)
    return cfg


@pytest.fixture(scope="module")
def images(cifar_folder, tmp_path_factory):
    """An image folder of the first 3 training JPEGs of each CIFAR-10 class."""
    return first_per_class(cifar_folder, tmp_path_factory.mktemp("cifar_small"), PER_CLASS)


@pytest.fixture(scope="module")
def shards(images, tmp_path_factory):
    """{format: folder} of make_shards' shards of `images`."""
    out = {}
    for fmt in FORMATS:
        folder = tmp_path_factory.mktemp(fmt) / "shards"
        make_shards.write_shards(data_config(f"folder:{images}"), "train", fmt, str(folder),
                                 SHARD_SIZE)
        out[fmt] = folder
    return out


def read_back(fmt, folder):
    """[(image bytes, txt, captions)] of every sample in split order (shards by name), read
    with Python's tarfile or tf.train.Example."""
    samples = []
    for path in sorted(folder.glob("*.tar" if fmt == "wds" else "*.tfrecord")):
        if fmt == "wds":
            with tarfile.open(path) as tar:
                members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
            for key in sorted({name.split(".")[0] for name in members}):
                meta = json.loads(members[f"{key}.json"])
                samples.append((members[f"{key}.jpg"], members[f"{key}.txt"],
                                [c.encode() for c in meta["captions"]]))
        else:
            for record in tf.data.TFRecordDataset(str(path)).as_numpy_iterator():
                f = tf.train.Example.FromString(record).features.feature
                samples.append((f["jpg"].bytes_list.value[0], f["txt"].bytes_list.value[0],
                                list(f["captions"].bytes_list.value)))
    return samples


def source_of(fmt, shards):
    return f"{fmt}:{shards[fmt]}/*"


def take(iterator, k):
    return [next(iterator) for _ in range(k)]


def texts(batch):
    return [tok.ByteTokenizer(MAX_LEN).detokenize(row) for row in batch["text"]]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("process_count", [1, 2])
def test_each_sample_is_read_once_per_epoch_by_one_host(shards, images, fmt, process_count):
    """Over the hosts, epochs 0 and 1 each hold every sample once, with the image bytes and
    caption its shard holds; each shard goes whole to one host; epochs differ in order."""
    cfg = data_config(source_of(fmt, shards))
    expected = read_back(fmt, shards[fmt])
    assert len(expected) == 10 * PER_CLASS
    folder_bytes = sorted(p.read_bytes() for p in images.glob("train/*/*.jpg"))
    assert sorted(image for image, _, _ in expected) == folder_bytes
    epochs = collections.defaultdict(list)
    for p in range(process_count):
        source = shard_source.train_source(cfg, seed=3, start=0, process_index=p,
                                           process_count=process_count)
        host = collections.defaultdict(list)
        for epoch, index, image, captions, count in source.stream.take(
                2 * len(expected)).as_numpy_iterator():
            assert image == expected[index][0]
            assert list(captions[:count]) == [expected[index][1]]
            host[epoch].append(int(index))
        assert sorted(host[0]) == sorted(host[1]) and host[0] != host[1]
        assert {i // SHARD_SIZE for i in host[0]} == {i // SHARD_SIZE for i in host[1]}
        epochs[0] += host[0]
        epochs[1] += host[1]
    for epoch in (0, 1):
        assert sorted(epochs[epoch]) == list(range(len(expected)))


def test_another_seed_gives_another_order(shards):
    """(The same seed gives the same batches: the resume tests below.)"""
    cfg = data_config(source_of("tfrecord", shards))
    orders = [[int(r[1]) for r in shard_source.train_source(cfg, seed, 0, 0, 1).stream.take(
        30).as_numpy_iterator()] for seed in (0, 1)]
    assert sorted(orders[0]) == sorted(orders[1]) and orders[0] != orders[1]


@pytest.mark.parametrize("fmt,process_index,process_count,start", [
    ("wds", 0, 1, 7), ("tfrecord", 0, 1, 7), ("wds", 1, 2, 2)])
def test_resume_mid_epoch_gives_the_batches_of_an_uninterrupted_run(shards, fmt, process_index,
                                                                    process_count, start):
    """Windows of 3 shards (12 samples), 5 samples a host batch: one host resumes at step 7,
    inside a window of the second epoch; the second of two hosts (3 or 4 shards) at step 2,
    inside its first epoch's second window. Every batch equals the uninterrupted run's."""
    cfg = data_config(source_of(fmt, shards), caption_key="captions")
    kwargs = dict(global_batch_size=5 * process_count, seed=4, process_index=process_index,
                  process_count=process_count)
    full = take(itp.train_iterator(cfg, **kwargs), start + 3)
    resumed = take(itp.train_iterator(cfg, start_step=start, **kwargs), 3)
    for a, b in zip(full[start:], resumed):
        assert set(a) == set(b) == {"image", "text"}
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_sample_s_captions_are_drawn_from_its_caption_column(shards, fmt):
    """caption_key "captions" (make_shards' list of every training prompt of the class; the
    default "txt" holds the first, read in the test above) draws one per example and epoch."""
    templates = collections.defaultdict(set)
    cfg = data_config(source_of(fmt, shards), caption_key="captions")
    batches = take(itp.train_iterator(cfg, global_batch_size=10, seed=0, process_index=0,
                                      process_count=1), 12)  # 4 epochs.
    for batch in batches:
        assert batch["image"].shape == (10, 16, 16, 3) and batch["text"].shape == (10, MAX_LEN)
        for text in texts(batch):
            name = next(n for n in CLASSES if text in itp.class_captions(n))
            templates[name].add(text)
    assert sorted(templates) == sorted(CLASSES)
    assert all(len(found) > 1 for found in templates.values())


def test_png_samples_with_several_captions_read_back(captions_tfds_dir, tmp_path):
    """Shards of the tiny TFDS caption set (PNG images, 2 to 5 captions each) read with
    data.caption_key "captions": each sample's captions are all its TFDS captions."""
    source = data_config("tfds:contrastive_jax_captions_tiny:1.0.0", data_dir=captions_tfds_dir,
                         caption_key="captions/text")
    make_shards.write_shards(source, "train", "wds", str(tmp_path / "shards"), 2)
    cfg = data_config(f"wds:{tmp_path}/shards/*", caption_key="captions")
    stream = shard_source.train_source(cfg, 0, 0, 0, 1).stream
    found = {}
    for _, index, image, captions, count in stream.take(3).as_numpy_iterator():
        colour = int(tf.io.decode_png(image).numpy().mean().round())
        found[colour] = [c.decode() for c in captions[:count]]
    assert found == {40 * (i + 1): captions for i, captions in enumerate(TFDS_CAPTIONS)}


def test_the_split_size_is_the_shards_sample_count(shards):
    info = shard_index.dataset_info(data_config(source_of("tfrecord", shards)))
    assert info.num_train_examples == 10 * PER_CLASS and info.num_classes == 0


def test_two_view_methods_refuse_a_shard_source(shards):
    cfg = config_defaults.base("simclr").data
    cfg.update(dict(source=source_of("wds", shards), image_size=16, color_strength=0.5,
                    blur=False))
    with pytest.raises(DataError, match="only the image-text methods"):
        input_pipeline.train_iterator(cfg, global_batch_size=4, seed=0, process_index=0,
                                      process_count=1)



def test_clip_trains_from_shards(shards, tmp_path):
    """A short CLIP run (tiny towers) on wds shards: finite losses logged at every step, and
    no evaluator asks for the labels or retrieval captions the shards do not have."""
    config = image_text_config("clip", batch_size=8, total_steps=3, **{
        "data.source": source_of("wds", shards), "eval_every": 0})
    train.train_and_evaluate(config, str(tmp_path))
    with open(tmp_path / "metrics.jsonl") as f:
        rows = [json.loads(line) for line in f]
    steps = [row for row in rows if "loss" in row]
    assert [row["step"] for row in steps] == [1, 2, 3]
    assert all(np.isfinite(row["loss"]) for row in steps)
    assert not any(key.startswith(("zeroshot", "i2t", "t2i")) for row in rows for key in row)


def test_clip_cifar10_config_with_only_its_source_changed_reads_shards(shards):
    """configs/clip_cifar10.py with data.source = tfrecord shards: its steps come from the
    shards' count, it validates, no evaluator asks for labels, and its batches have the shapes
    its towers take (the slow test below trains it)."""
    config = load_config(os.path.join(REPO, "configs", "clip_cifar10.py"))
    config.data.source = source_of("tfrecord", shards)
    info = availability.dataset_info(config.data)
    config = config_checks.resolve_steps(config, info.num_train_examples)
    train_step.validate(config)
    assert config.total_steps == config.num_epochs  # 30 samples: one step of 256 an epoch.
    assert evaluators.names(config, methods.get("clip"), info) == ()
    batch = next(itp.train_iterator(config.data, global_batch_size=64, seed=0, process_index=0,
                                    process_count=1))
    size, length = config.data.image_size, config.data.max_text_len
    assert batch["image"].shape == (64, size, size, 3) and batch["text"].shape == (64, length)


@pytest.mark.slow
def test_clip_cifar10_config_with_only_its_source_changed_trains_from_shards(shards, tmp_path):
    """Its 3 epochs of the 30 samples: 3 steps of batch 256, the last logged, its loss finite."""
    config = load_config(os.path.join(REPO, "configs", "clip_cifar10.py"))
    config.data.source = source_of("tfrecord", shards)
    train.train_and_evaluate(config, str(tmp_path))
    with open(tmp_path / "metrics.jsonl") as f:
        losses = {row["step"]: row["loss"] for row in map(json.loads, f) if "loss" in row}
    assert max(losses) == 3 and all(np.isfinite(list(losses.values())))


def test_the_input_bench_times_both_shard_layouts_against_the_folder(images, capsys):
    input_bench.main([f"--source=folder:{images}", "--batch_size=10", "--steps=1", "--warmup=0",
                      "--shard_size=8", "--cases=image_text_folder,image_text_wds,"
                      "image_text_tfrecord"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [row["case"] for row in rows] == ["image_text_folder", "image_text_wds",
                                             "image_text_tfrecord", "ratio", "ratio"]
    assert all(row["examples_per_sec"] > 0 and row["steps"] == 1 for row in rows[:3])
    assert rows[3]["examples_per_sec_image_text_wds_over_folder"] > 0
    assert rows[4]["cpu_per_example_folder_over_image_text_tfrecord"] > 0
