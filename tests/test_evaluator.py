"""The shared evaluator: what it computes through Lightning, and exactness under DDP."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer
from sklearn.metrics import average_precision_score

from fixed_scores import TableData, TableScores, fixed_table
from mlr_bench.eval.evaluator import Evaluator, gather_unique


def make(n: int = 37, c: int = 5):
    data = TableData(n=n, c=c)
    return TableScores(class_names=data.class_names, n=n), data


def trainer(tmp_path, **kwargs) -> Trainer:
    return Trainer(
        default_root_dir=tmp_path,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        **kwargs,
    )


def sklearn_map(scores: np.ndarray, targets: np.ndarray) -> float:
    """mAP with difficult (0) counted as negative, the default protocol."""
    return 100 * float(
        np.mean([average_precision_score(targets[:, k] == 1, scores[:, k]) for k in range(5)])
    )


def test_test_metrics_match_sklearn_and_json_is_written(tmp_path):
    model, data = make()
    out = trainer(tmp_path).test(model, datamodule=data)[0]
    scores, targets = fixed_table(37, 5)
    assert out["test/mAP"] == pytest.approx(sklearn_map(scores, targets), abs=1e-4)
    results = json.loads((tmp_path / "results_test.json").read_text())
    assert results["metrics"]["mAP"] == pytest.approx(sklearn_map(scores, targets), abs=1e-9)
    assert results["num_samples"] == 37
    assert results["method"]["class_path"] == "fixed_scores.TableScores"
    assert set(results["versions"]) >= {"torch", "lightning"}
    assert "test/AP/class0" in out


def test_difficult_protocol_is_configurable(tmp_path):
    model, data = make()
    negative = trainer(tmp_path).test(model, datamodule=data)[0]["test/mAP"]
    ignore = trainer(tmp_path, callbacks=[Evaluator(difficult="ignore")]).test(
        model, datamodule=data
    )[0]["test/mAP"]
    scores, targets = fixed_table(37, 5)
    keep = [targets[:, k] != 0 for k in range(5)]
    expected = 100 * np.mean(
        [average_precision_score(targets[m, k] == 1, scores[m, k]) for k, m in enumerate(keep)]
    )
    assert ignore == pytest.approx(expected, abs=1e-4)
    assert ignore != pytest.approx(negative, abs=1e-3)


def test_gather_unique_drops_padding_duplicates_and_sorts():
    index = torch.tensor([3, 0, 2, 0, 1])  # 0 repeated, as DistributedSampler pads
    scores = torch.arange(10.0).view(5, 2)
    targets = torch.ones(5, 2, dtype=torch.int8)
    idx, sc, _ = gather_unique(index, scores, targets, world_size=1)
    assert idx.tolist() == [0, 1, 2, 3]
    assert sc[:, 0].tolist() == [2.0, 8.0, 4.0, 0.0]


@pytest.mark.slow
def test_three_process_ddp_equals_single_process_exactly(tmp_path):
    """37 samples over 3 ranks: the sampler pads two duplicates that must be dropped. Both the
    results file and every logged value (what metrics.csv, the console table and W&B show)
    equal the single-process ones bit for bit; averaging the ranks' equal float32 values
    (``sync_dist=True``) moved some of them by one float32 step with 3 processes."""
    model, data = make()
    single_dir, ddp_dir = tmp_path / "single", tmp_path / "ddp"
    logged_single = trainer(single_dir).test(model, datamodule=data)[0]
    model, data = make()
    logged_ddp = trainer(ddp_dir, strategy="ddp_spawn", devices=3).test(model, datamodule=data)[0]
    single = json.loads((single_dir / "results_test.json").read_text())
    ddp = json.loads((ddp_dir / "results_test.json").read_text())
    assert ddp["world_size"] == 3
    assert ddp["num_samples"] == single["num_samples"] == 37
    assert ddp["metrics"] == single["metrics"]  # exact, not approximate
    assert ddp["per_class_ap"] == single["per_class_ap"]
    assert len(logged_single) == 13 + 5  # mAP, 12 thresholded metrics, 5 per-class APs
    assert logged_ddp == logged_single  # exact
