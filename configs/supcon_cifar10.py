"""Supervised contrastive learning on CIFAR-10 (Khosla et al. 2020), the reference CIFAR recipe.

    python -m contrastive_jax.main --config=configs/supcon_cifar10.py:resnet50 \
        --workdir=/tmp/supcon_cifar10 --config.data.source=folder:/path/to/cifar10

ARG picks the encoder (resnet18 | resnet50, CIFAR stem). As SupContrast (Khosla et al.'s code):
batch 1024, SGD with momentum 0.9 at lr 0.5, weight decay 1e-4, 10 warmup epochs then cosine
decay over 1000 epochs, temperature 0.1 with the loss scaled by T / 0.07, a 2-layer head
2048 (ResNet-50) / 512 (ResNet-18) - 128 without BatchNorm, crops of 20% to 100% of the image,
colour jitter 0.4/0.4/0.4/0.1 (SimCLR strength 0.5), no blur, global BN in the encoder. Every
other view of the same class is a positive.
"""

from contrastive_jax import config_defaults, config_presets


def get_config(arg=None):
    encoder = arg or "resnet18"
    if encoder not in ("resnet18", "resnet50"):
        raise ValueError(f"supcon_cifar10 takes resnet18 or resnet50, got {encoder!r}")
    config = config_defaults.base("supcon")
    config.batch_size = 1024
    config.num_epochs = 1000.0
    config_presets.cifar10_run(config, encoder)

    config.data.crop_area_min = 0.2
    config.model.head_layers = 2
    config.model.head_out_dim = 128
    config.model.head_bn = False

    config.optimizer.name = "sgd"
    config.optimizer.learning_rate = 0.5
    config.optimizer.lr_scaling = "none"
    config.optimizer.weight_decay = 1e-4
    config.optimizer.exclude_bias_and_norm = False  # The reference decays every parameter.
    config.optimizer.warmup_epochs = 10.0

    config.loss.temperature = 0.1
    config.loss.base_temperature = 0.07
    return config
