"""A PyTorch reference for `bench.train_step`: one SimCLR train step on synthetic device batches.

    python -m contrastive_jax.bench.torch_simclr_step [--batch_size=256] [--image_size=224] \
        [--steps=10] [--warmup=3] [--arch=resnet50] [--stem=imagenet|cifar] \
        [--compile|--nocompile] [--dtype=bfloat16|float32] [--peak_tflops=0] \
        [--device=cuda|cpu]

The step is SimCLR v1's: a torchvision ResNet (`fc` replaced by the identity; `--stem=cifar`
takes a 3x3 stride-1 first convolution and no max-pool) on both views as one batch of 2N, so
BatchNorm sees all 2N views as in the JAX method; the projection head Linear-BN-ReLU-Linear-BN,
2048-2048-128 for ResNet-50 (hidden width `--head_hidden`, no bias before a BatchNorm, the last
BatchNorm with a scale and no shift, as in the SimCLR reference); NT-Xent at temperature 0.1
over the 2N views (anchor i's positive is its other view, the other 2N - 2 are negatives, the
mean over the 2N anchors), computed in float32; backward; and an optimizer step. The optimizer
is SGD with momentum 0.9 and weight decay 1e-6: torch has no LARS, so the JAX side's LARS (a
trust ratio per parameter on top of momentum) does a little more elementwise work per step than
this one. The model is in channels_last; with `--dtype=bfloat16` on CUDA the forward runs under
autocast to bfloat16 (the loss stays float32); `--compile` wraps the whole step function
(forward, loss, backward and optimizer step) in `torch.compile`: dynamo breaks the graph at the
backward and at the optimizer's entry, so the forward and loss (with their AOTAutograd backward)
and the optimizer step compile as separate graphs, and SGD's step compiles again on step 2, once
its momentum buffers exist: keep `--warmup` at 2 or more with `--compile`. On the CPU the step
runs in float32 whatever `--dtype` says, and the JSON line says float32.

The inputs are two random view batches [B, 3, H, W], uniform in [0, 1), made once on the device
and reused every step, as the JAX bench's device-resident random batches. `--steps` steps are
timed after `--warmup` steps (which include compilation), with `torch.cuda.synchronize()`
around the timed loop on CUDA. One JSON line is printed: seconds per step, examples per second
(an example = one image with its two views), views per second, the FLOPs of the step's matrix
products per example and the model TFLOP/s they give, and the MFU against `--peak_tflops` when
it is given. The FLOPs are counted by `torch.utils.flop_counter.FlopCounterMode` on one
uncompiled float32 forward and backward of a fresh copy of the model, head and loss at batch 2,
divided by 2: twice the multiply-adds of the convolutions and matrix products, forward and
backward, as `contrastive_jax/compilation/flops.py` counts them on the JAX side (BatchNorm, activations and
the optimizer are not counted on either side). For ResNet-50 at 224 both sides count 48.63
GFLOPs per example (3 x 2 x 4.1 GMACs x 2 views would be 49.2; the first convolution's input
gradient is not needed).
"""

from __future__ import annotations

import json
import platform
import time

import torch
import torch.nn.functional as F
import torchvision
from absl import app, flags
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from contrastive_jax import cli

flags.DEFINE_integer("batch_size", 256, "Images per step (each gives two views).")
flags.DEFINE_integer("image_size", 224, "Height and width of each view.")
flags.DEFINE_integer("steps", 10, "Timed steps.")
flags.DEFINE_integer("warmup", 3, "Untimed steps before the timed ones (compilation included).")
flags.DEFINE_string("arch", "resnet50", "A torchvision.models ResNet name.")
flags.DEFINE_enum("stem", "imagenet", ["imagenet", "cifar"],
                  "imagenet: 7x7 stride-2 conv and max-pool; cifar: 3x3 stride-1 conv, no pool.")
flags.DEFINE_integer("head_hidden", 2048, "Hidden width of the projection head.")
flags.DEFINE_integer("head_out", 128, "Output width of the projection head.")
flags.DEFINE_float("temperature", 0.1, "NT-Xent temperature.")
flags.DEFINE_float("learning_rate", 0.3, "Base SGD learning rate, times batch_size / 256.")
flags.DEFINE_bool("compile", True, "torch.compile the whole train step.")
flags.DEFINE_string("compile_mode", None, "torch.compile mode (None: the default).")
flags.DEFINE_enum("dtype", "bfloat16", ["bfloat16", "float32"],
                  "Compute dtype: bfloat16 is autocast on CUDA (float32 elsewhere).")
flags.DEFINE_float("peak_tflops", 0.0, "Dense peak TFLOP/s of the device, for the MFU; 0: none.")
flags.DEFINE_string("device", "cuda", "torch device: cuda or cpu.")
flags.DEFINE_integer("seed", 0, "Seed of the weights and the random views.")
FLAGS = flags.FLAGS


class SimCLRNet(nn.Module):
    """A torchvision ResNet without its classifier, then the SimCLR v1 projection head."""

    def __init__(self, arch: str, stem: str, head_hidden: int, head_out: int):
        super().__init__()
        encoder = getattr(torchvision.models, arch)(weights=None)
        if stem == "cifar":
            encoder.conv1 = nn.Conv2d(3, encoder.conv1.out_channels, 3, 1, 1, bias=False)
            encoder.maxpool = nn.Identity()
        features = encoder.fc.in_features
        encoder.fc = nn.Identity()
        last_bn = nn.BatchNorm1d(head_out)
        last_bn.bias.requires_grad_(False)  # The reference's last BN has a scale, no shift.
        self.encoder = encoder
        self.head = nn.Sequential(
            nn.Linear(features, head_hidden, bias=False), nn.BatchNorm1d(head_hidden),
            nn.ReLU(inplace=True), nn.Linear(head_hidden, head_out, bias=False), last_bn)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(images))


def nt_xent(z: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent over the 2N rows of `z` (view 1's N, then view 2's N), in float32: row i's
    positive is row (i + N) mod 2N, every other row but itself a negative; the mean over the 2N
    anchors."""
    with torch.autocast(z.device.type, enabled=False):
        z = F.normalize(z.float(), dim=1)
        num_views = z.shape[0]
        logits = z @ z.t() / temperature
        self_mask = torch.eye(num_views, dtype=torch.bool, device=z.device)
        logits = logits.masked_fill(self_mask, -1e9)  # Large, finite: no NaN in the backward.
        ids = torch.arange(num_views, device=z.device)
        return F.cross_entropy(logits, (ids + num_views // 2) % num_views)


def build_model(device: torch.device) -> SimCLRNet:
    model = SimCLRNet(FLAGS.arch, FLAGS.stem, FLAGS.head_hidden, FLAGS.head_out)
    return model.to(device=device, memory_format=torch.channels_last)


def make_step(model: nn.Module, optimizer: torch.optim.Optimizer, autocast_dtype):
    """The train step: forward of both views as one batch, loss, backward, optimizer step."""
    device_type = next(model.parameters()).device.type

    def step(view1: torch.Tensor, view2: torch.Tensor) -> torch.Tensor:
        images = torch.cat([view1, view2])
        with torch.autocast(device_type, dtype=autocast_dtype or torch.float32,
                            enabled=autocast_dtype is not None):
            z = model(images)
        loss = nt_xent(z, FLAGS.temperature)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step


def flops_per_example(device: torch.device) -> float:
    """FLOPs of one float32 forward and backward of a fresh model, head and loss at batch 2,
    per example (image with its two views), as FlopCounterMode counts them."""
    model = build_model(device)
    views = [torch.rand(2, 3, FLAGS.image_size, FLAGS.image_size, device=device)
             .contiguous(memory_format=torch.channels_last) for _ in range(2)]
    counter = FlopCounterMode(display=False)
    with counter:
        loss = nt_xent(model(torch.cat(views)), FLAGS.temperature)
        loss.backward()
    return counter.get_total_flops() / 2


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def main(argv) -> None:
    del argv
    torch.manual_seed(FLAGS.seed)
    device = torch.device(FLAGS.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.set_float32_matmul_precision("high")  # TF32 for float32, as XLA's default on GPU.
    autocast_dtype = torch.bfloat16 if FLAGS.dtype == "bfloat16" and device.type == "cuda" else None
    per_example = flops_per_example(device)

    model = build_model(device)
    model.train()
    learning_rate = FLAGS.learning_rate * FLAGS.batch_size / 256
    optimizer = torch.optim.SGD(model.parameters(), lr=learning_rate, momentum=0.9,
                                weight_decay=1e-6)
    step = make_step(model, optimizer, autocast_dtype)
    if FLAGS.compile:
        step = torch.compile(step, mode=FLAGS.compile_mode)
    shape = (FLAGS.batch_size, 3, FLAGS.image_size, FLAGS.image_size)
    view1, view2 = (torch.rand(shape, device=device).contiguous(memory_format=torch.channels_last)
                    for _ in range(2))

    for _ in range(FLAGS.warmup):
        loss = step(view1, view2)
    synchronize(device)
    start = time.perf_counter()
    for _ in range(FLAGS.steps):
        loss = step(view1, view2)
    synchronize(device)
    seconds = (time.perf_counter() - start) / FLAGS.steps

    tflops = per_example * FLAGS.batch_size / seconds / 1e12
    row = {"framework": "torch", "torch": torch.__version__, "model": FLAGS.arch,
           "stem": FLAGS.stem, "batch_size": FLAGS.batch_size, "image_size": FLAGS.image_size,
           "dtype": FLAGS.dtype if autocast_dtype is not None else "float32",
           "compile": FLAGS.compile, "device": device.type, "device_name": device_name(device),
           "seconds_per_step": round(seconds, 4),
           "examples_per_sec": round(FLAGS.batch_size / seconds, 1),
           "views_per_sec": round(2 * FLAGS.batch_size / seconds, 1),
           "train_gflops_per_example": round(per_example / 1e9, 2),
           "model_tflops_per_sec": round(tflops, 3),
           "loss": float(loss)}
    if FLAGS.peak_tflops > 0:
        row["mfu"] = round(tflops / FLAGS.peak_tflops, 4)
    if device.type == "cuda":
        row["max_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    app.run(cli.with_one_line_errors(main), flags_parser=cli.absl_flags_parser)
