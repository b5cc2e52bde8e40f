"""NNCLR on ImageNet with the paper's settings (Dwibedi et al. 2021, section 4.1).

    python -m contrastive_jax.main --config=configs/nnclr_imagenet.py \
        --workdir=gs://BUCKET/nnclr_r50 --config.data.data_dir=gs://BUCKET/tfds

ResNet-50 (ImageNet stem), batch 4096 for 1000 epochs, LARS with lr 0.3 x B / 256 = 4.8,
weight decay 1e-6, momentum 0.9, 10 warmup epochs then cosine decay, temperature 0.1, a support
set of 98,304 projections (24 batches), a 3-layer projector 2048-2048-256 and a 2-layer
predictor 4096-256, global BatchNorm, 224x224 crops, bfloat16 compute. The paper draws BYOL's
asymmetric augmentations; this config keeps SimCLR's symmetric ones (colour strength 1.0, blur
with p 0.5 on both views). Written for a TPU pod slice (launch/tpu_pod.sh) reading
tfds:imagenet2012 prepared in data_dir.
"""

from contrastive_jax import config_defaults, config_presets


def get_config(arg=None):
    del arg
    config = config_defaults.base("nnclr")
    config.batch_size = 4096
    config.num_epochs = 1000.0
    config_presets.imagenet_run(config)
    config.data.color_strength = 1.0

    config.optimizer.name = "lars"
    config.optimizer.learning_rate = 0.3
    config.optimizer.lr_scaling = "linear"
    config.optimizer.weight_decay = 1e-6
    config.optimizer.warmup_epochs = 10.0

    config.loss.temperature = 0.1
    config.loss.support_set_size = 98_304

    config.eval.batch_size = 1024
    config.eval.linear_steps = 5000
    config.eval.linear_batch_size = 4096
    return config
