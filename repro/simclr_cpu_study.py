"""The SimCLR paper's ablations in miniature, on the CIFAR-10 JPEGs, on a CPU.

    python repro/simclr_cpu_study.py --cifar10=../shared/data/cifar10 --out=repro/results \
        [--studies=augmentation,temperature,batch_size,head] [--train_per_class=1000] \
        [--epochs=12]

Each run is `python -m contrastive_jax.main --config=configs/simclr_cifar10.py:resnet18` with a
small encoder (ResNet-18 of base width 8) on a class-balanced subset of the training JPEGs,
evaluated at the end by kNN (k = 200) and the fast linear probe on the encoder's features over
the subset and the test images. One setting changes per study, against the paper's direction:

- augmentation: crop only, colour only, crop + colour, crop + colour + blur (Chen et al. 2020,
  Fig. 5: the composition of crop and colour matters most);
- temperature 0.05 to 1.0 (Table 5 / Fig. B.7: a middle temperature wins; CIFAR prefers ~0.5);
- batch size 64 to 512 at a fixed number of epochs (Fig. 9: larger batches help at short
  training);
- projection head none / linear / 2-layer MLP (Fig. 8: MLP > linear > none for the features
  before the head).

Writes OUT/cpu_study.json (one row per run), OUT/cpu_study.md (the table for the README) and
OUT/cpu_study.png. A finished run is not run again, so the script resumes after an interruption.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASELINE = {"color_strength": 0.5, "grayscale_prob": 0.2, "crop_area_min": 0.08, "blur": False,
            "temperature": 0.5, "batch_size": 256, "head_layers": 2}

# study -> [(label, changes to BASELINE)]; the paper's expectation in EXPECTED.
STUDIES = {
    "augmentation": [
        ("crop", {"color_strength": 0.0, "grayscale_prob": 0.0}),
        ("colour", {"crop_area_min": 1.0}),
        ("crop+colour", {}),
        ("crop+colour+blur", {"blur": True}),
    ],
    "temperature": [(f"T={t}", {"temperature": t}) for t in (0.05, 0.1, 0.2, 0.5, 1.0)],
    "batch_size": [(f"B={b}", {"batch_size": b}) for b in (64, 128, 256, 512)],
    "head": [("none", {"head_layers": 0}), ("linear", {"head_layers": 1}),
             ("MLP", {"head_layers": 2})],
}
EXPECTED = {
    "augmentation": "crop+colour far above crop or colour alone; blur adds little at 32x32",
    "temperature": "an intermediate temperature is best; 0.05 and 1.0 are worse",
    "batch_size": "kNN rises with batch size at a fixed number of epochs",
    "head": "MLP > linear > none (features before the head)",
}


def prepare_subset(cifar10: str, root: str, train_per_class: int, test_per_class: int) -> str:
    """Unpacks the JPEG archives once and links a class-balanced subset into ROOT/subset."""
    subset = os.path.join(root, f"subset_{train_per_class}_{test_per_class}")
    if os.path.isdir(subset):
        return subset
    full = os.path.join(root, "full")
    for split in ("train", "test"):
        if not os.path.isdir(os.path.join(full, split)):
            with tarfile.open(os.path.join(cifar10, f"{split}.tar.gz")) as archive:
                archive.extractall(full, filter="data")
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        for name in sorted(os.listdir(os.path.join(full, split))):
            source = os.path.join(full, split, name)
            target = os.path.join(subset + ".tmp", split, name)
            os.makedirs(target, exist_ok=True)
            for file in sorted(os.listdir(source))[:per_class]:
                os.symlink(os.path.join(source, file), os.path.join(target, file))
    os.replace(subset + ".tmp", subset)
    return subset


def overrides(setting: dict, data_dir: str, epochs: float) -> list[str]:
    """main's --config.* flags for one run."""
    flags = {
        "data.source": f"folder:{data_dir}", "data.augment_on": "device",
        "data.color_strength": setting["color_strength"],
        "data.grayscale_prob": setting["grayscale_prob"],
        "data.crop_area_min": setting["crop_area_min"], "data.blur": setting["blur"],
        "loss.temperature": setting["temperature"], "batch_size": setting["batch_size"],
        "model.head_layers": setting["head_layers"], "model.base_width": 8,
        "num_epochs": epochs, "optimizer.warmup_epochs": 1.0, "eval_every": 0,
        "eval_at_start": False, "log_every": 20, "checkpoint_every": 100_000,
        "eval.batch_size": 500, "eval.linear_steps": 500,
    }
    return [f"--config.{key}={value}" for key, value in flags.items()]


def run(name: str, setting: dict, data_dir: str, out: str, epochs: float) -> dict:
    """Trains and evaluates one setting in OUT/runs/NAME; returns its final metrics."""
    workdir = os.path.join(out, "runs", name)
    done = os.path.join(workdir, "result.json")
    if os.path.exists(done):
        with open(done, encoding="utf-8") as f:
            return json.load(f)
    command = [sys.executable, "-m", "contrastive_jax.main",
               "--config=configs/simclr_cifar10.py:resnet18", f"--workdir={workdir}",
               *overrides(setting, data_dir, epochs)]
    start = time.time()
    subprocess.run(command, cwd=REPO, check=True)
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"),
                                              encoding="utf-8")]
    final = [row for row in rows if "knn_top1" in row][-1]
    result = {"name": name, **setting, "knn_top1": final["knn_top1"],
              "linear_top1": final["linear_top1"], "step": final["step"],
              "minutes": round((time.time() - start) / 60, 1)}
    with open(done, "w", encoding="utf-8") as f:
        json.dump(result, f)
    return result


def write_table(rows: list[dict], path: str) -> None:
    lines = ["| study | setting | kNN top-1 | linear top-1 | minutes | the paper's direction |",
             "| --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        lines.append(f"| {row['study']} | {row['label']} | {row['knn_top1']:.3f} | "
                     f"{row['linear_top1']:.3f} | {row['minutes']} | {EXPECTED[row['study']]} |")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def plot(rows: list[dict], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    studies = list(dict.fromkeys(row["study"] for row in rows))
    fig, axes = plt.subplots(1, len(studies), figsize=(4 * len(studies), 3.4), squeeze=False)
    for ax, study in zip(axes[0], studies):
        mine = [row for row in rows if row["study"] == study]
        x = range(len(mine))
        ax.plot(x, [r["knn_top1"] for r in mine], "o-", label="kNN top-1")
        ax.plot(x, [r["linear_top1"] for r in mine], "s--", label="linear top-1")
        ax.set_xticks(list(x), [r["label"] for r in mine], rotation=30, fontsize=8)
        ax.set_title(study)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("CIFAR-10 test accuracy")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cifar10", default=os.path.join(REPO, "..", "shared", "data",
                                                          "cifar10"))
    parser.add_argument("--out", default=os.path.join(REPO, "repro", "results"))
    parser.add_argument("--scratch", default="/tmp/contrastive_jax_cpu_study")
    parser.add_argument("--studies", default=",".join(STUDIES))
    parser.add_argument("--train_per_class", type=int, default=1000)
    parser.add_argument("--test_per_class", type=int, default=200)
    parser.add_argument("--epochs", type=float, default=12.0)
    args = parser.parse_args()
    data_dir = prepare_subset(args.cifar10, args.scratch, args.train_per_class,
                              args.test_per_class)
    rows = []
    for study in args.studies.split(","):
        for label, changes in STUDIES[study]:
            setting = {**BASELINE, **changes}
            name = "_".join(f"{k}={setting[k]}" for k in sorted(setting))
            result = run(name, setting, data_dir, os.path.join(args.scratch, "work"),
                         args.epochs)
            rows.append({"study": study, "label": label, **result})
            print(json.dumps(rows[-1]), flush=True)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "cpu_study.json"), "w", encoding="utf-8") as f:
        json.dump({"epochs": args.epochs, "train_per_class": args.train_per_class,
                   "test_per_class": args.test_per_class, "rows": rows}, f, indent=1)
    write_table(rows, os.path.join(args.out, "cpu_study.md"))
    plot(rows, os.path.join(args.out, "cpu_study.png"))


if __name__ == "__main__":
    main()
