"""Class names and prompt templates for image-text models: training captions and zero-shot.

Labelled sources train CLIP / SigLIP on class-name captions (`TRAIN_TEMPLATES`) and are
evaluated zero-shot with `EVAL_TEMPLATES`. The two sets share no template, so a zero-shot score
never measures recall of a training caption. Both were written for this project in the style
of CLIP's prompt ensembles (Radford et al. 2021); they are not CLIP's 80 templates, so ImageNet
zero-shot figures are close to, not equal to, those of CLIP's ensemble.

ImageNet's TFDS labels are WordNet ids; `readable` names them from
evaluation/imagenet2012_class_names.txt (WordNet's first lemmas, tools/make_imagenet_names.py).
"""

from __future__ import annotations

import functools
import os
import re

TRAIN_TEMPLATES = (
    "a picture of a {}.",
    "an image showing a {}.",
    "a close-up photo of a {}.",
    "a blurry photo of a {}.",
    "a low-resolution photo of a {}.",
    "a cropped photo of the {}.",
    "there is a {} in this photo.",
    "a {} in the picture.",
)

EVAL_TEMPLATES = (
    "a photo of a {}.",
    "a snapshot of a {}.",
    "a photograph showing a {}.",
    "an outdoor photo of a {}.",
    "a photo of one {}.",
    "a zoomed-in photo of a {}.",
    "a grainy photo of a {}.",
    "a sketch of a {}.",
    "a photo of my {}.",
    "a {} seen from the side.",
    "a rendering of a {}.",
    "an example of a {}.",
)

WORDNET_ID = re.compile(r"^n\d{8}$")
NAMES_FILE = os.path.join(os.path.dirname(__file__), "imagenet2012_class_names.txt")


@functools.cache
def wordnet_names() -> dict[str, str]:
    """WordNet id -> readable name, for the 1,000 ImageNet classes."""
    with open(NAMES_FILE, encoding="utf-8") as f:
        return dict(line.rstrip("\n").split("\t") for line in f if not line.startswith("#"))


def readable(class_name: str) -> str:
    """The name a prompt says: a WordNet id's name, else the label with "_" read as a space."""
    if WORDNET_ID.match(class_name):
        return wordnet_names().get(class_name, class_name)
    return class_name.replace("_", " ")


def prompts(class_name: str, templates: tuple[str, ...]) -> list[str]:
    """Every template filled with the class's readable name."""
    name = readable(class_name)
    return [template.format(name) for template in templates]
