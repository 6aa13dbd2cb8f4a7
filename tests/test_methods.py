"""TaI-DPT, CoMC and zero-shot CLIP: the reference maths, and training that actually helps."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mlr_bench.cli import run_cli
from mlr_bench.clip.prompts import spatial_softmax_pool
from mlr_bench.losses import ranking_loss
from mlr_bench.methods.comc import CoMC
from mlr_bench.methods.taidpt import TaIDPT
from mlr_bench.schedules import warmup_cosine_factor
from mlr_bench.testing import QUIET, world_args
from mlr_bench.text.corpus import template_corpus
from mlr_bench.world import CLASS_NAMES


def test_ranking_loss_matches_the_pairwise_definition():
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(6, 5, generator=g) * 2
    targets = (torch.rand(6, 5, generator=g) > 0.6).long()
    expected = []
    for s, y in zip(scores, targets, strict=True):
        total = sum(
            max(0.0, 1.0 - float(s[p]) + float(s[n]))
            for p in range(5)
            for n in range(5)
            if y[p] == 1 and y[n] == 0
        )
        expected.append(total)
    assert ranking_loss(scores, targets).item() == pytest.approx(np.mean(expected), rel=1e-6)


def test_warmup_cosine_is_dassls_constant_warmup_then_cosine():
    assert warmup_cosine_factor(0, 20, 1, 0.1) == 0.1
    assert warmup_cosine_factor(1, 20, 1, 0.1) == pytest.approx((1 + math.cos(math.pi / 20)) / 2)
    assert warmup_cosine_factor(10, 20, 1, 0.1) == pytest.approx(0.5)
    assert warmup_cosine_factor(20, 20, 1, 0.1) == pytest.approx(0.0)


def test_template_augmentation_has_k_minus_1_copies_plus_80_templates():
    corpus = template_corpus(["dog", "tv_monitor"], copies=10)
    assert len(corpus) == 2 * 89
    assert corpus.texts.count("a photo of a dog.") >= 9
    assert "a photo of a tv monitor." in corpus.texts
    assert (corpus.labels.sum(1) == 1).all() and corpus.labels[:89, 0].all()
    assert len(template_corpus(["dog"], copies=0)) == 0


def test_spatial_softmax_pool_ignores_masked_positions():
    sim = torch.randn(2, 7, 3)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    pooled = spatial_softmax_pool(sim, 50.0, mask)
    changed = sim.clone()
    changed[0, 4:] = 5.0  # padding: must not matter
    torch.testing.assert_close(spatial_softmax_pool(changed, 50.0, mask), pooled)
    # large scale -> max over valid positions; scale 0 -> their mean
    torch.testing.assert_close(
        spatial_softmax_pool(sim, 1e4, mask)[1], sim[1].amax(0), atol=1e-4, rtol=0
    )
    torch.testing.assert_close(
        spatial_softmax_pool(sim, 0.0, mask)[0], sim[0, :4].mean(0), atol=1e-4, rtol=0
    )


def test_comc_cross_modal_mapping_follows_the_reference_formula():
    model = CoMC(class_names=CLASS_NAMES)
    v = F.normalize(torch.randn(4, model.backbone.embed_dim), dim=-1)
    bank = model.bank()
    a = torch.softmax(100 * v @ bank.T, dim=-1)
    m = a @ bank
    expected = 0.7 * v + 0.3 * m / m.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(model.cross_modal_map(v), expected)
    dense = F.normalize(torch.randn(4, 9, v.shape[1]), dim=-1)
    batch = {"global_no_pos": v, "global": -v, "dense": dense}
    W = model.classifier.weight
    want = 0.5 * model.cross_modal_map(v) @ W.T + 0.5 * (model.cross_modal_map(dense) @ W.T).amax(1)
    torch.testing.assert_close(model.score_features(batch), want)


def test_taidpt_scores_use_fixed_scale_and_merge_rate():
    model = TaIDPT(class_names=CLASS_NAMES, merge_rate=0.25)
    v = F.normalize(torch.randn(3, model.backbone.embed_dim), dim=-1)
    dense = F.normalize(torch.randn(3, 9, v.shape[1]), dim=-1)
    with torch.no_grad():
        tg, tl = model.class_prompts()
        want = 0.75 * 4 * v @ tg.T + 0.25 * 4 * spatial_softmax_pool(dense @ tl.T, 40.0)
        got = model.score_features({"global_no_pos": v, "global": -v, "dense": dense})
    torch.testing.assert_close(got, want)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        "ctx_global",
        "ctx_local",
    }


SMALL = [
    *world_args(num_test=300, num_val=60, num_captions=1500, num_sentences=1500, batch_size=128),
    *QUIET,
]
#: Short schedules for a small world: more lr, fewer epochs than the 20-epoch recipes.
FAST = {
    "taidpt": ["--method.lr", "0.002", "--trainer.max_epochs", "4"],
    "comc": ["--method.lr", "0.01", "--trainer.max_epochs", "4"],
}


def _test_metrics(root: Path, args: list[str]) -> dict:
    run_cli([*args, "--trainer.default_root_dir", str(root)])
    return json.loads(next(root.rglob("results_test.json")).read_text())["metrics"]


@pytest.mark.parametrize("method", ["taidpt", "comc"])
def test_training_on_text_improves_test_map(method, tmp_path):
    common = ["--method", method, *SMALL]
    untrained = _test_metrics(tmp_path / "untrained", ["test", *common])
    trained = _test_metrics(tmp_path / "trained", ["train", *common, *FAST[method]])
    assert trained["mAP"] > untrained["mAP"] + 5, (untrained["mAP"], trained["mAP"])


@pytest.mark.parametrize("method", ["taidpt", "comc"])
def test_same_seed_gives_identical_metrics(method, tmp_path):
    args = ["train", "--method", method, *SMALL, *FAST[method], "--trainer.max_epochs", "2"]
    first = _test_metrics(tmp_path / "a", args)
    second = _test_metrics(tmp_path / "b", args)
    assert first == second
    other = _test_metrics(tmp_path / "c", [*args, "--seed_everything", "1"])
    assert other != first
