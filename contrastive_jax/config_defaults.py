"""The fields every config shares, with defaults; each configs/*.py starts from `base(method)`.

Keeping one schema means `--config.key=value` overrides read the same in every config, and an
unknown key is refused by ml_collections before anything runs. A method's own fields (MoCo's
queue, the image-text towers) are added for that method only, so they cannot be set by mistake
on a config where they would mean nothing.
"""

import ml_collections


def base(method: str = "simclr") -> ml_collections.ConfigDict:
    """Defaults for every top-level, data, model, optimizer, loss and eval field, plus the
    fields of `method`."""
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.method = method
    config.batch_size = 512  # Global, over all devices and hosts.
    config.total_steps = -1  # <= 0: derived from num_epochs.
    config.num_epochs = 100.0
    config.parallel = "shard_map"  # or "pmap", or "fsdp" (state split over the devices)
    config.fsdp_size = 0  # "fsdp": devices each state array is split over; 0: all of them
    config.log_every = 50
    config.eval_every = 0  # 0: at the start (random init) and the end only; < 0: never.
    config.eval_at_start = True
    config.profile_steps = 0  # > 0: a jax.profiler trace of this many steps into the workdir
    config.checkpoint_every = 1000
    config.keep_checkpoints = 3
    # > 1: gradients over the batch in this many chunks per device (grad_cache.py), for batches
    # whose activations do not fit in one pass.
    config.grad_cache_chunks = 1

    config.data = ml_collections.ConfigDict()
    config.data.source = "demo"  # tfds:NAME[:VERSION] | folder:PATH | demo | synthetic
    config.data.data_dir = ml_collections.config_dict.placeholder(str)
    config.data.image_size = 32
    config.data.train_split = "train"
    config.data.eval_split = "test"
    config.data.color_strength = 1.0
    config.data.blur = False
    config.data.blur_prob = 0.5  # When blur is on; a pair (v1, v2) gives each view its own.
    config.data.crop_area_min = 0.08
    config.data.solarize_prob = 0.0
    config.data.grayscale_prob = 0.2
    config.data.brightness_mode = "multiply"  # x * f, or "add": x + f - 1 (see augment/spec.py)
    config.data.synthetic_num_examples = 10_000  # source "synthetic": random images (eval: 1/5)
    config.data.eval_crop_fraction = 1.0  # ImageNet: 0.875 (resize 256, centre crop 224)
    config.data.augment_on = "host"  # or "device": views drawn on the accelerators
    config.data.device_resident_max_mb = 4096  # "device": keep a split this small on the devices

    config.model = ml_collections.ConfigDict()
    config.model.name = "resnet18"
    config.model.width = 1
    config.model.base_width = 64
    config.model.stem = "cifar"  # or "imagenet"
    config.model.zero_init_residual = False
    config.model.head_layers = 2  # SimCLR v1: 2, v2: 3
    config.model.head_hidden_dim = ml_collections.config_dict.placeholder(int)  # None: feature dim
    config.model.head_out_dim = 128
    config.model.head_bn = True
    config.model.dtype = "float32"  # "bfloat16" on accelerators

    config.optimizer = ml_collections.ConfigDict()
    config.optimizer.name = "lars"
    config.optimizer.learning_rate = 0.3  # Base, before lr_scaling.
    config.optimizer.lr_scaling = "linear"  # base * B / 256 | "sqrt": base * sqrt(B) | "none"
    config.optimizer.weight_decay = 1e-6
    config.optimizer.weight_decay_mode = "lr_scaled"  # AdamW: or "decoupled" (big_vision)
    config.optimizer.momentum = 0.9
    config.optimizer.b1 = 0.9
    config.optimizer.b2 = 0.999
    config.optimizer.eps = 1e-8
    config.optimizer.warmup_steps = -1  # < 0: derived from warmup_epochs.
    config.optimizer.warmup_epochs = 10.0
    config.optimizer.schedule = "cosine"
    config.optimizer.grad_clip_norm = 0.0
    # Biases and norm parameters out of weight decay and LARS's adaptation (SimCLR's); False
    # decays and adapts every parameter (MoCo v2's and SupContrast's SGD, SwAV's LARC).
    config.optimizer.exclude_bias_and_norm = True
    config.optimizer.lars_trust_coefficient = 1e-3  # LARS's eta.
    config.optimizer.lars_clip = False  # LARC's clip mode: adapted rate at most lr (solo-learn).

    config.loss = ml_collections.ConfigDict()
    config.loss.temperature = 0.5

    config.eval = ml_collections.ConfigDict()
    config.eval.batch_size = 512
    # contrastive_jax/evaluation/evaluators.py: "knn", "linear", "zeroshot", "retrieval"; (): the method's
    # default (image methods: knn + linear; image-text: zeroshot + retrieval, where data allows).
    config.eval.evaluators = ()
    config.eval.knn_k = 200
    config.eval.knn_temperature = 0.1
    config.eval.linear_steps = 1000
    config.eval.linear_batch_size = 1024
    config.eval.linear_learning_rate = 0.01
    config.eval.linear_weight_decay = 1e-4
    # SimCLR's linear evaluation protocol (contrastive_jax/linear_eval.py), ImageNet settings;
    # the reference's CIFAR-10 command uses batch 512 for 100 epochs.
    config.eval.linear_eval = False  # End the training run with it.
    config.eval.linear_eval_epochs = 90.0
    config.eval.linear_eval_batch_size = 4096
    config.eval.linear_eval_learning_rate = 0.1  # Base: peak = base * B / 256, cosine, no warmup.
    config.eval.linear_eval_momentum = 0.9  # Nesterov.
    config.eval.linear_eval_crop_area_min = 0.08
    # The optimizer: "simclr" (Nesterov SGD, above) or "lars" (SimSiam's main_lincls --lars:
    # LARC over momentum SGD at the same base lr, batch and cosine).
    config.eval.linear_eval_protocol = "simclr"
    if method == "simclr":
        # Multiplies NT-Xent (the mean over 2N anchors): 2.0 is the reference's loss, the sum
        # of its two directions' means.
        config.loss.multiplier = 1.0
        # "dcl" | "dclw": the positive out of the denominator (Yeh et al. 2022); dclw also
        # weights the positive by its von Mises-Fisher weight at this sigma.
        config.loss.decoupled = "none"
        config.loss.dclw_sigma = 0.5
        # DCLW's weight out of the gradient (a weight on each positive's term, as lightly has
        # it); False differentiates it (the behaviour before this field existed).
        config.loss.dclw_detach_weight = True
    if method == "supcon":
        # SupContrast scales its loss by temperature / base_temperature.
        config.loss.base_temperature = 0.07
    if method == "moco":
        _add_moco_fields(config)
    if method == "nnclr":
        _add_nnclr_fields(config)
    if method == "byol":
        _add_byol_fields(config)
    if method == "simsiam":
        _add_simsiam_fields(config)
    if method == "moco_v3":
        _add_moco_v3_fields(config)
    if method == "swav":
        _add_swav_fields(config)
    if method in ("clip", "siglip"):
        _add_image_text_fields(config, method)
    return config


def _add_swav_fields(config: ml_collections.ConfigDict) -> None:
    """SwAV's defaults (Caron et al. 2020 and its reference code): 3,000 prototypes, T = 0.1,
    Sinkhorn epsilon 0.05 with 3 iterations, projection 2048-128 (BN in the hidden layer),
    LARS at 0.6 x B/256 (the CIFAR-scale runs of the PyTorch SSL libraries), wd 1e-6."""
    config.loss.temperature = 0.1
    config.loss.num_prototypes = 3000
    config.loss.sinkhorn_epsilon = 0.05
    config.loss.sinkhorn_iterations = 3
    config.loss.freeze_prototypes_steps = 0  # The reference freezes them for its first epoch.
    # Multi-crop: V extra views per example at a lower resolution; the paper's ImageNet runs take
    # 6 of 96 px from 5-14% of the image, its two views from 14-100% (data.crop_area_min).
    config.data.small_crops = 0
    config.data.small_crop_size = 96
    config.data.small_crop_area_min = 0.05
    config.data.small_crop_area_max = 0.14
    # The queue of earlier batches' projections for Sinkhorn-Knopp (0: none), filled from
    # queue_start_steps on; the reference's ImageNet runs at batch 256 take 3,840 from epoch 15.
    config.loss.queue_length = 0
    config.loss.queue_start_steps = 0
    config.model.head_layers = 2
    config.model.head_hidden_dim = 2048
    config.model.head_out_dim = 128
    # The projector ends in its last Dense, as the reference's; True adds SimCLR's output
    # BatchNorm (this project's SwAV head before the field existed).
    config.model.swav_output_bn = False
    config.optimizer.learning_rate = 0.6


def _add_moco_fields(config: ml_collections.ConfigDict) -> None:
    """MoCo v2's defaults (He et al. 2020, Chen et al. 2020b)."""
    config.loss.temperature = 0.2
    config.loss.queue_size = 65_536  # K negatives; a multiple of batch_size.
    config.loss.momentum = 0.999  # Key encoder EMA momentum m.
    config.loss.momentum_schedule = "constant"  # or "cosine": m rises to 1 (BYOL, MoCo v3).
    config.model.moco_bn = "shuffle"  # or "global" (synchronised BN over all devices).
    config.model.bn_splits = 1  # BN groups per device; > 1 for shuffling BN on one device.
    config.model.head_layers = 2
    config.model.head_hidden_dim = 2048
    config.model.head_out_dim = 128
    config.model.head_bn = False


def _add_byol_fields(config: ml_collections.ConfigDict) -> None:
    """BYOL's ImageNet defaults (Grill et al. 2020, section 3.3). No temperature: the loss is
    2 - 2 cos."""
    del config.loss["temperature"]
    config.loss.momentum = 0.996  # Target EMA tau at step 0 (tau_base).
    config.loss.momentum_schedule = "cosine"  # tau rises to 1 at total_steps; or "constant".
    config.model.head_layers = 2  # Projector: Dense 4096 -> BN -> ReLU -> Dense 256.
    config.model.head_hidden_dim = 4096
    config.model.head_out_dim = 256
    config.model.predictor_layers = 2  # Predictor: the projector's shape, 256 -> 4096 -> 256.
    config.model.predictor_hidden_dim = 4096
    # Where the MLPs' Dense layers have biases: "hidden" (before each BatchNorm, none on the
    # output: the reference's haiku MLP) or "output" (the reverse: SimSiam's predictor, and
    # this project's BYOL before the field existed).
    config.model.mlp_bias = "hidden"
    config.optimizer.name = "lars"
    config.optimizer.learning_rate = 0.2  # x B / 256.
    config.optimizer.weight_decay = 1.5e-6


def _add_simsiam_fields(config: ml_collections.ConfigDict) -> None:
    """SimSiam's ImageNet defaults (Chen & He 2021, section 3, baseline settings). No
    temperature: the loss is a negative cosine."""
    del config.loss["temperature"]
    config.model.head_layers = 3  # Projector: 3 x (Dense 2048 -> BN), ReLU between.
    config.model.head_hidden_dim = 2048
    config.model.head_out_dim = 2048
    config.model.predictor_layers = 2  # Predictor: the bottleneck 2048 -> 512 -> 2048.
    config.model.predictor_hidden_dim = 512
    config.model.zero_init_residual = True  # The reference's ResNet (zero_init_residual=True).
    config.eval.linear_eval_protocol = "lars"  # main_lincls.py --lars, batch 4096, base lr 0.1.
    config.optimizer.exclude_bias_and_norm = False  # The reference's SGD decays every parameter.
    config.optimizer.name = "sgd"
    config.optimizer.learning_rate = 0.05  # x B / 256.
    config.optimizer.weight_decay = 1e-4
    config.optimizer.warmup_epochs = 0.0
    # Parameter groups kept at the peak learning rate (optim.make_optimizer): the paper's
    # predictor; () decays it with the rest.
    config.optimizer.fixed_lr_params = ("predictor",)


def _add_moco_v3_fields(config: ml_collections.ConfigDict) -> None:
    """MoCo v3's ViT defaults (Chen, Xie and He 2021, appendix and the moco-v3 reference)."""
    config.model.name = "vit"  # or a ResNet name (the paper's projector then has 2 layers)
    config.model.variant = "S/16"  # ViT SIZE/PATCH, as the image-text towers name them
    config.model.depth = ml_collections.config_dict.placeholder(int)  # None: the variant's
    config.model.pool = "cls"
    config.model.freeze_patch_embed = True  # ViT only: the patch projection stays at its init.
    config.model.zero_init_residual = True  # ResNet only, as the reference builds it.
    config.model.head_layers = 3  # Projector; its last BatchNorm has no scale or bias.
    config.model.head_hidden_dim = 4096
    config.model.head_out_dim = 256
    config.model.predictor_layers = 2  # Predictor: 256 -> 4096 -> 256.
    config.model.predictor_hidden_dim = 4096
    # The predictor's last BatchNorm (no scale or bias): None takes the reference's for the
    # backbone, on after a ViT and off after a ResNet; runs from before the field had it off.
    config.model.predictor_output_bn = ml_collections.config_dict.placeholder(bool)
    config.loss.temperature = 0.2
    config.loss.multiplier = ml_collections.config_dict.placeholder(float)  # None: 2 x T
    config.loss.momentum = 0.99  # Momentum-encoder EMA m, raised to 1 on a cosine.
    config.loss.momentum_schedule = "cosine"  # or "constant"
    config.optimizer.name = "adamw"
    config.optimizer.exclude_bias_and_norm = False  # The reference's AdamW decays every parameter.
    config.optimizer.learning_rate = 1.5e-4  # x B / 256
    config.optimizer.weight_decay = 0.1
    config.optimizer.warmup_epochs = 40.0


def _add_nnclr_fields(config: ml_collections.ConfigDict) -> None:
    """NNCLR's ImageNet defaults (Dwibedi et al. 2021, 4.1): LARS 0.3 x B / 256 and weight
    decay 1e-6 as the base config's."""
    config.loss.temperature = 0.1
    config.loss.support_set_size = 98_304  # FIFO queue of past projections; x batch_size.
    config.model.head_layers = 3  # Projector: 2048 -> 2048 -> 256, BatchNorm after each.
    config.model.head_hidden_dim = 2048
    config.model.head_out_dim = 256
    config.model.predictor_hidden_dim = 4096  # Predictor: 256 -> 4096 (BN, ReLU) -> 256.


def _add_image_text_fields(config: ml_collections.ConfigDict, method: str) -> None:
    """Two towers, text input and AdamW: CLIP's defaults (Radford et al. 2021), or SigLIP's
    scale and bias (Zhai et al. 2023). No temperature: the scale is learned."""
    del config.loss["temperature"]
    config.data.tokenizer = "bytes"  # or the path of a SentencePiece .model file
    config.data.max_text_len = 32  # Tokens per caption, BOS and EOS included (CLIP: 77).
    # "": captions from class names (wds:/tfrecord: shards: their "txt"); else a TFDS text
    # feature, or the shards' column (a .json field or TFRecord feature; a list: several).
    config.data.caption_key = ""
    config.data.shard_window = 8  # wds:/tfrecord: shards read at once, shuffled together
    config.data.shuffle_buffer = 50_000  # Encoded samples shuffled at once (tfds:, shards)
    config.data.crop_area_min = 0.5

    config.model.name = "vit"  # or a ResNet name for a ResNet image tower
    config.model.variant = "B/16"  # ViT SIZE/PATCH: mu, Ti, S, M, B, L with any patch size
    config.model.depth = ml_collections.config_dict.placeholder(int)  # None: the variant's
    config.model.pool = "cls"  # or "gap"
    config.model.embed_dim = 512
    config.model.text_width = 512
    config.model.text_depth = 12
    config.model.text_heads = 8
    config.model.text_mlp_dim = ml_collections.config_dict.placeholder(int)  # None: 4 x width
    config.model.text_causal = True
    config.model.text_pool = "last"  # or "mean"
    config.model.scan_layers = False  # nn.scan over the transformer blocks (stacked params)
    config.model.text_dropout = 0.0  # Text tower dropout in training; SimCSE: 0.1.
    config.model.remat_policy = "none"  # or a jax.checkpoint_policies name (transformer.py)

    config.loss.init_scale = 1 / 0.07 if method == "clip" else 10.0  # exp(t') at init
    # SimCSE (Gao et al. 2021): weight * InfoNCE between two dropout views of each caption,
    # added to the image-text loss; 0 is off. Needs model.text_dropout > 0.
    config.loss.simcse_weight = 0.0
    config.loss.simcse_temperature = 0.05
    if method == "clip":
        config.loss.max_scale = 100.0
    else:
        config.loss.init_bias = -10.0
        config.loss.siglip_impl = "all_gather"  # or "ring"

    config.optimizer.name = "adamw"
    config.optimizer.learning_rate = 5e-4
    config.optimizer.lr_scaling = "none"
    config.optimizer.weight_decay = 0.2 if method == "clip" else 1e-4
    # SigLIP's decay is big_vision's: a fraction per step, not multiplied by the learning rate.
    config.optimizer.weight_decay_mode = "lr_scaled" if method == "clip" else "decoupled"
    config.optimizer.b2 = 0.98 if method == "clip" else 0.95
    config.optimizer.eps = 1e-6
    config.optimizer.grad_clip_norm = 1.0

    config.eval.captions_per_image = 5  # Retrieval on caption datasets.
    config.eval.zeroshot_source = ""  # Labelled source for zero-shot; "": data.source.
    config.eval.zeroshot_split = ""  # Its split; "": data.eval_split.
