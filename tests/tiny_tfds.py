"""A tiny TFDS caption set (3 solid-colour images with 2 to 5 captions each), prepared
locally, for the image-text tests that read TFDS captions."""

import numpy as np
import tensorflow_datasets as tfds

CAPTIONS = [
    ["a red square", "a square in red"],
    ["green grass", "a field of green", "green again"],
    ["deep blue sea", "the blue sky", "a blue wall", "blue paint", "blue ink"],
]
CLASS_NAMES = ["red_square", "green_field", "blue_sea"]


class ContrastiveJaxCaptionsTiny(tfds.core.GeneratorBasedBuilder):
    """3 examples per split: example i is the solid colour 40 * (i + 1) with 2-5 captions."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(8, 8, 3)),
            "label": tfds.features.ClassLabel(names=CLASS_NAMES),
            "captions": tfds.features.Sequence({"text": tfds.features.Text()})}))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(), "test": self._generate_examples()}

    def _generate_examples(self):
        for i, captions in enumerate(CAPTIONS):
            yield i, {"image": np.full((8, 8, 3), 40 * (i + 1), np.uint8), "label": i,
                      "captions": {"text": captions}}


def prepare_captions(data_dir: str) -> None:
    """Writes the tiny captions set into `data_dir` (TFDS's prepared layout, no download)."""
    ContrastiveJaxCaptionsTiny(data_dir=data_dir).download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))
