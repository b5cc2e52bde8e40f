"""Analytic FLOPs against the published per-image multiply-adds of ViTs at 224x224 (the ViT and
DeiT papers' "FLOPs" columns count multiply-adds) and a hand count of a tiny encoder."""

import ml_collections
import pytest

from contrastive_jax import flops


@pytest.mark.parametrize("variant,published_gmacs", [
    ("Ti/16", 1.3), ("S/16", 4.6), ("B/16", 17.6), ("L/16", 61.6)])
def test_vit_multiply_adds_match_published(variant, published_gmacs):
    assert flops.vit_macs(variant, 224) / 1e9 == pytest.approx(published_gmacs, rel=0.04)


def test_encoder_multiply_adds_by_hand():
    # 3 tokens, width 2, one block, MLP 4: projections 4*3*2*2, scores and sum 2*3*3*2, MLP 2*3*2*4.
    assert flops.encoder_macs(3, 2, 1, 4) == 48 + 36 + 48


def test_image_text_training_flops_are_three_passes_of_both_towers():
    config = ml_collections.ConfigDict({
        "batch_size": 4, "data": {"image_size": 8, "max_text_len": 3},
        "model": {"name": "vit", "variant": "mu/4", "depth": None, "pool": "gap",
                  "text_width": 2, "text_depth": 1, "text_mlp_dim": 4, "embed_dim": 5}})
    image = flops.vit_macs("mu/4", 8, pool="gap")
    expected = 2 * 3 * (image + 132 + (32 + 2) * 5 + 4 * 5)
    assert flops.image_text_train_flops(config) == expected
