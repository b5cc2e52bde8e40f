"""Zero-shot classification and image <-> text retrieval evaluators of image-text methods
(`Method.image_text`, `embed_images`, `embed_texts`)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from contrastive_jax import methods
from contrastive_jax.evaluation import functions as evaluate, zeroshot
from contrastive_jax.parallel.layout import Layout


def _not_image_text(config: ml_collections.ConfigDict, method: methods.Method) -> str | None:
    if not method.image_text:
        return f"method {config.method!r} has no text tower (Method.image_text)"
    return None


def zeroshot_data(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The data config of zero-shot classification: `eval.zeroshot_source` (default: the
    training source), read with its labels rather than captions."""
    data = ml_collections.ConfigDict(config.data.to_dict())
    data.caption_key = ""
    if config.eval.get("zeroshot_source"):
        data.source = config.eval.zeroshot_source
    return data


def zeroshot_split(config: ml_collections.ConfigDict) -> str:
    """`eval.zeroshot_split`, or the data's eval split when it is empty."""
    return config.eval.get("zeroshot_split") or config.data.eval_split


def check_zeroshot_split(config: ml_collections.ConfigDict) -> None:
    """Refuses, before training, a zero-shot split its source does not have."""
    from contrastive_jax.data import sources as data_sources
    split = zeroshot_split(config)
    try:
        data_sources.num_examples(zeroshot_data(config), split)
    except data_sources.DataError as error:
        raise data_sources.DataError(
            f"zero-shot evaluation reads split {split!r} (eval.zeroshot_split, else "
            f"data.eval_split) of {zeroshot_data(config).source!r}: {error}") from None


class ZeroShotEvaluator:
    """`zeroshot_top1`: class-name prompts (`zeroshot.EVAL_TEMPLATES`, averaged as CLIP does)
    against the images of `eval.zeroshot_split` of `eval.zeroshot_source` (default: the
    training source). The split is looked up when the evaluator is built, before training."""

    def __init__(self, config: ml_collections.ConfigDict, method: methods.Method, model, info,
                 layout: Layout):
        del info
        check_zeroshot_split(config)
        embed_images = method.embed_images(model)
        self._images = evaluate.wrap_extractor(lambda variables, batch: {
            "embedding": embed_images(variables, batch["image"]), "label": batch["label"]},
            layout)
        self._prompts = jax.jit(method.embed_texts(model))
        self._config, self._layout = config, layout

    @staticmethod
    def unavailable(config: ml_collections.ConfigDict, method: methods.Method, info) -> str | None:
        without_labels = not config.eval.get("zeroshot_source") and info.num_classes <= 0
        return _not_image_text(config, method) or (
            f"{config.data.source!r} has no labels; name a labelled source in "
            "eval.zeroshot_source" if without_labels else None)

    def _classifier(self, variables: Any, data: ml_collections.ConfigDict) -> np.ndarray:
        """[classes, d] unit class vectors from every class's prompts."""
        from contrastive_jax.data import sources as data_sources, tokenizer
        prompts = [zeroshot.prompts(name, zeroshot.EVAL_TEMPLATES)
                   for name in data_sources.class_names(data)]
        tokens = tokenizer.get_tokenizer(self._config.data).tokenize(
            [prompt for class_prompts in prompts for prompt in class_prompts])
        embeddings = self._prompts(self._layout.unreplicate(variables),
                                   np.asarray(tokens))
        return evaluate.zero_shot_classifier(
            np.asarray(embeddings).reshape(len(prompts), len(prompts[0]), -1))

    def run(self, variables: Any) -> dict[str, float]:
        from contrastive_jax.data import input_pipeline
        data = zeroshot_data(self._config)
        classifier = self._classifier(variables, data)
        out = evaluate.extract(
            self._images, variables,
            input_pipeline.eval_iterator(data, zeroshot_split(self._config),
                                         global_batch_size=self._config.eval.batch_size),
            self._layout)
        return {"zeroshot_top1": evaluate.zero_shot_top1(out["embedding"], out["label"],
                                                         classifier)}


class RetrievalEvaluator:
    """`i2t_recall@k` and `t2i_recall@k` (k = 1, 5, 10) over the images of the evaluation split
    and up to `eval.captions_per_image` captions each (`evaluate.retrieval_recall`)."""

    def __init__(self, config: ml_collections.ConfigDict, method: methods.Method, model, info,
                 layout: Layout):
        del info
        embed_images, embed_texts = method.embed_images(model), method.embed_texts(model)

        def embed_pairs(variables, batch):
            n, captions, length = batch["text"].shape
            texts = embed_texts(variables, batch["text"].reshape(n * captions, length))
            return {"image": embed_images(variables, batch["image"]),
                    "text": texts.reshape(n, captions, -1),
                    "text_valid": jnp.any(batch["text"] != 0, axis=-1)}

        self._pairs = evaluate.wrap_extractor(embed_pairs, layout)
        self._config, self._layout = config, layout

    @staticmethod
    def unavailable(config: ml_collections.ConfigDict, method: methods.Method, info) -> str | None:
        del info
        from contrastive_jax.data import image_text_pipeline
        return _not_image_text(config, method) or (
            None if image_text_pipeline.has_captions(config.data) else
            f"{config.data.source!r} is read without captions (data.caption_key); retrieval "
            "needs an image-caption source")

    def run(self, variables: Any) -> dict[str, float]:
        from contrastive_jax.data import image_text_pipeline
        data, eval_config = self._config.data, self._config.eval
        out = evaluate.extract(
            self._pairs, variables,
            image_text_pipeline.eval_iterator(
                data, data.eval_split, global_batch_size=eval_config.batch_size,
                captions_per_image=eval_config.captions_per_image), self._layout)
        image_of_text, caption = np.nonzero(out["text_valid"])
        return evaluate.retrieval_recall(out["image"], out["text"][image_of_text, caption],
                                         image_of_text)
