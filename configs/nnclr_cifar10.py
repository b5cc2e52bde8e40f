"""NNCLR on CIFAR-10: the paper's ImageNet recipe (Dwibedi et al. 2021, 4.1) on 32x32 images.

    python -m contrastive_jax.main --config=configs/nnclr_cifar10.py --workdir=/tmp/nnclr_cifar10 \
        --config.data.source=folder:/path/to/cifar10

ResNet-18 with the CIFAR stem, batch 512 for 1000 epochs, LARS with lr 0.3 x B / 256 = 0.6,
weight decay 1e-6, 10 warmup epochs then cosine decay, temperature 0.1, the paper's projector
(2048-2048-256) and predictor (4096-256). From SimCLR's CIFAR-10 settings (configs/
simclr_cifar10.py): colour strength 0.5 and no blur at 32x32. The support set is 16,384
projections, 32 batches: the paper's 98,304 is 24 of its batches of 4096 and 8% of ImageNet,
which at CIFAR-10's 50,000 images would hold two epochs of stale projections; 16,384 holds a
third of an epoch (solo-learn's CIFAR recipe uses 65,536 at batch 256).
"""

from contrastive_jax import config_defaults, config_presets


def get_config(arg=None):
    del arg
    config = config_defaults.base("nnclr")
    config.batch_size = 512
    config.num_epochs = 1000.0
    config_presets.cifar10_run(config)

    config.optimizer.name = "lars"
    config.optimizer.learning_rate = 0.3
    config.optimizer.lr_scaling = "linear"
    config.optimizer.weight_decay = 1e-6
    config.optimizer.warmup_epochs = 10.0

    config.loss.temperature = 0.1
    config.loss.support_set_size = 16_384
    return config
