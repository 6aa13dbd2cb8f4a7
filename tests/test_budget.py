"""Training budgets: every fit meters its optimizer steps and samples; results carry them with
the reference recipe's steps where known."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from mlr_bench import testing
from mlr_bench.budget import REFERENCE_STEPS, _batch_sizes, budget_record
from mlr_bench.cli import run_cli

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
    assert budget_record(stages, "taidpt", "world")["reference"] is None
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
