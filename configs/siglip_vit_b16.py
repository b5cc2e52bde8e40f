"""SigLIP ViT-B/16 with the paper's large-batch settings (Zhai et al. 2023), for a TPU pod slice
(launch/tpu_pod.sh).

    python -m contrastive_jax.main --config=configs/siglip_vit_b16.py \
        --workdir=gs://BUCKET/siglip_b16 --config.data.data_dir=gs://BUCKET/tfds \
        --config.data.tokenizer=gs://BUCKET/spm_32k.model

Batch 32,768; the sigmoid loss with learnable t' = log 10 and b = -10, computed with the ring
implementation (text blocks passed between devices, never the global logits); AdamW with
beta2 0.95, lr 1e-3, weight decay 1e-4, 5,000 warmup steps then cosine decay. Towers: ViT-B/16
at 224x224 (average pooling) and a 12-layer, 768-wide bidirectional text transformer over 64
tokens, pooled at its last token, projected to 768; bfloat16 compute. AdamW's weight decay is
big_vision's decoupled form (`optimizer.weight_decay_mode = "decoupled"`: 1e-4 of each kernel and
embedding per step times the schedule's multiplier, not times the learning rate): the value the
SigLIP 2 paper gives for its from-scratch big_vision runs at lr 1e-3 (big_vision's one public
SigLIP config, a LiT fine-tune on COCO with the image tower frozen, uses 0.01). WebLI is not
public: the default source is TFDS coco_captions; zero-shot top-1 is measured on
eval.zeroshot_source (ImageNet's validation split by default).
"""

from contrastive_jax import config_presets


def get_config(arg=None):
    del arg
    config = config_presets.image_text_b16("siglip")
    # The public SigLIP B/16 models read 64 tokens. With the default byte tokenizer (BOS and EOS
    # take 2) that keeps 62 bytes: most COCO captions whole (16 would keep 14 bytes).
    config.data.max_text_len = 64

    config.model.pool = "gap"
    config.model.embed_dim = 768
    config.model.text_width = 768
    config.model.text_depth = 12
    config.model.text_heads = 12
    config.model.text_causal = False
    config.model.text_pool = "last"

    config.loss.init_scale = 10.0
    config.loss.init_bias = -10.0
    config.loss.siglip_impl = "ring"

    config.optimizer.learning_rate = 1e-3
    config.optimizer.weight_decay = 1e-4
    config.optimizer.b2 = 0.95
    config.optimizer.warmup_steps = 5000
    config.optimizer.grad_clip_norm = 1.0
    return config
