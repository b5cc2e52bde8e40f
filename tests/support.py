"""What many test modules share: the repository's path, tiny configs, random batches and
states, tree comparisons, and the command line run as a long subprocess.

conftest.py's directory (tests/) is on sys.path, so any test module imports these as
`from support import tiny_config`.
"""

import os
import shutil
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from ml_collections.config_flags import config_flags

from contrastive_jax import config_defaults


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CIFAR = os.path.join(os.path.dirname(REPO), "shared", "data", "cifar10")


def tiny_config(method="simclr", **overrides):
    """A ResNet-18 of base width 4 on 16x16 synthetic images, 16 per global batch."""
    config = config_defaults.base(method)
    config.batch_size = 16
    config.total_steps = 4
    config.log_every = 1
    config.checkpoint_every = 2
    config.eval_at_start = False
    config.data.source = "synthetic"
    config.data.synthetic_num_examples = 64
    config.data.image_size = 16
    config.model.base_width = 4
    config.model.head_out_dim = 16
    config.optimizer.warmup_steps = 1
    config.eval.batch_size = 16
    config.eval.knn_k = 5
    config.eval.linear_steps = 5
    for key, value in overrides.items():
        target = config
        *path, leaf = key.split(".")
        for part in path:
            target = target[part]
        target[leaf] = value
    return config


def image_text_config(method, **overrides):
    """Tiny towers (a ViT-mu/4 and a 1-layer text transformer) on 16x16 synthetic images."""
    return tiny_config(method, **{
        "model.variant": "mu/4", "model.embed_dim": 16, "model.text_width": 32,
        "model.text_depth": 1, "model.text_heads": 2, "data.max_text_len": 24,
        "eval.batch_size": 16, "eval_every": -1, "total_steps": 3, **overrides})


def first_per_class(root, destination, per_class, split="train"):
    """Copies the first `per_class` images (by name) of each class of ROOT/split into
    DESTINATION/split; returns DESTINATION, a smaller image folder."""
    for class_dir in sorted((root / split).iterdir()):
        target = destination / split / class_dir.name
        target.mkdir(parents=True)
        for path in sorted(class_dir.iterdir())[:per_class]:
            shutil.copyfile(path, target / path.name)
    return destination


def synthetic_batches(config, count):
    """`count` random host batches of the shapes `config`'s method trains on."""
    rng = np.random.default_rng(0)
    n, size = config.batch_size, config.data.image_size
    if config.method in ("clip", "siglip"):
        return [{"image": rng.random((n, size, size, 3), np.float32),
                 "text": rng.integers(1, 259, (n, config.data.max_text_len)).astype(np.int32)}
                for _ in range(count)]
    return [{"view1": rng.random((n, size, size, 3), np.float32),
             "view2": rng.random((n, size, size, 3), np.float32),
             "label": rng.integers(0, 10, n).astype(np.int32)} for _ in range(count)]


def final_params(workdir):
    manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"))
    restored = manager.restore(manager.latest_step())
    return manager.latest_step(), restored["params"]


def assert_trees_equal(a, b, rtol=0.0, atol=0.0):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol, atol=atol), a, b)


def random_like(shapes, seed: int = 0):
    """Arrays of the shapes and dtypes of a tree of ShapeDtypeStructs, filled by leaf name
    with non-trivial values (and no compiled initialisation): He-scaled convolutions, scales
    and (positive) variances around 1, small numbers elsewhere, so features stay finite."""
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = getattr(path[-1], "key", None)
        if name == "kernel" and len(leaf.shape) == 4:  # A convolution.
            return rng.normal(0, np.sqrt(2 / np.prod(leaf.shape[:-1])), leaf.shape)
        if name in ("scale", "var"):
            return rng.uniform(0.5, 1.5, leaf.shape)
        return rng.normal(0, 0.1, leaf.shape)  # Dense kernels, biases, means, embeddings.

    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: fill(path, leaf).astype(leaf.dtype), shapes)


def load_config(spec: str) -> ml_collections.ConfigDict:
    """What `--config=SPEC` gives main (absl's config-file flag parser)."""
    return config_flags.ConfigFileFlagParser(name="config").parse(spec)


class TinyEncoder(nn.Module):
    """One strided convolution, BatchNorm over `bn_axis_name`, ReLU, global average pool."""

    bn_axis_name: str | None

    @nn.compact
    def __call__(self, images, train):
        x = nn.Conv(8, (3, 3), strides=(2, 2))(images)
        x = nn.BatchNorm(use_running_average=not train, axis_name=self.bn_axis_name)(x)
        return jnp.mean(nn.relu(x), axis=(1, 2))


def long_run(workdir: str) -> subprocess.Popen:
    """The CLI on a tiny synthetic run of 100,000 steps, logging every step, in a subprocess
    (stderr piped), for tests that signal or race a run in progress."""
    command = [sys.executable, "-m", "contrastive_jax.main", "--config=configs/demo.py",
               f"--workdir={workdir}", "--config.data.source=synthetic",
               "--config.data.synthetic_num_examples=64", "--config.data.image_size=8",
               "--config.model.base_width=2", "--config.batch_size=16",
               "--config.total_steps=100000", "--config.log_every=1", "--config.eval_every=-1",
               "--config.checkpoint_every=100000"]
    env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
