"""CLIP ViT-B/16 with the paper's large-batch settings (Radford et al. 2021, appendix F), for a
TPU pod slice (launch/tpu_pod.sh).

    python -m contrastive_jax.main --config=configs/clip_vit_b16.py \
        --workdir=gs://BUCKET/clip_b16 --config.data.data_dir=gs://BUCKET/tfds \
        --config.data.tokenizer=gs://BUCKET/spm_32k.model

Batch 32,768; AdamW (beta1 0.9, beta2 0.98, eps 1e-6, weight decay 0.2 on kernels as optax.adamw
applies it, times the learning rate: weight_decay_mode "lr_scaled"), lr 5e-4, 2,000 warmup steps
then cosine decay, 32 epochs; scale init 1/0.07, clamped at 100.
Towers: ViT-B/16 at 224x224 (class-token pooling) and a 12-layer, 512-wide, 8-head causal text
transformer over 77 tokens, both projected to 512; bfloat16 compute. CLIP's WIT-400M is not
public: the default source is TFDS coco_captions (caption feature captions/text), and any TFDS
image-caption set works with data.source / data.caption_key. Zero-shot top-1 is measured on
eval.zeroshot_source (ImageNet by default).
"""

from contrastive_jax import config_presets


def get_config(arg=None):
    del arg
    config = config_presets.image_text_b16("clip")
    config.data.max_text_len = 77

    config.model.pool = "cls"
    config.model.embed_dim = 512
    config.model.text_width = 512
    config.model.text_depth = 12
    config.model.text_heads = 8

    config.optimizer.learning_rate = 5e-4
    config.optimizer.weight_decay = 0.2
    config.optimizer.b1 = 0.9
    config.optimizer.b2 = 0.98
    config.optimizer.eps = 1e-6
    config.optimizer.warmup_steps = 2000
    config.optimizer.grad_clip_norm = 0.0
    return config
