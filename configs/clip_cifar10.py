"""CLIP on CIFAR-10 as an image-text set: captions built from the class names with prompt
templates, a small ViT and text transformer that learn on a laptop CPU in minutes.

    python -m contrastive_jax.main --config=configs/clip_cifar10.py --workdir=/tmp/clip_cifar10 \
        --config.data.source=folder:/path/to/cifar10

(../shared/data/cifar10's archives unpacked give the folder; `tfds:cifar10` works where TFDS is
prepared.) Each training image is paired with one of 8 prompts ("a photo of a {class}." ...)
drawn per example and epoch; evaluation is zero-shot classification of the test split with all 8
prompts of every class averaged (`zeroshot_top1`), as CLIP evaluates. ARG picks the image tower
size for the same recipe: "mu" (the default, 2-core CPU), "ti" (a GPU, ViT-Ti/4 of depth 6).
"""

from contrastive_jax import config_defaults


def get_config(arg=None):
    return config_defaults.image_text_cifar10("clip", arg)
