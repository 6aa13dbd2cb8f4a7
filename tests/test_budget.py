"""Training budgets: every fit meters its optimizer steps and samples; results carry them with
the reference recipe's steps where known."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import torch

from mlr_bench import testing
from mlr_bench.budget import REFERENCE_STEPS, _batch_sizes, budget_record
from mlr_bench.budget_policy import BudgetPolicyError, apply_budget_fraction
from mlr_bench.cli import run_cli
from mlr_bench.text.corpus import TextRequest

QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


def test_batch_sizes_per_kind():
    assert _batch_sizes({"features": torch.zeros(5, 3), "labels": torch.zeros(5, 2)}) == {
        "train": 5
    }
    combined = {"text": {"features": torch.zeros(4, 3)}, "generated_images": {"x": torch.zeros(2)}}
    assert _batch_sizes(combined) == {"text": 4, "generated_images": 2}


def test_reference_budget_and_ratio():
    stages = {"train": {"optimizer_steps": 264, "wall_s": 1.0, "device_s": 1.0}}
    record = budget_record(stages, "taidpt", "voc2007")
    assert record["reference"]["optimizer_steps"] == 2640  # 132 steps x 20 epochs
    assert record["ratio_to_reference"] == 0.1
    world = budget_record(stages, "taidpt", "world")["reference"]  # anchored on COCO's recipe
    assert world["optimizer_steps"] == 4200 and world["dataset"] == "coco2014"
    assert budget_record(stages, "comc", "voc2007")["reference"] is None  # not known
    assert budget_record({}, "zeroshot", "voc2007") is None
    pvp = REFERENCE_STEPS[("pvp", "coco2014")]["stages"]
    assert pvp == {"pretrain": 43_091, "train": 8_680}  # floor(538,320/512) x 41, ... x 20


def test_a_fit_records_its_steps_and_samples(tmp_path: Path):
    """TaI-DPT, 2 epochs on the small world: steps = epochs x ceil(texts / batch) (the last
    batch is kept) and every text is seen once per epoch."""
    args = ["--method", "taidpt", *testing.SMALL_WORLD, *QUIET, "--trainer.max_epochs", "2"]
    args += ["--data.batch_size", "64", "--trainer.default_root_dir", str(tmp_path)]
    cli = run_cli(["train", *args])
    texts = len(cli.datamodule.training_corpus())
    budget = json.loads(next(tmp_path.rglob("results_test.json")).read_text())["budget"]
    stage = budget["stages"]["train"]
    assert stage["optimizer_steps"] == budget["optimizer_steps"] == 2 * math.ceil(texts / 64)
    assert stage["samples_seen"] == {"train": 2 * texts}
    assert stage["epochs"] == 2 and stage["devices"] == 1 and stage["device_s"] > 0


# ---- the budget policy: a fraction of the reference steps, epochs derived from the corpus -----
def _policy_setup(method: str, method_args: Sequence[str] = ()):
    from lightning.pytorch import Trainer

    model, data = testing.build_from_cli(method, method_args=method_args)
    trainer = Trainer(accelerator="cpu", devices=1, logger=False, max_epochs=20)
    return model, data, trainer


def test_policy_epochs_follow_the_reference_formula():
    """TaI-DPT on the small world at 5%: epochs = round(0.05 x 4,200 / ceil(texts / 64))."""
    model, data, trainer = _policy_setup("taidpt")
    texts = len(data.attach(model).training_corpus())  # 256 captions + 18 x 89 templates
    per_epoch = math.ceil(texts / 64)
    policy = apply_budget_fraction(trainer, model, data, 0.05)
    expected = max(1, round(0.05 * 4200 / per_epoch))
    assert trainer.max_epochs == expected == policy["stages"]["train"]["epochs"]
    assert policy["stages"]["train"] == {
        "reference_steps": 4200,
        "steps_per_epoch": per_epoch,
        "epochs": expected,
        "planned_steps": expected * per_epoch,
    }
    assert policy["reference_dataset"] == "coco2014"


def test_policy_keeps_pvp_hand_off_ratio():
    """PVP: stage 1 gets 5% of 43,091 steps and keeps running 41 of every 100 schedule epochs;
    stage 2 gets 5% of 8,680 on its own text."""
    args = ["--method.pretrain_epochs", "100", "--method.pretrain_stop_epoch", "41"]
    model, data, trainer = _policy_setup("pvp", args)
    data.attach(model)
    first = math.ceil(len(data.corpus_for(TextRequest(model.pretrain_text_source, 400))) / 64)
    second = math.ceil(len(data.corpus_for(TextRequest(model.text_source, 200))) / 64)
    apply_budget_fraction(trainer, model, data, 0.05)
    stop = round(0.05 * 43_091 / first)
    assert (model.pretrain_stop_epoch, model.pretrain_epochs) == (stop, round(stop * 100 / 41))
    assert model.hparams["pretrain_stop_epoch"] == stop  # the stage-1 cache key sees it
    assert trainer.max_epochs == round(0.05 * 8_680 / second)


def test_policy_without_a_reference_is_an_error(monkeypatch):
    import pytest

    from mlr_bench import budget

    monkeypatch.setattr(budget, "REFERENCE_ANCHORS", {})
    model, data, trainer = _policy_setup("comc")
    with pytest.raises(BudgetPolicyError, match="no reference recipe of 'comc' on 'world'"):
        apply_budget_fraction(trainer, model, data, 0.05)


def test_a_fit_under_the_policy_records_it(tmp_path: Path, capsys):
    """The CLI applies --trainer.budget_fraction; the steps spent are the planned ones, and an
    explicit --trainer.max_epochs switches the policy off (with a note)."""
    args = ["--method", "comc", *testing.SMALL_WORLD, *QUIET, "--trainer.budget_fraction", "0.02"]
    run_cli(["train", *args, "--trainer.default_root_dir", str(tmp_path / "policy")])
    budget = json.loads(next((tmp_path / "policy").rglob("results_test.json")).read_text())
    budget = budget["budget"]
    planned = budget["policy"]["stages"]["train"]
    per_epoch = math.ceil((256 + 18 * 89) / 64)  # sentences + templates of 18 classes
    steps = round(0.02 * 4200 / per_epoch) * per_epoch  # 3 epochs x 30
    assert budget["optimizer_steps"] == planned["planned_steps"] == steps == 90
    assert budget["policy"]["budget_fraction"] == 0.02
    assert math.isclose(budget["ratio_to_reference"], 90 / 4200)
    run_cli(["fit", *args, "--trainer.max_epochs", "1", "--trainer.default_root_dir",
             str(tmp_path / "off")])  # fmt: skip
    assert "budget_fraction 0.02 is off" in capsys.readouterr().out


def test_leaderboard_states_the_budget_policy():
    from mlr_bench.benchmark.report import leaderboard_markdown

    def record(method: str, seed: int, fraction: float | None) -> dict:
        policy = None if fraction is None else {"budget_fraction": fraction}
        return {"method": method, "dataset": "world", "seed": seed, "status": "ok",
                "backbone": "world", "weights": "pretrained", "metrics": {"mAP": 60.0},
                "budget": {"optimizer_steps": 10, "policy": policy}}  # fmt: skip

    same = [record("taidpt", 1, 0.05), record("comc", 1, 0.05), record("zeroshot", 1, None)]
    board = leaderboard_markdown("t", same, ["taidpt", "comc", "zeroshot"], ["world"], [1])
    assert "every trained method got 0.05 of its reference optimizer steps" in board
    assert "mixed fractions" not in board
    mixed = [*same, record("taidpt", 2, 0.02)]
    board = leaderboard_markdown("t", mixed, ["taidpt", "comc", "zeroshot"], ["world"], [1, 2])
    assert "got 0.02 and 0.05 of" in board and "mixed fractions: compare with care" in board
    board = leaderboard_markdown("t", [record("taidpt", 1, None)], ["taidpt"], ["world"], [1])
    assert "Budget policy" not in board
