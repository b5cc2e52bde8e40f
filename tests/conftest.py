"""Test setup: 8 simulated CPU devices for every test process, one persistent compilation
cache for all of them, and the data fixtures that test modules of several packages use.

XLA reads the device count when jax initialises its backends, so the flag is set here, before
any test module imports jax. Single-device code runs on the first of them. Many tests compile
the same tiny train steps (in pytest's workers and in the runs they start as subprocesses, which
inherit the environment): JAX's persistent cache keeps every program that took over a second to
compile, keyed by its HLO and flags, so each is compiled once per machine.
"""

import os
import tarfile
import tempfile

import pytest

NUM_SIMULATED_DEVICES = 8

os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", ""),
     f"--xla_force_host_platform_device_count={NUM_SIMULATED_DEVICES}"]).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), "contrastive_jax_test_compilation_cache"))


def _extract_per_class(archive: str, per_class: int, destination) -> None:
    """Unpacks the first `per_class` images of every class from one of the CIFAR archives."""
    counts: dict[str, int] = {}
    with tarfile.open(archive) as tar:
        for member in tar:
            label = member.name.split("/")[-2] if member.isfile() else None
            if label is not None and counts.get(label, 0) < per_class:
                counts[label] = counts.get(label, 0) + 1
                tar.extract(member, destination, filter="data")
            if len(counts) == 10 and min(counts.values()) >= per_class:
                return
    raise AssertionError(f"{archive} holds fewer than {per_class} images of some class: {counts}")


@pytest.fixture(scope="module")
def cifar_folder(tmp_path_factory):
    """1,000 training and 500 test images of ../shared/data/cifar10 as an image folder (its
    README says how the archives are laid out), unpacked into a temporary folder."""
    from support import CIFAR
    assert os.path.isdir(CIFAR), f"CIFAR-10 archives not found at {CIFAR} (../shared/data/cifar10)"
    root = tmp_path_factory.mktemp("cifar10")
    _extract_per_class(os.path.join(CIFAR, "train.tar.gz"), 100, root)
    _extract_per_class(os.path.join(CIFAR, "test.tar.gz"), 50, root)
    return root


@pytest.fixture(scope="module")
def captions_tfds_dir(tmp_path_factory):
    """The data_dir of tiny_tfds's caption set, prepared once per module."""
    from tiny_tfds import prepare_captions
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    prepare_captions(data_dir)
    return data_dir
