"""The data side where TensorFlow may be absent (many GPU images): a split's size and classes
from tf.data or without it, and TensorFlow kept off the accelerators where it is present."""

from __future__ import annotations

import ml_collections


def dataset_info(data_config: ml_collections.ConfigDict):
    """The training split's size and classes: from data_sources (tf.data), or where TensorFlow
    is absent from numpy_data (folder and synthetic sources)."""
    from contrastive_jax.data import numpy_data
    if not numpy_data.tensorflow_available():
        return numpy_data.dataset_info(data_config)
    from contrastive_jax.data import sources as data_sources
    return data_sources.dataset_info(data_config)


def keep_tensorflow_off_accelerators() -> None:
    """Hides the GPUs from TensorFlow, which only runs tf.data here; nothing where TensorFlow
    is absent (many GPU images), as the device path needs none."""
    from contrastive_jax.data import numpy_data
    if numpy_data.tensorflow_available():
        import tensorflow as tf
        tf.config.set_visible_devices([], "GPU")
