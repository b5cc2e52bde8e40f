#!/usr/bin/env bash
# A Cloud TPU VM pod slice: create it, copy this checkout to every worker, install, and run main
# on all workers at once (--worker=all). jax.distributed.initialize() finds the other workers by
# itself; checkpoints, metrics and TensorBoard events go to a gs:// workdir.
#
#   TPU_NAME=simclr ZONE=us-central2-b ACCELERATOR=v4-64 \
#     launch/tpu_pod.sh configs/simclr_imagenet.py:100 gs://BUCKET/simclr_r50 \
#       --config.data.data_dir=gs://BUCKET/tfds
#
# Rerunning the same command resumes from the newest checkpoint; a preempted slice (SIGTERM)
# saves a checkpoint first. Set CREATE=0 to reuse an existing slice.
#
# Before it creates a slice, the config's train step is compiled here for ACCELERATOR
# (python -m contrastive_jax.aot, needs '.[aot]'; seconds to minutes): a run that cannot fit the
# slice's HBM stops here, with the changes that would fit, and costs no slice. FIT_CHECK=0
# skips the check.
set -euo pipefail
if [[ $# -lt 2 ]]; then
  echo "usage: TPU_NAME=... ZONE=... ACCELERATOR=... $0 CONFIG[:ARG] gs://WORKDIR [--config.key=value ...]" >&2
  exit 2
fi
config=$1 workdir=$2
shift 2
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}" "${ACCELERATOR:=v4-32}"
: "${RUNTIME_VERSION:=tpu-ubuntu2204-base}" "${CREATE:=1}" "${FIT_CHECK:=1}"
repo=$(cd "$(dirname "$0")/.." && pwd)

if [[ "$FIT_CHECK" == 1 ]]; then
  report=$(cd "$repo" && JAX_PLATFORMS=cpu python -m contrastive_jax.aot --config="$config" \
    --topology="$ACCELERATOR" "$@" | tee /dev/stderr | tail -n 1)
  if [[ $(python -c 'import json, sys; print(json.loads(sys.argv[1])["fits"])' "$report") != True ]]; then
    echo "error: $config does not fit $ACCELERATOR (see above); not creating a slice (FIT_CHECK=0 skips this check)" >&2
    exit 1
  fi
fi

if [[ "$CREATE" == 1 ]]; then
  gcloud compute tpus tpu-vm create "$TPU_NAME" --zone="$ZONE" \
    --accelerator-type="$ACCELERATOR" --version="$RUNTIME_VERSION"
fi

archive=$(mktemp -d)/contrastive_jax.tar.gz
git -C "$repo" archive --format=tar.gz -o "$archive" HEAD
gcloud compute tpus tpu-vm scp "$archive" "$TPU_NAME":~/ --zone="$ZONE" --worker=all

overrides=$(printf ' %q' "$@")
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all --command="
  set -e
  mkdir -p ~/contrastive_jax && tar -xzf ~/contrastive_jax.tar.gz -C ~/contrastive_jax
  cd ~/contrastive_jax
  python3 -m venv ~/venv && . ~/venv/bin/activate
  pip install -q -U pip && pip install -q -e '.[tpu]'
  python -m contrastive_jax.main --config=$config --workdir=$workdir $overrides \
    2>&1 | tee -a ~/train.log
"
