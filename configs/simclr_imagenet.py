"""SimCLR on ImageNet with the paper's large-batch settings (Chen et al. 2020, section 4).

    python -m contrastive_jax.main --config=configs/simclr_imagenet.py:1000 \
        --workdir=gs://BUCKET/simclr_r50_1000ep --config.data.data_dir=gs://BUCKET/tfds

ARG is the number of epochs (100 or 1000; default 100). ResNet-50 (ImageNet stem), batch 4096,
LARS with lr 0.3 * B / 256 = 4.8, weight decay 1e-6, momentum 0.9, 10 warmup epochs then cosine
decay, temperature 0.1, a 2-layer projection head 2048-2048-128, global BatchNorm, colour
strength 1.0 and Gaussian blur, 224x224 crops, bfloat16 compute. As the reference
(google-research/simclr): each residual block's last BatchNorm starts with scale 0, and the loss
is the sum of NT-Xent's two directions (`loss.multiplier = 2`; with LARS only weight decay's
share of the update notices). Written for a TPU pod slice (launch/tpu_pod.sh) reading
tfds:imagenet2012 prepared in data_dir.
"""

from contrastive_jax import config_defaults, config_presets


def get_config(arg=None):
    epochs = int(arg or 100)
    config = config_defaults.base()
    config.method = "simclr"
    config.batch_size = 4096
    config.num_epochs = float(epochs)
    config_presets.imagenet_run(config)

    config.data.color_strength = 1.0
    config.model.width = 1
    config.model.head_layers = 2
    config.model.head_hidden_dim = 2048
    config.model.head_out_dim = 128
    config.model.zero_init_residual = True

    config.optimizer.name = "lars"
    config.optimizer.learning_rate = 0.3
    config.optimizer.lr_scaling = "linear"
    config.optimizer.weight_decay = 1e-6
    config.optimizer.momentum = 0.9
    config.optimizer.warmup_epochs = 10.0

    config.loss.temperature = 0.1
    config.loss.multiplier = 2.0

    config.eval.batch_size = 1024
    config.eval.knn_k = 200
    config.eval.linear_steps = 5000
    config.eval.linear_batch_size = 4096
    return config
