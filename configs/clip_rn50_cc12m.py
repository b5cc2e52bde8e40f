"""CLIP ResNet-50 on CC12M with open_clip's recipe: its README's CC12M run, whose released
weights (rn50-quickgelu-cc12m) reach 36.45% ImageNet zero-shot top-1 (docs/PRETRAINED.md).

    python -m contrastive_jax.main --config=configs/clip_rn50_cc12m.py --workdir=DIR \
        --config.data.source='wds:/data/cc12m/*.tar' --config.data.data_dir=TFDS_DIR \
        [--config.data.tokenizer=spm.model]

The README trains on CC12M's img2dataset webdataset shards (--train-num-samples 10,968,539)
with torchrun on 4 GPUs x --batch-size 320, --precision amp, and open_clip's defaults for the
rest (params.py): 32 epochs, AdamW lr 5e-4 with beta2 0.999 and eps 1e-8 for ResNets, weight
decay 0.2 (times the learning rate, as torch's AdamW; not on gains and biases), 10,000 warmup
steps then cosine decay, no gradient clipping; the logit scale starts at 1/0.07 and is clamped at
100. Here: global batch 1,280 in bfloat16, crops of 90-100% of the image (open_clip's
RandomResizedCrop scale), 77 tokens. Differences: the image tower is a standard ResNet-50 with
average pooling (CLIP's has a three-convolution stem and attention pooling) and the default
tokenizer reads bytes and keeps a caption's first 75 (CLIP's BPE, 75 tokens): pass a
SentencePiece model with data.tokenizer. Zero-shot top-1 is measured on tfds:imagenet2012.
"""

from contrastive_jax import config_presets


def get_config(arg=None):
    del arg
    config = config_presets.image_text_cc12m("clip")
    config.optimizer.learning_rate = 5e-4
    config.optimizer.b1 = 0.9
    config.optimizer.b2 = 0.999
    config.optimizer.eps = 1e-8
    config.optimizer.weight_decay = 0.2
    config.optimizer.weight_decay_mode = "lr_scaled"
    config.optimizer.grad_clip_norm = 0.0
    config.loss.init_scale = 1 / 0.07
    config.loss.max_scale = 100.0
    return config
