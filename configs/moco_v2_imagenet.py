"""MoCo v2 on ImageNet with the paper's settings (Chen, Fan, Girshick, He 2020, "Improved
Baselines with Momentum Contrastive Learning"; MoCo: He et al. 2020).

    python -m contrastive_jax.main --config=configs/moco_v2_imagenet.py \
        --workdir=gs://BUCKET/moco_v2 --config.data.data_dir=gs://BUCKET/tfds

ResNet-50 (ImageNet stem), batch 256, SGD with momentum 0.9, lr 0.03 x B/256, weight decay 1e-4,
cosine decay without warmup, 200 epochs; temperature 0.2, a queue of K = 65,536 keys, key encoder
momentum 0.999, MLP head 2048-128 without BN; MoCo v2 augmentation: crops of 20-100% of the area,
colour jitter (0.4, 0.4, 0.4, 0.1) with p 0.8, grayscale 0.2, blur p 0.5. Shuffling BN across
the devices (MoCo ran 8 GPUs of 32 examples; on one device set model.bn_splits = 8).
"""

from contrastive_jax import config_defaults, config_presets


def get_config(arg=None):
    del arg
    config = config_defaults.base("moco")
    config.batch_size = 256
    config.num_epochs = 200.0
    config_presets.imagenet_run(config)
    config.checkpoint_every = 5000

    config.data.crop_area_min = 0.2
    config.data.color_strength = 0.5
    config.model.moco_bn = "shuffle"

    config.optimizer.name = "sgd"
    config.optimizer.learning_rate = 0.03
    config.optimizer.lr_scaling = "linear"
    config.optimizer.weight_decay = 1e-4
    config.optimizer.exclude_bias_and_norm = False  # The reference decays every parameter.
    config.optimizer.momentum = 0.9
    config.optimizer.warmup_epochs = 0.0

    config.loss.temperature = 0.2
    config.loss.queue_size = 65_536
    config.loss.momentum = 0.999

    config.eval.batch_size = 1024
    config.eval.linear_steps = 5000
    config.eval.linear_batch_size = 4096
    return config
