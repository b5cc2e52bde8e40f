"""SimCLR on CIFAR-10 with the paper's CIFAR settings (Chen et al. 2020, appendix B.9).

    python -m contrastive_jax.main --config=configs/simclr_cifar10.py:resnet18 \
        --workdir=gs://BUCKET/simclr_cifar10 --config.data.source=tfds:cifar10
    python -m contrastive_jax.main --config=configs/simclr_cifar10.py:resnet50 \
        --workdir=DIR --config.data.source=folder:/path/to/cifar10

    python -m contrastive_jax.main --config=configs/simclr_cifar10.py:resnet18_readme \
        --workdir=DIR --config.data.source=folder:/path/to/cifar10

ARG picks the encoder (resnet18 | resnet50; CIFAR stem: 3x3 conv, no max-pool). Batch 1024,
LARS with lr 1.0 * B / 256, weight decay 1e-6, temperature 0.5, colour strength 0.5, no blur,
10 warmup epochs, 1000 epochs of cosine decay, a 2-layer projection head, global BN. As the
reference (google-research/simclr): each residual block's last BatchNorm starts with scale 0,
and the loss is the sum of NT-Xent's two directions (`loss.multiplier = 2`). A `_readme` suffix
(resnet18_readme, resnet50_readme) takes the reference README's one-GPU CIFAR-10 command
instead: batch 512 and weight decay 1e-4. The data come from TFDS (`tfds:cifar10`) or an image
folder with train/ and test/ splits, such as the JPEG copy in ../shared/data/cifar10 unpacked.
"""

from contrastive_jax import config_defaults, config_presets


def get_config(arg=None):
    encoder, readme = (arg or "resnet18").removesuffix("_readme"), (arg or "").endswith("_readme")
    if encoder not in ("resnet18", "resnet50"):
        raise ValueError("simclr_cifar10 takes resnet18 or resnet50, optionally with _readme, "
                         f"got {arg!r}")
    config = config_defaults.base()
    config.method = "simclr"
    config.batch_size = 512 if readme else 1024
    config.num_epochs = 1000.0
    config_presets.cifar10_run(config, encoder)

    config.model.head_layers = 2
    config.model.zero_init_residual = True

    config.optimizer.name = "lars"
    config.optimizer.learning_rate = 1.0
    config.optimizer.lr_scaling = "linear"
    config.optimizer.weight_decay = 1e-4 if readme else 1e-6
    config.optimizer.warmup_epochs = 10.0

    config.loss.temperature = 0.5
    config.loss.multiplier = 2.0

    # The reference's CIFAR-10 linear evaluation: batch 512, 100 epochs, lr 0.1 x B / 256.
    config.eval.linear_eval_batch_size = 512
    config.eval.linear_eval_epochs = 100.0
    return config
