"""What several configs/*.py recipes share, on top of the schema (`config_defaults.base`): the
CIFAR-10 and ImageNet runs of the image methods, BYOL's asymmetric views, and the image-text
recipes at CIFAR-10 and ViT-B/16 scale."""

from __future__ import annotations

import ml_collections

from contrastive_jax.config_defaults import base


# size: (ViT variant, ViT depth, text width, text depth, epochs)
CIFAR10_TOWERS = {"mu": ("Ti/8", 4, 128, 2, 3.0), "ti": ("Ti/4", 12, 256, 6, 30.0)}


def image_text_cifar10(method: str, size: str | None) -> ml_collections.ConfigDict:
    """The CIFAR-10 image-text recipe of configs/clip_cifar10.py and siglip_cifar10.py: class-name
    prompt captions, small towers. `size` "mu" (default: ViT-Ti/8 of depth 4, 3 epochs) learns on
    2 CPU cores in minutes; "ti" (ViT-Ti/4, 30 epochs) is the same recipe for a GPU."""
    size = size or "mu"
    if size not in CIFAR10_TOWERS:
        raise ValueError(f"{method}_cifar10 takes one of {sorted(CIFAR10_TOWERS)}, got {size!r}")
    variant, depth, text_width, text_depth, epochs = CIFAR10_TOWERS[size]
    config = base(method)
    config.batch_size = 256
    config.num_epochs = epochs
    config.log_every = 20
    config.eval_every = 0
    config.checkpoint_every = 500

    config.data.source = "tfds:cifar10"
    config.data.image_size = 32
    config.data.crop_area_min = 0.5
    config.data.max_text_len = 48  # Bytes: the longest prompt has 43.

    config.model.name = "vit"
    config.model.variant = variant
    config.model.depth = depth
    config.model.pool = "gap"
    config.model.embed_dim = 128
    config.model.text_width = text_width
    config.model.text_depth = text_depth
    config.model.text_heads = 4

    config.optimizer.learning_rate = 1e-3
    config.optimizer.warmup_epochs = 1.0
    config.eval.batch_size = 500
    return config


def image_text_b16(method: str) -> ml_collections.ConfigDict:
    """What configs/clip_vit_b16.py and siglip_vit_b16.py share: batch 32,768 for 32 epochs of a
    TFDS image-caption set (coco_captions by default; the papers' WIT and WebLI are not public),
    ViT-B/16 at 224x224 in bfloat16, zero-shot on ImageNet. Each config adds its paper's towers,
    loss and optimizer settings."""
    config = _image_text_at_scale(method, batch_size=32_768, eval_batch_size=4096)
    config.data.source = "tfds:coco_captions"
    config.data.caption_key = "captions/text"
    config.data.eval_split = "val"
    config.data.eval_crop_fraction = 0.875
    config.model.name = "vit"
    config.model.variant = "B/16"
    return config


def image_text_cc12m(method: str) -> ml_collections.ConfigDict:
    """What configs/clip_rn50_cc12m.py and siglip_rn50_cc12m.py share: open_clip's CC12M run
    (its README: 4 GPUs x 320 = batch 1,280, 32 epochs, 10,000 warmup steps then cosine decay,
    its default for each), a ResNet-50 image tower at 224x224 (open_clip's crops: 90-100% of
    the area), CLIP's 12-layer 512-wide text transformer over 77 tokens, bfloat16, zero-shot on
    ImageNet. The data are img2dataset's webdataset shards at a placeholder glob."""
    config = _image_text_at_scale(method, batch_size=1280, eval_batch_size=1024)
    config.data.source = "wds:/path/to/cc12m/*.tar"  # --config.data.source=wds:GLOB
    config.data.max_text_len = 77
    config.model.name = "resnet50"
    config.model.stem = "imagenet"
    config.model.embed_dim = 1024
    config.model.text_width = 512
    config.model.text_depth = 12
    config.model.text_heads = 8
    config.optimizer.warmup_steps = 10_000
    return config


def _image_text_at_scale(method: str, *, batch_size: int, eval_batch_size: int
                         ) -> ml_collections.ConfigDict:
    """What the large image-text recipes share: 32 epochs at 224x224 (crops of 90-100% of the
    area) in bfloat16, a log line every 100 steps, a checkpoint every 2,000, zero-shot on
    ImageNet's validation split every 5,000 (TFDS's name for it) and not at the start."""
    config = base(method)
    config.batch_size = batch_size
    config.num_epochs = 32.0
    config.log_every = 100
    config.eval_every = 5000
    config.eval_at_start = False
    config.checkpoint_every = 2000
    config.data.image_size = 224
    config.data.crop_area_min = 0.9
    config.model.dtype = "bfloat16"
    config.eval.batch_size = eval_batch_size
    config.eval.zeroshot_source = "tfds:imagenet2012"
    config.eval.zeroshot_split = "validation"
    return config


def cifar10_run(config: ml_collections.ConfigDict,
                model: str | None = "resnet18") -> ml_collections.ConfigDict:
    """What the image methods' CIFAR-10 recipes share: TFDS cifar10 (or `folder:PATH`) at 32x32
    with SimCLR's CIFAR colour strength 0.5 and no blur, `model` (unless None) with the CIFAR
    stem, a log line every 50 steps, evaluation every 5,000 and a checkpoint every 1,000."""
    config.log_every = 50
    config.eval_every = 5000
    config.checkpoint_every = 1000
    config.data.source = "tfds:cifar10"
    config.data.image_size = 32
    config.data.color_strength = 0.5
    config.data.blur = False
    if model is not None:
        config.model.name = model
        config.model.stem = "cifar"
    return config


def imagenet_run(config: ml_collections.ConfigDict,
                 model: str | None = "resnet50") -> ml_collections.ConfigDict:
    """What the ImageNet recipes share: TFDS imagenet2012 at 224x224 (evaluation: resize to 256,
    centre crop 224) with blur, `model` (unless None) with the ImageNet stem, in bfloat16, a log
    line every 100 steps, a checkpoint every 2,500 and evaluation at the end only."""
    config.log_every = 100
    config.eval_every = 0
    config.eval_at_start = False
    config.checkpoint_every = 2500
    config.data.source = "tfds:imagenet2012"
    config.data.train_split = "train"
    config.data.eval_split = "validation"
    config.data.image_size = 224
    config.data.blur = True
    config.data.eval_crop_fraction = 0.875
    config.model.dtype = "bfloat16"
    if model is not None:
        config.model.name = model
        config.model.stem = "imagenet"
    return config


def byol_views(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """BYOL's asymmetric views (Grill et al. 2020, appendix B; MoCo v3 takes them too): crops of
    8-100%, colour strength 0.5, blur always on view 1 and one time in ten on view 2,
    solarisation one time in five on view 2 only."""
    config.data.crop_area_min = 0.08
    config.data.color_strength = 0.5
    config.data.blur = True
    del config.data["blur_prob"]  # A float by default; here a pair, one per view.
    config.data.blur_prob = (1.0, 0.1)
    del config.data["solarize_prob"]  # A float by default; here a pair, one per view.
    config.data.solarize_prob = (0.0, 0.2)
    return config
