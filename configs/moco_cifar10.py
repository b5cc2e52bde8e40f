"""MoCo v2 on CIFAR-10: the ImageNet recipe scaled to 32x32 images as MoCo's own CIFAR-10 demo
does (ResNet-18 with the CIFAR stem, a smaller queue and momentum, split BN on one device).

    python -m contrastive_jax.main --config=configs/moco_cifar10.py --workdir=/tmp/moco_cifar10 \
        --config.data.source=folder:/path/to/cifar10

Batch 512, SGD lr 0.06 x B/256 (momentum 0.9, weight decay 5e-4), cosine decay, 200 epochs,
temperature 0.1, K = 4,096, m = 0.99, shuffling BN in groups of 64 (bn_splits = 8 on one device;
on 8 devices set --config.model.bn_splits=1 for the same groups), no blur at 32x32.
"""

from contrastive_jax import config_defaults, config_presets


def get_config(arg=None):
    del arg
    config = config_defaults.base("moco")
    config.batch_size = 512
    config.num_epochs = 200.0
    config_presets.cifar10_run(config)

    config.data.crop_area_min = 0.2
    config.model.head_hidden_dim = 512
    config.model.moco_bn = "shuffle"
    config.model.bn_splits = 8

    config.optimizer.name = "sgd"
    config.optimizer.learning_rate = 0.06
    config.optimizer.lr_scaling = "linear"
    config.optimizer.weight_decay = 5e-4
    config.optimizer.exclude_bias_and_norm = False  # The reference decays every parameter.
    config.optimizer.warmup_epochs = 0.0

    config.loss.temperature = 0.1
    config.loss.queue_size = 4096
    config.loss.momentum = 0.99
    return config
