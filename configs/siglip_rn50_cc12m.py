"""SigLIP ResNet-50 on CC12M: clip_rn50_cc12m's data, towers, batch 1,280 and schedule (32
epochs, 10,000 warmup steps then cosine decay) with the sigmoid loss (Zhai et al. 2023).

    python -m contrastive_jax.main --config=configs/siglip_rn50_cc12m.py --workdir=DIR \
        --config.data.source='wds:/data/cc12m/*.tar' --config.data.data_dir=TFDS_DIR

open_clip publishes no SigLIP ResNet-50 on CC12M; this is the CLIP recipe with the loss and the
optimizer of siglip_vit_b16.py: learnable scale t' = log 10 and bias -10, AdamW lr 1e-3 with
beta2 0.95, big_vision's decoupled weight decay 1e-4, gradients clipped at norm 1.
"""

from contrastive_jax import config_presets


def get_config(arg=None):
    del arg
    config = config_presets.image_text_cc12m("siglip")
    config.loss.init_scale = 10.0
    config.loss.init_bias = -10.0
    config.optimizer.learning_rate = 1e-3
    config.optimizer.b2 = 0.95
    config.optimizer.weight_decay = 1e-4
    config.optimizer.weight_decay_mode = "decoupled"
    config.optimizer.grad_clip_norm = 1.0
    return config
