#!/usr/bin/env bash
# SimCLR, ResNet-18 (CIFAR stem), CIFAR-10, batch 512, 200 epochs, kNN (k = 200) every 10 epochs,
# on one GPU: the setting of the PyTorch SSL libraries' CIFAR-10 tables (kNN 0.83 reported there
# at 200 epochs, 0.89 at 800). Views are drawn on the GPU from the training set kept in GPU memory
# (data.augment_on=device), in bfloat16. The recipe is the SimCLR reference README's one-GPU
# CIFAR-10 command (LARS lr 1.0 x B / 256, weight decay 1e-4, T = 0.5), cut to 200 epochs.
#
#   bash repro/simclr_cifar10_gpu.sh [CIFAR10_DIR] [WORKDIR] [--config.key=value ...]
#
# CIFAR10_DIR holds train/<class>/*.jpg and test/<class>/*.jpg (default: ../shared/data/cifar10
# unpacked into /tmp/cifar10). The kNN curve is in WORKDIR/metrics.jsonl (knn_top1 rows).
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:-/tmp/cifar10}
workdir=${2:-/tmp/simclr_cifar10_gpu}
shift $(( $# > 2 ? 2 : $# ))
if [[ ! -d "$data/train" ]]; then
  mkdir -p "$data"
  for split in train test; do tar -xzf "../shared/data/cifar10/$split.tar.gz" -C "$data"; done
fi
steps_per_epoch=$(( 50000 / 512 ))
exec python -m contrastive_jax.main --config=configs/simclr_cifar10.py:resnet18_readme \
  --workdir="$workdir" --config.data.source="folder:$data" --config.data.augment_on=device \
  --config.batch_size=512 --config.num_epochs=200 --config.model.dtype=bfloat16 \
  --config.eval_every=$(( 10 * steps_per_epoch )) --config.eval.knn_k=200 \
  --config.checkpoint_every=$(( 10 * steps_per_epoch )) "$@"
