"""SwAV on CIFAR-10, in the settings the PyTorch SSL libraries (solo-learn) use for it.

    python -m contrastive_jax.main --config=configs/swav_cifar10.py --workdir=DIR \
        --config.data.source=folder:/path/to/cifar10

ResNet-18 (CIFAR stem), batch 256, solo-learn's LARS at 0.6 x B/256 (eta 0.02, the adapted
rate clipped at the learning rate, biases and BatchNorm excluded from decay and adaptation)
with weight decay 1e-6, 10 warmup epochs and 1000 of cosine decay, projection 2048-128 with
BatchNorm in its hidden layer, 3,000 prototypes frozen for the first 2 epochs, T = 0.1,
Sinkhorn epsilon 0.05 with 3 iterations, SimCLR's colour distortion at strength 1 with blur at
p = 0.5, a queue of the last 3,840 projections (15 batches) for Sinkhorn-Knopp from epoch 50
on. Two 32x32 views, as the libraries' CIFAR runs take; multi-crop is there for
other settings (`--config.data.small_crops=V`, see configs/swav_imagenet.py).
"""

from contrastive_jax import config_defaults, config_presets

CIFAR10_TRAIN_EXAMPLES = 50_000


def get_config(arg=None):
    del arg
    config = config_defaults.base("swav")
    config.batch_size = 256
    config.num_epochs = 1000.0
    config_presets.cifar10_run(config)
    config.data.color_strength = 1.0
    config.data.blur = True  # p = 0.5 (solo-learn's symmetric.yaml gaussian_prob)

    config.optimizer.name = "lars"
    config.optimizer.learning_rate = 0.6
    config.optimizer.lr_scaling = "linear"
    config.optimizer.weight_decay = 1e-6
    config.optimizer.warmup_epochs = 10.0
    config.optimizer.lars_trust_coefficient = 0.02  # solo-learn's eta
    config.optimizer.lars_clip = True  # solo-learn's clip_lr
    config.loss.freeze_prototypes_steps = 2 * (CIFAR10_TRAIN_EXAMPLES // config.batch_size)
    config.loss.queue_length = 3840
    config.loss.queue_start_steps = 50 * (CIFAR10_TRAIN_EXAMPLES // config.batch_size)
    return config
