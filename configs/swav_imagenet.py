"""SwAV on ImageNet with multi-crop, as the reference's 800-epoch recipe (Caron et al. 2020,
75.3% linear top-1; facebookresearch/swav scripts/swav_800ep_pretrain.sh).

    python -m contrastive_jax.main --config=configs/swav_imagenet.py \
        --workdir=gs://BUCKET/swav_r50_800ep --config.data.data_dir=gs://BUCKET/tfds

ResNet-50 (ImageNet stem), batch 4096, 800 epochs; LARS at 0.3 x B / 256 = 4.8 with weight
decay 1e-6, 10 warmup epochs, then cosine decay; projection 2048-128 (BatchNorm in its hidden
layer), 3,000 prototypes frozen for the first 313 steps (one epoch), T = 0.1, Sinkhorn epsilon
0.05 with 3 iterations; LARC over every parameter (biases and BatchNorm decayed and adapted too, as the
reference's); synchronised BatchNorm, bfloat16 compute (the reference's fp16). Multi-crop: two
224 px views from 14-100% of the image and six 96 px crops from 5-14%, all with SimCLR's colour
distortion at strength 1 and blur with p = 0.5; the codes come from the two views. At this
batch the reference uses no queue. Approximated: its warmup starts at 0.3 (here at 0) and its
cosine ends at 0.0048 (here at 0).
"""

from contrastive_jax import config_defaults, config_presets

IMAGENET_TRAIN_EXAMPLES = 1_281_167


def get_config(arg=None):
    del arg
    config = config_defaults.base("swav")
    config.batch_size = 4096
    config.num_epochs = 800.0
    config_presets.imagenet_run(config)
    config.data.color_strength = 1.0
    config.data.crop_area_min = 0.14
    config.data.small_crops = 6
    config.data.small_crop_size = 96
    config.data.small_crop_area_min = 0.05
    config.data.small_crop_area_max = 0.14

    config.optimizer.name = "lars"
    config.optimizer.learning_rate = 0.3
    config.optimizer.lr_scaling = "linear"
    config.optimizer.weight_decay = 1e-6
    config.optimizer.warmup_epochs = 10.0
    config.optimizer.exclude_bias_and_norm = False  # The reference's LARC adapts all.
    config.loss.freeze_prototypes_steps = -(-IMAGENET_TRAIN_EXAMPLES // config.batch_size)  # 313
    config.eval.batch_size = 1024
    config.eval.linear_steps = 5000
    config.eval.linear_batch_size = 4096
    return config
