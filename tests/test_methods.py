"""TaI-DPT, CoMC and zero-shot CLIP: the reference maths, and training that actually helps."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from method_args import FAST_ARGS
from mlr_bench import testing
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


#: Dassl's per-epoch lr for lr 1e-4, 20 epochs, 1 constant warm-up epoch at 1e-5
#: (``build_lr_scheduler`` with LR_SCHEDULER=cosine, WARMUP_TYPE=constant, WARMUP_RECOUNT=True,
#: stepped once at the end of every epoch as Dassl's trainers do). Derived by hand from its
#: code: the warm-up scheduler hands over the cosine's lr at t=0 (the base lr) for epoch 1 and
#: steps the cosine from epoch 2 on, so epoch e >= 1 runs at 1e-4 * (1 + cos(pi * (e-1)/20)) / 2.
DASSL_LR_20_EPOCHS = [
    1.0e-05, 1.0e-04, 9.938442e-05, 9.755283e-05, 9.455033e-05, 9.045085e-05, 8.535534e-05,
    7.938926e-05, 7.269952e-05, 6.545085e-05, 5.782172e-05, 5.000000e-05, 4.217828e-05,
    3.454915e-05, 2.730048e-05, 2.061074e-05, 1.464466e-05, 9.549150e-06, 5.449674e-06,
    2.447174e-06,
]  # fmt: skip


def test_warmup_cosine_is_dassls_constant_warmup_then_cosine():
    factors = [warmup_cosine_factor(e, 20, 1, 0.1) for e in range(20)]
    assert [1e-4 * f for f in factors] == pytest.approx(DASSL_LR_20_EPOCHS, rel=1e-6)
    # two warm-up epochs: the cosine starts after both
    assert warmup_cosine_factor(1, 20, 2, 0.1) == 0.1
    assert warmup_cosine_factor(2, 20, 2, 0.1) == 1.0
    assert warmup_cosine_factor(12, 20, 2, 0.1) == pytest.approx(0.5)


def test_the_schedule_steps_dassls_lrs_through_a_lightning_run(tmp_path):
    """The lrs the optimizer actually holds in each epoch of a Trainer run (interval epoch)."""
    import lightning.pytorch as pl

    from mlr_bench.schedules import warmup_cosine

    class Probe(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.seen: list[float] = []

        def training_step(self, batch, batch_idx):
            if batch_idx == 0:
                self.seen.append(self.optimizers().param_groups[0]["lr"])
            return (self.w * batch[0]).sum()

        def train_dataloader(self):
            return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(4, 1)))

        def configure_optimizers(self):
            optimizer = torch.optim.SGD([self.w], lr=1e-4)
            schedule = warmup_cosine(optimizer, self.trainer.max_epochs, 1, 1e-5)
            return {"optimizer": optimizer, "lr_scheduler": schedule}

    probe = Probe()
    trainer = pl.Trainer(
        max_epochs=20, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(probe)
    assert probe.seen == pytest.approx(DASSL_LR_20_EPOCHS, rel=1e-6)


@pytest.mark.parametrize("method", ["taidpt", "comc", "pvp", "t2ipal"])
def test_every_trainable_method_follows_dassls_cosine_after_its_warmup(method):
    import lightning.pytorch as pl

    model, _ = testing.build_from_cli(method, method_args=FAST_ARGS.get(method, []))
    model.trainer = pl.Trainer(max_epochs=20, logger=False, enable_progress_bar=False)
    schedule = model.configure_optimizers()["lr_scheduler"]["scheduler"]
    warm = model.warmup_epochs
    for factor in schedule.lr_lambdas:  # one per parameter group
        after = [factor(e) for e in range(warm, 20)]
        expected = [(1 + math.cos(math.pi * k / 20)) / 2 for k in range(20 - warm)]
        assert after == pytest.approx(expected, rel=1e-9), method


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
