#!/usr/bin/env bash
# One machine: one GPU, several GPUs, or the CPU. Every device it sees joins the data axis.
#   launch/local.sh configs/simclr_cifar10.py:resnet18 /tmp/simclr_cifar10 [--config.key=value ...]
# Run it again with the same workdir to resume from the newest checkpoint.
set -euo pipefail
if [[ $# -lt 2 ]]; then
  echo "usage: $0 CONFIG[:ARG] WORKDIR [--config.key=value ...]" >&2
  exit 2
fi
config=$1 workdir=$2
shift 2
cd "$(dirname "$0")/.."
# Let XLA take GPU memory as it needs it rather than 75% up front, so tf.data and a second
# process (evaluation, TensorBoard) can share the card.
export XLA_PYTHON_CLIENT_PREALLOCATE="${XLA_PYTHON_CLIENT_PREALLOCATE:-false}"
exec python -m contrastive_jax.main --config="$config" --workdir="$workdir" "$@"
