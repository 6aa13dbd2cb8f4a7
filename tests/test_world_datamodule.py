"""The world datamodule and the bundled micro-CLIP, through the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mlr_bench.cli import run_cli
from mlr_bench.clip import CLIPBackbone
from mlr_bench.clip.backbone import BUNDLED_WEIGHTS_DIR
from mlr_bench.datamodules.world import World
from mlr_bench.eval.metrics import compute_metrics
from mlr_bench.world import CLASS_NAMES
from mlr_bench.world.microclip import dense_localisation, encode_world_images

SMALL = ["--data.num_test", "60", "--data.num_val", "40", "--data.num_captions", "200"]
needs_weights = pytest.mark.skipif(
    not (BUNDLED_WEIGHTS_DIR / "world.safetensors").is_file(),
    reason="bundled world weights not built (python -m mlr_bench.world.pretrain)",
)
BUNDLED = [
    pytest.param(
        name,
        marks=pytest.mark.skipif(
            not (BUNDLED_WEIGHTS_DIR / f"{name}.safetensors").is_file(),
            reason=f"bundled {name} weights not built (python -m mlr_bench.world.pretrain)",
        ),
    )
    for name in ("world", "world-vit")
]


def test_splits_are_disjoint_deterministic_and_labelled():
    world = World(num_test=30, num_val=20, num_captions=100, num_sentences=50)
    test, val = world.split("test"), world.split("val")
    assert test.images.shape == (30, 96, 96, 3) and val.images.shape == (20, 96, 96, 3)
    assert not any((val.images == t).all() for t in test.images[:5])  # different draws
    again = World(num_test=30).split("test")
    np.testing.assert_array_equal(again.images, test.images)
    corpus = world.caption_corpus
    assert len(corpus) == 100 and corpus.labels.shape == (100, len(CLASS_NAMES))
    assert corpus.labels.sum(1).min() >= 0 and corpus.labels.any(1).mean() > 0.9
    sentences = world.sentence_corpus
    assert len(sentences) == 50 and sentences.labels.any(1).all()
    image = world.text_to_image(corpus.texts[0], seed=0)
    assert image.shape == (96, 96, 3) and image.dtype == np.uint8


def test_eval_samples_follow_the_contract():
    world = World(num_test=8)
    ds = world.eval_dataset("test", lambda im: torch.from_numpy(np.asarray(im)).float())
    sample = ds[3]
    assert sample["index"] == 3
    assert set(sample["target"].unique().tolist()) <= {-1, 1}
    assert sample["target"].shape == (len(CLASS_NAMES),)


@needs_weights
def test_zero_shot_on_the_world_through_the_cli(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = run_cli(["train", "--method", "zeroshot", "--data", "world", *SMALL])
    results = json.loads((Path(cli.trainer.logger.log_dir) / "results_test.json").read_text())
    assert results["num_samples"] == 60
    assert results["method"]["init_args"]["backbone"] == "world"
    # well above a random ranking of the same 60 test images
    targets = np.where(World(num_test=60).split("test").labels > 0, 1, -1)
    rng = np.random.default_rng(0)
    chance = np.mean([compute_metrics(rng.random(targets.shape), targets).mAP for _ in range(20)])
    assert results["metrics"]["mAP"] > 1.5 * chance


@needs_weights
def test_dense_features_localise_objects():
    """A class's text embedding scores higher where its object is than elsewhere. (The ViT
    micro-CLIP's patch tokens are only about neutral: docs/world.md gives its figure.)"""
    backbone = CLIPBackbone("world", "bundled")
    data = World(num_test=120).split("test")
    class_emb = backbone.encode_text([f"a photo of a {c}." for c in CLASS_NAMES])
    diffs = dense_localisation(
        encode_world_images(backbone, data.images), class_emb, data.scenes, 96
    )
    assert len(diffs) > 50
    assert diffs.mean() > 0 and (diffs > 0).mean() > 0.6


@pytest.mark.parametrize("model", BUNDLED)
def test_bundled_micro_clip_loads_deterministically(model):
    """Two loads give the same features; the ViT's 12-px patches give an 8 x 8 grid."""
    images = torch.from_numpy(World(num_test=4).split("test").images)
    feats = [encode_world_images(CLIPBackbone(model, "bundled"), images.numpy()) for _ in range(2)]
    torch.testing.assert_close(feats[0].global_, feats[1].global_, rtol=0, atol=0)
    torch.testing.assert_close(feats[0].dense, feats[1].dense, rtol=0, atol=0)
    assert feats[0].global_.shape == (4, 128)
    if model == "world-vit":
        assert feats[0].grid == (8, 8)
