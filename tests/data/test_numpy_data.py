"""The path without TensorFlow against the tf.data path on the same JPEGs, and a short training
with evaluation in a process where `import tensorflow` fails."""

import collections
import json
import os
import subprocess
import sys
import tarfile

import ml_collections
import numpy as np
import pytest

from contrastive_jax.data import device_input, input_pipeline, numpy_data

from support import CIFAR, REPO



@pytest.fixture(scope="module")
def small_cifar(tmp_path_factory) -> str:
    """30 training and 10 test JPEGs of each CIFAR-10 class, in the folder layout."""
    root = tmp_path_factory.mktemp("cifar")
    for split, per_class in (("train", 30), ("test", 10)):
        counts: collections.Counter = collections.Counter()
        with tarfile.open(os.path.join(CIFAR, f"{split}.tar.gz")) as tar:
            for member in tar:
                name = member.name.split("/")
                if member.isfile() and counts[name[-2]] < per_class:
                    counts[name[-2]] += 1
                    tar.extract(member, root, filter="data")
    return str(root)


def data_config(root: str, **overrides) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({"source": f"folder:{root}", "image_size": 32,
                                      "train_split": "train", "eval_crop_fraction": 1.0,
                                      **overrides})


def test_pil_decoding_equals_tensorflows_accurate_idct(small_cifar):
    """PIL decodes JPEGs with libjpeg's accurate integer IDCT: exactly TF's decode_jpeg with
    dct_method="INTEGER_ACCURATE". The tf.data path (decode_image, TF's fast IDCT) differs by a
    few levels in some pixels."""
    import tensorflow as tf
    config = data_config(small_cifar)
    images, labels = numpy_data.load_split(config, "train")
    paths, _, _ = numpy_data.folder_files(small_cifar, "train", "train")
    accurate = np.stack([tf.io.decode_jpeg(tf.io.read_file(p), channels=3,
                                           dct_method="INTEGER_ACCURATE").numpy() for p in paths])
    assert images.shape == (300, 32, 32, 3) and images.dtype == np.uint8
    np.testing.assert_array_equal(images, accurate)
    tf_images, tf_labels = device_input.load_split(config, "train")  # tf.data, TF installed.
    np.testing.assert_array_equal(labels, tf_labels)
    difference = np.abs(images.astype(int) - tf_images.astype(int))
    assert difference.mean() < 1.5 and difference.max() <= 8  # Levels of 255.
    assert numpy_data.dataset_info(config) == (300, 10)


@pytest.mark.parametrize("image_size,crop_fraction", [(32, 1.0), (24, 0.875)])
def test_eval_batches_equal_the_tf_pipelines(small_cifar, image_size, crop_fraction):
    config = data_config(small_cifar, image_size=image_size, eval_crop_fraction=crop_fraction)
    ours = list(numpy_data.eval_batches(config, "test", global_batch_size=64,
                                        process_index=0, process_count=1))
    theirs = list(input_pipeline.eval_iterator(config, "test", global_batch_size=64,
                                               process_index=0, process_count=1))
    assert len(ours) == len(theirs) == 2  # 100 images: one full batch, one padded.
    for a, b in zip(ours, theirs):
        np.testing.assert_array_equal(a["mask"], b["mask"])
        np.testing.assert_array_equal(a["label"], b["label"])
        difference = np.abs(a["image"] - b["image"])  # The IDCTs differ by a few levels.
        assert difference.max() <= 8 / 255 and difference.mean() < 1.5 / 255


def test_images_of_two_sizes_are_refused_by_name(tmp_path):
    from PIL import Image
    for name, size in (("a.png", 8), ("b.png", 9)):
        (tmp_path / "train" / "cls").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (size, size)).save(tmp_path / "train" / "cls" / name)
    with pytest.raises(numpy_data.DataError, match="b.png"):
        numpy_data.load_split(data_config(str(tmp_path)), "train")


def test_training_with_evaluation_where_tensorflow_cannot_be_imported(small_cifar, tmp_path):
    """`import tensorflow` (and tensorflow_datasets) fail in the run's process; the views are
    drawn on the device, the kNN and linear evaluations read the folders with PIL."""
    workdir = tmp_path / "run"
    argv = ["main", "--config=configs/simclr_cifar10.py", f"--workdir={workdir}",
            f"--config.data.source=folder:{small_cifar}", "--config.data.augment_on=device",
            "--config.batch_size=32", "--config.total_steps=4", "--config.model.base_width=4",
            "--config.eval.batch_size=64", "--config.log_every=2",
            "--config.checkpoint_every=2"]
    program = ("import sys, runpy\n"
               "for name in ('tensorflow', 'tensorflow_datasets'):\n"
               "    sys.modules[name] = None  # import raises ImportError\n"
               f"sys.argv = {argv!r}\n"
               "runpy.run_module('contrastive_jax.main', run_name='__main__', alter_sys=True)\n")
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                            timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "no TensorBoard events" in result.stderr
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    evaluations = [row for row in rows if "knn_top1" in row]
    assert [row["step"] for row in evaluations] == [0, 4]
    assert all(0.0 <= row["knn_top1"] <= 1.0 and 0.0 <= row["linear_top1"] <= 1.0
               for row in evaluations)
    assert [row["step"] for row in rows if "loss" in row] == [2, 4]
    assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4"]


def test_step_benchmark_where_tensorflow_cannot_be_imported():
    program = ("import sys, runpy\n"
               "for name in ('tensorflow', 'tensorflow_datasets'):\n"
               "    sys.modules[name] = None\n"
               "sys.argv = ['train_step', '--config=configs/demo.py', '--steps=1',\n"
               "            '--config.batch_size=8']\n"
               "runpy.run_module('contrastive_jax.bench.train_step', run_name='__main__',\n"
               "                 alter_sys=True)\n")
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                            timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    row = json.loads(result.stdout.strip().splitlines()[-1])
    assert row["batch_size"] == 8 and row["seconds_per_step"] > 0
    assert row["train_gflops_per_example"] > 0
