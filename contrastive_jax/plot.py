"""A PNG of a run's curves from its metrics.jsonl: loss, learning rate and evaluation accuracies.

    python -m contrastive_jax.plot WORKDIR [--out=WORKDIR/curves.png]

One panel each for the loss, the learning rate, and every accuracy or recall the run logged
(kNN, linear probe, zero-shot, retrieval, the online probe), against the step. Needs matplotlib
(`pip install -e '.[plot]'`).
"""

from __future__ import annotations

import os

from contrastive_jax import cli
from contrastive_jax.logging import read_metrics

CURVES = ("loss", "learning_rate")
# Logged names that are accuracies in [0, 1], drawn together in the last panel.
ACCURACY_MARKERS = ("top1", "recall@")


def series(rows: list) -> dict[str, tuple[list[int], list[float]]]:
    """(steps, values) of every numeric metric in `rows`, in step order; rows that are not
    objects with an integer "step" are left out."""
    rows = [row for row in rows if isinstance(row, dict) and isinstance(row.get("step"), int)]
    out: dict[str, tuple[list[int], list[float]]] = {}
    for row in sorted(rows, key=lambda r: r["step"]):
        for name, value in row.items():
            if name != "step" and isinstance(value, (int, float)):
                steps, values = out.setdefault(name, ([], []))
                steps.append(row["step"])
                values.append(float(value))
    return out


def plot(workdir: str, out: str) -> list[str]:
    """Writes the PNG; returns the panel titles."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = series(read_metrics(workdir))
    if not curves:
        raise ValueError(f"{os.path.join(workdir, 'metrics.jsonl')} holds no metrics")
    panels = [name for name in CURVES if name in curves]
    accuracies = sorted(name for name in curves
                        if any(marker in name for marker in ACCURACY_MARKERS))
    titles = panels + (["accuracy"] if accuracies else [])
    fig, axes = plt.subplots(1, len(titles), figsize=(4.2 * len(titles), 3.3), squeeze=False)
    for ax, name in zip(axes[0], panels):
        ax.plot(*curves[name])
        ax.set_title(name)
    if accuracies:
        ax = axes[0][len(panels)]
        for name in accuracies:
            steps, values = curves[name]
            ax.plot(steps, values, "o-" if len(steps) < 30 else "-", label=name, markersize=3)
        ax.set_title("accuracy")
        ax.legend(fontsize=7)
    for ax in axes[0]:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    from contrastive_jax import files
    with files.atomic_write(out, "wb") as f:
        fig.savefig(f, dpi=110, format=os.path.splitext(out)[1].lstrip(".") or "png")
    plt.close(fig)
    return titles


def main(argv: list[str] | None = None) -> None:
    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workdir")
    parser.add_argument("--out", default="", help="default: WORKDIR/curves.png")
    args = parser.parse_args(argv)
    out = args.out or os.path.join(args.workdir, "curves.png")
    with cli.errors_as_one_line():  # No metrics; an --out that cannot be written.
        try:
            titles = plot(args.workdir, out)
        except ImportError as error:
            raise ValueError("plotting needs matplotlib: pip install -e '.[plot]'") from error
    print(f"wrote {out}: {', '.join(titles)}")


if __name__ == "__main__":
    main()
