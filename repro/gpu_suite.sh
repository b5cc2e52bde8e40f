#!/usr/bin/env bash
# One-command GPU benchmark suite for one NVIDIA H200 (or H100): run it on the device machine in
# one call, from anywhere inside the repository,
#
#   bash repro/gpu_suite.sh [OUT_DIR]              # default: $OUT if set, else /tmp/gpu_suite
#   SMOKE=1 bash repro/gpu_suite.sh /tmp/suite_smoke   # every part tiny, on the CPU
#
# It writes JSON lines into OUT_DIR/suite.jsonl (also echoed to stdout) and each part's full log
# into OUT_DIR/PART.log. A part that fails (non-zero exit, timeout, no JSON line, non-finite
# numbers) is recorded as {"part": ..., "error": ...} and the suite goes on; the suite exits 1
# when any part failed. The parts, in order, each bounded so that all of them end within
# SUITE_SECONDS (530 s, under the 9 minutes the device machine allows one command):
#
#   machine         nvidia-smi's name, memory and driver; jax, jaxlib, torch, flax, optax versions
#   r50_jax         bench.train_step on configs/simclr_imagenet.py (SimCLR ResNet-50, 224 px,
#                   bfloat16, LARS) at batch R50_BATCH, shard_map: seconds per step, examples/s,
#                   matrix-product GFLOPs per example, model TFLOP/s and MFU against PEAK_TFLOPS
#   r50_torch       bench.torch_simclr_step, the PyTorch reference of the same step (torchvision
#                   ResNet-50, head 2048-2048-128, NT-Xent T = 0.1, SGD momentum, bf16 autocast,
#                   channels_last, torch.compile) at the same batch: the same quantities
#   siglip_jax      bench.train_step on configs/siglip_vit_b16.py (SigLIP ViT-B/16 + 12-layer
#                   text tower, 224 px, bfloat16) at batch SIGLIP_BATCH, all_gather sigmoid loss
#   simclr_cifar10  repro/simclr_cifar10_gpu.sh (SimCLR ResNet-18 on all of CIFAR-10, batch 512,
#                   views drawn on the GPU, bfloat16) for CIFAR_EPOCHS epochs: the kNN top-1
#                   curve [[step, knn_top1], ...], the wall-clock, and "finite": false (a failure)
#                   when any loss or knn_top1 in its metrics.jsonl, or the encoder's features, are
#                   not finite (jax on CPU has returned non-finite bfloat16 ResNet features)
#
# Environment variables:
#   PEAK_TFLOPS=989      dense bfloat16 peak of one H100/H200 SXM (NVIDIA's datasheet), for MFU
#   R50_BATCH=256        images per step (512 views) of both ResNet-50 parts; H200's 139 GiB hold
#                        it with room to spare (512 likely fits too)
#   SIGLIP_BATCH=512     image-text pairs per step of the SigLIP part
#   CIFAR_EPOCHS=30      epochs of the CIFAR-10 run. NOT MEASURED: a guess for about 5 minutes on
#                        an H200. To tune, read the simclr_cifar10 line's wall_seconds and
#                        seconds_per_epoch (wall-clock including start-up and evaluations) and set
#                        CIFAR_EPOCHS to about 300 / seconds_per_epoch
#   CIFAR_EVAL_EVERY     steps between kNN evaluations (default: 5 epochs, 485 steps)
#   SUITE_SECONDS=530    wall-clock budget of the whole suite; parts are cut to fit it
#   WORK_DIR=/tmp/gpu_suite_work   unpacked CIFAR-10 and the run's checkpoints, kept out of
#                        OUT_DIR so that only logs and JSON come back from the device machine
#   SMOKE=1              every part tiny on the CPU (JAX_PLATFORMS=cpu): batch 8 at 32 px with
#                        base width 2 for the JAX ResNet, torch ResNet-18 uncompiled in float32,
#                        a micro SigLIP, and 4 CIFAR steps on a 500-image subset
#
# The CIFAR-10 tarballs are looked for in shared/data/cifar10 inside the repository first (the
# device machine gets the repository only: copy them there, into an ignored folder), then in
# ../shared/data/cifar10. Wheels of pure-Python packages the machine lacks (ml_collections, clu)
# may be carried in .whl/: they are installed offline into /tmp/site, put on PYTHONPATH.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT_DIR=${1:-${OUT:-/tmp/gpu_suite}}
SMOKE=${SMOKE:-0}
PEAK_TFLOPS=${PEAK_TFLOPS:-989}
if [[ $SMOKE == 1 ]]; then
  R50_BATCH=${R50_BATCH:-8} SIGLIP_BATCH=${SIGLIP_BATCH:-8} SUITE_SECONDS=${SUITE_SECONDS:-2400}
  export JAX_PLATFORMS=cpu
else
  R50_BATCH=${R50_BATCH:-256} SIGLIP_BATCH=${SIGLIP_BATCH:-512} SUITE_SECONDS=${SUITE_SECONDS:-530}
fi
CIFAR_EPOCHS=${CIFAR_EPOCHS:-30}
CIFAR_BATCH=512  # repro/simclr_cifar10_gpu.sh's
CIFAR_EVAL_EVERY=${CIFAR_EVAL_EVERY:-$(( 5 * 50000 / CIFAR_BATCH ))}
WORK_DIR=${WORK_DIR:-/tmp/gpu_suite_work}
PYTHON=${PYTHON:-python3}
SUITE=$OUT_DIR/suite.jsonl
START=$SECONDS
FAILED=0

# Python helpers: JSON in and out, so that bash never formats JSON itself.
read -r -d '' HELPER <<'PY' || true
import json, math, os, platform, subprocess, sys

def out(row):
    line = json.dumps(row)
    with open(os.environ["SUITE"], "a") as f:
        f.write(line + "\n")
    print(line, flush=True)

def lines(part, log, seconds):
    rows = []
    for text in open(log, errors="replace"):
        text = text.strip()
        if text.startswith("{"):
            try:
                rows.append(json.loads(text))
            except ValueError:
                pass
    for row in rows:
        out({"part": part, **row, "part_seconds": int(seconds)})
    sys.exit(0 if rows else 1)

def error(part, message):
    out({"part": part, "error": message})

def machine():
    row = {"part": "machine", "host": platform.node(), "cpus": os.cpu_count(),
           "python": platform.python_version()}
    try:
        row["nvidia_smi"] = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
             "--format=csv,noheader"], capture_output=True, text=True, timeout=60,
            check=True).stdout.strip().splitlines()
    except (OSError, subprocess.SubprocessError) as e:
        row["nvidia_smi"] = f"unavailable: {e}"
    from importlib import metadata
    wanted = {"torch", "torchvision", "flax", "optax", "orbax-checkpoint", "ml-collections",
              "clu", "numpy", "einops", "pillow", "absl-py", "tensorflow"}
    versions = {}
    for dist in metadata.distributions():
        name = (dist.metadata["Name"] or "").lower().replace("_", "-")
        if name in wanted or name.startswith(("jax", "nvidia-cudnn")):
            versions[name] = dist.version
    row["packages"] = dict(sorted(versions.items()))
    try:
        import jax
        row["jax_devices"] = [d.device_kind for d in jax.devices()]
    except Exception as e:
        row["jax_devices"] = f"unavailable: {e}"
    out(row)

def cifar(metrics, log, wall, epochs_requested, batch, num_train, rc, limit):
    rows = []
    if os.path.exists(metrics):
        rows = [json.loads(t) for t in open(metrics) if t.strip()]
    finite = lambda v: isinstance(v, (int, float)) and math.isfinite(v)
    curve = [[r["step"], r["knn_top1"]] for r in rows if "knn_top1" in r]
    values = [r[k] for r in rows for k in ("loss", "knn_top1") if k in r]
    text = open(log, errors="replace").read() if os.path.exists(log) else ""
    ok = bool(values) and all(map(finite, values)) and "not all finite" not in text \
        and "FloatingPointError" not in text
    last_step = max([r["step"] for r in rows] or [0])
    epochs = last_step * batch / max(num_train, 1)
    row = {"part": "simclr_cifar10", "epochs": round(epochs, 3),
           "epochs_requested": epochs_requested, "steps": last_step, "batch_size": batch,
           "train_examples": num_train, "wall_seconds": round(wall, 1),
           "seconds_per_epoch": round(wall / epochs, 2) if epochs else None,
           "knn_curve": curve, "finite": ok}
    speeds = sorted(r["examples_per_sec"] for r in rows if finite(r.get("examples_per_sec")))
    if speeds:
        row["median_examples_per_sec"] = round(speeds[len(speeds) // 2], 1)
    problems = []
    if rc == 124:
        problems.append(f"timeout after {limit} s (the curve is partial)")
    elif rc:
        problems.append(f"exit {rc}: {tail(log)}")
    if not ok:
        problems.append("non-finite loss, knn_top1 or features")
    if not curve:
        problems.append("no knn_top1 rows")
    if problems:
        row["error"] = "; ".join(problems)
    out(row)
    sys.exit(1 if problems else 0)

def tail(log, n=4):
    text = [t.rstrip() for t in open(log, errors="replace") if t.strip()]
    return " | ".join(text[-n:])[-1500:]

def summary(wall):
    rows = [json.loads(t) for t in open(os.environ["SUITE"]) if t.strip()]
    failed = sorted({r["part"] for r in rows if "error" in r})
    out({"part": "summary", "wall_seconds": int(wall), "failed": failed})

command, *args = sys.argv[1:]
{"lines": lambda p, l, s: lines(p, l, float(s)), "error": error, "machine": machine,
 "tail": lambda l: print(tail(l)), "summary": lambda w: summary(float(w)),
 "cifar": lambda m, l, w, e, b, n, rc, lim: cifar(m, l, float(w), float(e), int(b), int(n),
                                                   int(rc), lim)}[command](*args)
PY

helper() { SUITE=$SUITE "$PYTHON" -c "$HELPER" "$@"; }

record_error() {  # PART MESSAGE
  helper error "$1" "$2"
  FAILED=1
}

# Seconds a part may run: its cap, cut to what is left of SUITE_SECONDS; fails when under 20.
part_limit() {  # CAP
  local left=$(( SUITE_SECONDS - (SECONDS - START) ))
  (( left >= 20 )) || return 1
  echo $(( $1 < left ? $1 : left ))
}

# Runs a bench command into OUT_DIR/PART.log and copies its JSON lines into suite.jsonl.
run_bench() {  # PART CAP_SECONDS COMMAND...
  local part=$1 cap=$2 limit rc=0 began=$SECONDS
  local log=$OUT_DIR/$part.log
  shift 2
  limit=$(part_limit "$cap") || { record_error "$part" "skipped: suite time spent"; return 0; }
  timeout -k 20 "$limit" "$@" > "$log" 2>&1 || rc=$?
  if (( rc == 124 || rc == 137 )); then
    record_error "$part" "timeout after $limit s: $(helper tail "$log")"
  elif (( rc != 0 )); then
    record_error "$part" "exit $rc: $(helper tail "$log")"
  elif ! helper lines "$part" "$log" $(( SECONDS - began )); then
    record_error "$part" "no JSON line in $log"
  fi
}

# Offline installs of the wheels in .whl/ when ml_collections is missing (the GPU image).
install_wheels() {
  "$PYTHON" -c "import ml_collections" 2>/dev/null && return 0
  compgen -G ".whl/*.whl" > /dev/null || { record_error setup "no ml_collections, no .whl/"; return 0; }
  "$PYTHON" -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl \
    > "$OUT_DIR/setup.log" 2>&1 || { record_error setup "pip: $(helper tail "$OUT_DIR/setup.log")"; return 0; }
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
}

part_r50_jax() {
  local extra=(--steps=10)
  [[ $SMOKE == 1 ]] && extra=(--steps=2 --cases=2x32)
  run_bench r50_jax 150 "$PYTHON" -m contrastive_jax.bench.train_step \
    --config=configs/simclr_imagenet.py --config.batch_size="$R50_BATCH" \
    --config.parallel=shard_map --peak_tflops="$PEAK_TFLOPS" "${extra[@]}"
}

part_r50_torch() {
  local extra=(--arch=resnet50 --image_size=224 --dtype=bfloat16 --compile --steps=10
               --warmup=3)
  [[ $SMOKE == 1 ]] && extra=(--device=cpu --nocompile --arch=resnet18 --stem=cifar
                              --image_size=32 --dtype=float32 --steps=2 --warmup=1)
  run_bench r50_torch 180 "$PYTHON" -m contrastive_jax.bench.torch_simclr_step \
    --batch_size="$R50_BATCH" --peak_tflops="$PEAK_TFLOPS" "${extra[@]}"
}

part_siglip_jax() {
  local extra=(--steps=10)
  [[ $SMOKE == 1 ]] && extra=(--steps=2 --config.data.image_size=32 --config.model.variant=mu/16
                              --config.model.text_depth=1 --config.model.text_width=32
                              --config.model.text_heads=2 --config.model.embed_dim=32
                              --config.data.max_text_len=16)
  run_bench siglip_jax 150 "$PYTHON" -m contrastive_jax.bench.train_step \
    --config=configs/siglip_vit_b16.py --config.batch_size="$SIGLIP_BATCH" \
    --config.loss.siglip_impl=all_gather --peak_tflops="$PEAK_TFLOPS" "${extra[@]}"
}

# The CIFAR-10 tarballs' folder: inside the repository first, then beside it.
cifar_tarballs() {
  local dir
  for dir in shared/data/cifar10 ../shared/data/cifar10; do
    [[ -f $dir/train.tar.gz && -f $dir/test.tar.gz ]] && { echo "$dir"; return 0; }
  done
  return 1
}

# Unpacks CIFAR-10 into DEST (smoke: 50 train and 20 test images per class) once.
unpack_cifar() {  # DEST
  local dest=$1 src
  [[ -f $dest/.unpacked ]] && return 0
  src=$(cifar_tarballs) || { echo "no shared/data/cifar10/{train,test}.tar.gz" >&2; return 1; }
  rm -rf "$dest" && mkdir -p "$dest"
  if [[ $SMOKE == 1 ]]; then
    tar -xzf "$src/train.tar.gz" -C "$dest" --wildcards 'train/*/00[0-4][0-9].jpg'
    tar -xzf "$src/test.tar.gz" -C "$dest" --wildcards 'test/*/00[0-1][0-9].jpg'
  else
    tar -xzf "$src/train.tar.gz" -C "$dest" && tar -xzf "$src/test.tar.gz" -C "$dest"
  fi
  touch "$dest/.unpacked"
}

part_simclr_cifar10() {
  local data=$WORK_DIR/cifar10_$([[ $SMOKE == 1 ]] && echo smoke || echo full)
  local workdir=$WORK_DIR/simclr_cifar10 log=$OUT_DIR/simclr_cifar10.log
  local batch=$CIFAR_BATCH limit rc=0 began num_train
  local extra=(--config.num_epochs="$CIFAR_EPOCHS" --config.eval_every="$CIFAR_EVAL_EVERY")
  if [[ $SMOKE == 1 ]]; then
    batch=64
    extra+=(--config.total_steps=4 --config.batch_size=$batch --config.eval_every=2
            --config.log_every=1 --config.model.base_width=16)
  fi
  unpack_cifar "$data" > "$OUT_DIR/simclr_cifar10_unpack.log" 2>&1 || {
    record_error simclr_cifar10 "unpack: $(helper tail "$OUT_DIR/simclr_cifar10_unpack.log")"
    return 0; }
  num_train=$(find "$data/train" -name '*.jpg' | wc -l)
  limit=$(part_limit 1200) || { record_error simclr_cifar10 "skipped: suite time spent"; return 0; }
  rm -rf "$workdir"
  began=$SECONDS
  timeout -k 30 "$limit" bash repro/simclr_cifar10_gpu.sh "$data" "$workdir" "${extra[@]}" \
    > "$log" 2>&1 || rc=$?
  cp -f "$workdir/metrics.jsonl" "$OUT_DIR/simclr_cifar10_metrics.jsonl" 2>/dev/null || true
  helper cifar "$workdir/metrics.jsonl" "$log" $(( SECONDS - began )) "$CIFAR_EPOCHS" \
    "$batch" "$num_train" "$rc" "$limit" || FAILED=1
}

main() {
  mkdir -p "$OUT_DIR" "$WORK_DIR"
  : > "$SUITE"
  install_wheels
  helper machine || record_error machine "the machine line failed"
  part_r50_jax
  part_r50_torch
  part_siglip_jax
  part_simclr_cifar10
  helper summary $(( SECONDS - START ))
  exit "$FAILED"
}

main
