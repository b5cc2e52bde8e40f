"""BYOL on CIFAR-10: ResNet-18 with the CIFAR stem (3x3 conv, no max-pool), batch 512.

    python -m contrastive_jax.main --config=configs/byol_cifar10.py --workdir=/tmp/byol_cifar10 \
        --config.data.source=folder:/path/to/cifar10

The BYOL paper (Grill et al. 2020) pretrains on ImageNet only; where its recipe is not
CIFAR-specific it is kept, and the CIFAR numbers are solo-learn's (scripts/pretrain/cifar/
byol.yaml and augmentations/asymmetric.yaml, the usual CIFAR reference for BYOL):

- paper: projector and predictor 4096 -> 256 with BatchNorm in the hidden layer; LARS with
  lr 0.2 x B / 256 (= 0.4), momentum 0.9, trust coefficient 1e-3, biases and BatchNorm
  excluded from decay and adaptation; 10 warmup epochs, then cosine decay; tau on a cosine to 1.
- solo-learn: 1000 epochs; tau from 0.99; weight decay 1e-5; crops of 8-100% of the area,
  colour jitter 0.4 / 0.4 / 0.2 / 0.1 with p = 0.8 (here colour strength 0.5, whose saturation
  is 0.4), grayscale p = 0.2, no blur at 32x32, solarisation on view 2 with p = 0.2.

solo-learn's LARS (lr 1.0 x B / 256 with eta 0.02 and the LARC clipping of the adapted rate) is
a different optimizer from optim.py's; its learning rate is not carried over.
"""

from contrastive_jax import config_defaults, config_presets


def get_config(arg=None):
    del arg
    config = config_defaults.base("byol")
    config.batch_size = 512
    config.num_epochs = 1000.0
    config_presets.cifar10_run(config)

    config.data.crop_area_min = 0.08
    del config.data["solarize_prob"]  # A float by default; here a pair, one per view.
    config.data.solarize_prob = (0.0, 0.2)

    config.optimizer.warmup_epochs = 10.0
    config.optimizer.weight_decay = 1e-5
    config.loss.momentum = 0.99
    config.eval.batch_size = 500
    return config
