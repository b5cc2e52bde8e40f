"""SimSiam on CIFAR-10 with the paper's CIFAR settings (Chen & He 2021, appendix, CIFAR
experiments).

    python -m contrastive_jax.main --config=configs/simsiam_cifar10.py \
        --workdir=/tmp/simsiam_cifar10 --config.data.source=folder:/path/to/cifar10

ResNet-18 with the CIFAR stem (3x3 conv, no max-pool), batch 512, SGD with momentum 0.9 and
lr 0.03 x B / 256 (= 0.06), weight decay 5e-4, no warmup, cosine decay over 800 epochs; the
projector has 2 layers on CIFAR (2048 wide, BatchNorm on both, the last without affine), the
predictor the 2048 -> 512 -> 2048 bottleneck, its learning rate kept fixed
(`optimizer.fixed_lr_params`). Augmentations are the paper's ImageNet ones without blur at
32x32: crops of 20-100% of the area, colour jitter 0.4 / 0.4 / 0.4 / 0.1 with p = 0.8 (colour
strength 0.5), grayscale p = 0.2. Weight decay covers BatchNorm parameters and biases too, as
the reference's SGD (`optimizer.exclude_bias_and_norm = False`). Linear evaluation is the
reference's LARS protocol (`eval.linear_eval_protocol = "lars"`).
"""

from contrastive_jax import config_defaults, config_presets


def get_config(arg=None):
    del arg
    config = config_defaults.base("simsiam")
    config.batch_size = 512
    config.num_epochs = 800.0
    config_presets.cifar10_run(config)

    config.data.crop_area_min = 0.2
    config.model.head_layers = 2

    config.optimizer.learning_rate = 0.03
    config.optimizer.weight_decay = 5e-4
    config.optimizer.warmup_epochs = 0.0
    config.eval.batch_size = 500
    return config
