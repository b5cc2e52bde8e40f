"""CLIP on CIFAR-10 as an image-text set: captions built from the class names with prompt
templates, a small ViT and text transformer that learn on a laptop CPU in minutes.

    python -m contrastive_jax.main --config=configs/clip_cifar10.py --workdir=/tmp/clip_cifar10 \
        --config.data.source=folder:/path/to/cifar10

(../shared/data/cifar10's archives unpacked give the folder; `tfds:cifar10` works where TFDS is
prepared.) Each training image is paired with one of the 8 training templates filled with its
class name ("a picture of a {class}." ...), drawn per example and epoch; evaluation is zero-shot
classification of the test split with the 12 held-out evaluation templates of every class
averaged (`zeroshot_top1`, contrastive_jax/evaluation/zeroshot.py), so no evaluation prompt was ever a
training caption. ARG picks the tower sizes for the same recipe: "mu" (the default, 2-core CPU),
"ti" (a GPU: ViT-Ti/4 of 12 blocks, a 6-layer 256-wide text transformer, 30 epochs).
"""

from contrastive_jax import config_presets


def get_config(arg=None):
    return config_presets.image_text_cifar10("clip", arg)
