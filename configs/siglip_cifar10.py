"""SigLIP on CIFAR-10 as an image-text set: clip_cifar10's recipe (class-name prompt captions,
small ViT and text towers, zero-shot evaluation) with the sigmoid loss, a learnable scale
(init 10) and bias (init -10), and AdamW with beta2 0.95.

    python -m contrastive_jax.main --config=configs/siglip_cifar10.py --workdir=/tmp/siglip \
        --config.data.source=folder:/path/to/cifar10 [--config.loss.siglip_impl=ring]
"""

from contrastive_jax import config_presets


def get_config(arg=None):
    return config_presets.image_text_cifar10("siglip", arg)
