"""The fields every config shares, with defaults; each configs/*.py starts from `base()`.

Keeping one schema means `--config.key=value` overrides read the same in every config, and an
unknown key is refused by ml_collections before anything runs.
"""

import ml_collections


def base() -> ml_collections.ConfigDict:
    """Defaults for every top-level, data, model, optimizer, loss and eval field."""
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.method = "simclr"
    config.batch_size = 512  # Global, over all devices and hosts.
    config.total_steps = -1  # <= 0: derived from num_epochs.
    config.num_epochs = 100.0
    config.parallel = "shard_map"  # or "pmap"
    config.log_every = 50
    config.eval_every = 0  # 0: at the start (random init) and the end only; < 0: never.
    config.eval_at_start = True
    config.checkpoint_every = 1000
    config.keep_checkpoints = 3

    config.data = ml_collections.ConfigDict()
    config.data.source = "demo"  # tfds:NAME[:VERSION] | folder:PATH | demo | synthetic
    config.data.data_dir = ml_collections.config_dict.placeholder(str)
    config.data.image_size = 32
    config.data.train_split = "train"
    config.data.eval_split = "test"
    config.data.color_strength = 1.0
    config.data.blur = False
    config.data.crop_area_min = 0.08
    config.data.solarize_prob = 0.0
    config.data.synthetic_num_examples = 10_000  # source "synthetic": random images (eval: 1/5)
    config.data.eval_crop_fraction = 1.0  # ImageNet: 0.875 (resize 256, centre crop 224)

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
    config.optimizer.momentum = 0.9
    config.optimizer.b1 = 0.9
    config.optimizer.b2 = 0.999
    config.optimizer.eps = 1e-8
    config.optimizer.warmup_steps = -1  # < 0: derived from warmup_epochs.
    config.optimizer.warmup_epochs = 10.0
    config.optimizer.schedule = "cosine"
    config.optimizer.grad_clip_norm = 0.0

    config.loss = ml_collections.ConfigDict()
    config.loss.temperature = 0.5

    config.eval = ml_collections.ConfigDict()
    config.eval.batch_size = 512
    config.eval.knn_k = 200
    config.eval.knn_temperature = 0.1
    config.eval.linear_steps = 1000
    config.eval.linear_batch_size = 1024
    config.eval.linear_learning_rate = 0.01
    config.eval.linear_weight_decay = 1e-4
    return config
