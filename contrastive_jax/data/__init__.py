"""Input: sources (TFDS, image folders, the demo set, synthetic), each host's shard, the tf.data
training and evaluation pipelines, the image-text pipeline, device-resident input, tokenizers.

TensorFlow is imported by the modules here that build tf.data pipelines; `numpy_data` reads the
folder and synthetic sources without it, for runs whose views are drawn on the devices.
"""
