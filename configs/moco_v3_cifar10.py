"""MoCo v3 on CIFAR-10 with a ViT of patch 4 at 32x32 (64 patches and a class token).

    python -m contrastive_jax.main --config=configs/moco_v3_cifar10.py:mu \
        --workdir=/tmp/moco_v3_cifar10 --config.data.source=folder:/path/to/cifar10

The method's settings are the paper's (Chen, Xie and He 2021): T = 0.2 and the loss times 2T,
m = 0.99 rising to 1 on a cosine, AdamW lr 1.5e-4 x B / 256 (= 3e-4 at batch 512), weight
decay 0.1, a 3-layer projector and a 2-layer predictor with BatchNorm, the patch projection
frozen. The CIFAR-scale numbers are ours, not the paper's (it pretrains on ImageNet only):
batch 512; crops of 20-100% of the area (MoCo's CIFAR-10 demo), colour strength 0.5, no blur at
32x32, solarisation on view 2 with p = 0.2 (BYOL's). ARG picks the network:

- "mu" (default; a 2-core CPU): ViT-mu/4 of depth 4 (width 32), heads 1024 wide, 10 epochs
  with 1 warmup epoch;
- "ti" (a GPU): ViT-Ti/4 (12 blocks, width 192), heads 4096 wide, 300 epochs with 40 warmup
  epochs, the ViT-S recipe's schedule.
"""

from contrastive_jax import config_defaults, config_presets

# size: (ViT variant, depth (None: the variant's), head hidden width, epochs, warmup epochs)
SIZES = {"mu": ("mu/4", 4, 1024, 10.0, 1.0), "ti": ("Ti/4", None, 4096, 300.0, 40.0)}


def get_config(arg=None):
    size = arg or "mu"
    if size not in SIZES:
        raise ValueError(f"moco_v3_cifar10 takes one of {sorted(SIZES)}, got {size!r}")
    variant, depth, hidden, epochs, warmup = SIZES[size]
    config = config_defaults.base("moco_v3")
    config.batch_size = 512
    config.num_epochs = epochs
    config_presets.cifar10_run(config, model=None)
    config.eval_every = 0

    config.data.crop_area_min = 0.2
    del config.data["solarize_prob"]  # A float by default; here a pair, one per view.
    config.data.solarize_prob = (0.0, 0.2)

    config.model.variant = variant
    config.model.depth = depth
    config.model.head_hidden_dim = hidden
    config.model.predictor_hidden_dim = hidden

    config.optimizer.warmup_epochs = warmup
    config.eval.batch_size = 500
    return config
