"""BYOL on ImageNet with the paper's settings (Grill et al. 2020, section 3.3, appendix B).

    python -m contrastive_jax.main --config=configs/byol_imagenet.py \
        --workdir=gs://BUCKET/byol_r50_1000ep --config.data.data_dir=gs://BUCKET/tfds

ResNet-50 (ImageNet stem), batch 4096, 1000 epochs; LARS with lr 0.2 x B / 256 = 3.2, momentum
0.9, trust coefficient 1e-3, weight decay 1.5e-6, biases and BatchNorm excluded from decay and
adaptation; 10 warmup epochs, then cosine decay; target momentum tau from 0.996 to 1 on a
cosine; projector and predictor 4096 -> 256 with BatchNorm in the hidden layer; synchronised
BatchNorm; 224x224 crops of 8-100% of the area, bfloat16 compute. The views are asymmetric as
in the paper: Gaussian blur with p = 1.0 on view 1 and 0.1 on view 2 (sigma 0.1-2, a kernel
of 23 px), solarisation with p = 0 and 0.2; brightness adds a delta in [-0.4, 0.4] as the
reference's does (`data.brightness_mode = "add"`). Approximated: the paper's colour jitter is
brightness 0.4, contrast 0.4, saturation 0.2, hue 0.1 with p = 0.8; colour strength 0.5 gives
saturation 0.4. Written for a TPU pod slice (launch/tpu_pod.sh) reading tfds:imagenet2012.
"""

from contrastive_jax import config_defaults, config_presets


def get_config(arg=None):
    del arg
    config = config_defaults.base("byol")
    config.batch_size = 4096
    config.num_epochs = 1000.0
    config_presets.imagenet_run(config)
    config_presets.byol_views(config)
    config.data.brightness_mode = "add"  # The reference's x + delta, not SimCLR v2's x * factor.
    config.model.zero_init_residual = True  # The reference's blocks end in a BN scaled by 0.

    config.optimizer.learning_rate = 0.2
    config.optimizer.weight_decay = 1.5e-6
    config.optimizer.warmup_epochs = 10.0
    config.loss.momentum = 0.996

    config.eval.batch_size = 1024
    config.eval.linear_steps = 5000
    config.eval.linear_batch_size = 4096
    return config
