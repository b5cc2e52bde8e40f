"""MoCo v3 with ViT-S/16 on ImageNet, the paper's settings (Chen, Xie and He 2021, "An Empirical
Study of Training Self-Supervised Vision Transformers", appendix; the moco-v3 reference).

    python -m contrastive_jax.main --config=configs/moco_v3_vit_small.py \
        --workdir=gs://BUCKET/moco_v3_vit_small --config.data.data_dir=gs://BUCKET/tfds

Batch 4096, AdamW lr 1.5e-4 x B / 256 = 2.4e-3 (betas 0.9, 0.999), weight decay 0.1, 40 warmup
epochs then cosine decay, 300 epochs; T = 0.2 and the loss times 2T; the momentum encoder's m
rises from 0.99 to 1 on a cosine; weight decay on every parameter; projector
384-4096-4096-256 (BatchNorm, the last without scale or bias), predictor 256-4096-256 ending
in BatchNorm without scale or bias, BatchNorm synchronised over all devices; the patch
projection frozen at its random initialisation; the class token's final state is the feature.
Views as BYOL's, which the reference uses: crops of 8-100% of the area at 224x224, colour
jitter with p = 0.8, grayscale p = 0.2, Gaussian blur on view 1 always and on view 2 with
p = 0.1, solarisation on view 2 with p = 0.2; bfloat16 compute. Written for a TPU pod slice
(launch/tpu_pod.sh) reading tfds:imagenet2012 prepared in data_dir.

Approximations: colour strength 0.5 gives jitter (0.4, 0.4, 0.4, 0.1), the reference's
saturation is 0.2; the ViT's position embeddings are learned, the reference's fixed 2-D
sin-cos (see contrastive_jax/methods/moco_v3.py).
"""

from contrastive_jax import config_defaults, config_presets


def get_config(arg=None):
    del arg
    config = config_defaults.base("moco_v3")
    config.batch_size = 4096
    config.num_epochs = 300.0
    config_presets.imagenet_run(config, model=None)
    config_presets.byol_views(config)

    config.model.variant = "S/16"

    config.eval.batch_size = 1024
    config.eval.linear_steps = 5000
    config.eval.linear_batch_size = 4096
    return config
