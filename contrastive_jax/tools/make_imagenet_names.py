"""Writes contrastive_jax/evaluation/imagenet2012_class_names.txt: a readable name per ImageNet-1k class.

    pip download timm --no-deps -d /tmp/wheels
    python -m contrastive_jax.tools.make_imagenet_names --wheel=/tmp/wheels/timm-*.whl

TFDS's imagenet2012 labels are WordNet ids (n01440764 ...), in sorted order. Each class is named
by the first lemma of its WordNet 3.0 synset (Princeton University's WordNet; the timm wheel
bundles the 1,000 ids and their lemmas as data files, read here without importing timm). Three
pairs of synsets share a first lemma, up to case ("crane", "maillot", "Cardigan" the dog and
"cardigan" the sweater); `DISAMBIGUATION` names them apart.
"""

from __future__ import annotations

import collections
import os
import zipfile

from contrastive_jax import cli

SYNSETS = "timm/data/_info/imagenet_synsets.txt"
LEMMAS = "timm/data/_info/imagenet_synset_to_lemma.txt"
OUT = os.path.join(os.path.dirname(os.path.dirname(__file__)), "evaluation",
                   "imagenet2012_class_names.txt")
# Synsets whose first lemma another class also has (WordNet's definitions tell them apart): the
# bird and the machine; dancers' tights and the one-piece bathing suit; the corgi (its second
# lemma), not the sweater. Case counts as no difference: many text encoders lowercase.
DISAMBIGUATION = {"n02012849": "crane bird", "n03126707": "construction crane",
                  "n03710637": "dancer's tights", "n03710721": "one-piece bathing suit",
                  "n02113186": "Cardigan Welsh corgi"}


def class_names(synsets: list[str], lemmas: dict[str, str]) -> list[str]:
    """The readable name of every synset: its first lemma ("_" read as a space), or
    `DISAMBIGUATION`'s."""
    names = [DISAMBIGUATION.get(s, lemmas[s].split(",")[0].strip().replace("_", " "))
             for s in synsets]
    repeated = [n for n, count in collections.Counter(n.lower() for n in names).items()
                if count > 1]
    if repeated:
        raise ValueError(f"names shared by several classes: {repeated}")
    return names


def main(argv=None) -> None:
    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wheel", required=True, help="a timm wheel (pip download timm)")
    parser.add_argument("--out", default=OUT)
    args = parser.parse_args(argv)
    with zipfile.ZipFile(args.wheel) as wheel:
        synsets = wheel.read(SYNSETS).decode().split()
        lemmas = dict(line.split("\t", 1) for line in wheel.read(LEMMAS).decode().splitlines())
    if len(synsets) != 1000 or synsets != sorted(synsets):
        raise ValueError(f"{SYNSETS} should hold the 1,000 ImageNet-1k ids in sorted order")
    with open(args.out, "w", encoding="utf-8") as f:
        f.write("# ImageNet-1k (TFDS imagenet2012 label order): WordNet id<TAB>name. Names\n"
                "# are the first lemmas of WordNet 3.0 (Princeton University) synsets;\n"
                "# written by contrastive_jax/tools/make_imagenet_names.py.\n")
        for synset, name in zip(synsets, class_names(synsets, lemmas)):
            f.write(f"{synset}\t{name}\n")


if __name__ == "__main__":
    cli.with_one_line_errors(main)()
