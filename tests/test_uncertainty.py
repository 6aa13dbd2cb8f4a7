"""The leaderboard's paired bootstrap: weighted AP against sklearn, a case with a known answer,
pairing, and what the leaderboard prints."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from mlr_bench.benchmark.report import leaderboard_markdown
from mlr_bench.benchmark.uncertainty import (
    image_weights,
    leaderboard_intervals,
    paired_intervals,
    weighted_average_precision,
    weighted_map,
)
from mlr_bench.eval.evaluator import write_scores
from mlr_bench.eval.metrics import compute_metrics


def _data(n: int = 400, c: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    scores = np.round(rng.normal(size=(n, c)), 1)  # rounded: many ties
    targets = np.where(rng.random((n, c)) < 0.3, 1, -1).astype(np.int8)
    targets[rng.random((n, c)) < 0.05] = 0  # VOC "difficult"
    return scores, targets


def test_weighted_ap_equals_sklearn_with_sample_weights_and_ties():
    scores, targets = _data()
    weights = image_weights(len(scores), 4, seed=1)
    for c in range(scores.shape[1]):
        positive = targets[:, c] == 1
        got = weighted_average_precision(scores[:, c], positive, weights)
        expected = [
            average_precision_score(positive, scores[:, c], sample_weight=w) for w in weights
        ]
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("difficult", ["negative", "ignore"])
def test_unit_weights_give_the_evaluators_map(difficult):
    scores, targets = _data()
    expected = compute_metrics(scores, targets, difficult=difficult).as_dict()["mAP"]
    got = weighted_map(scores, targets, np.ones((1, len(scores))), difficult)[0]
    assert got == pytest.approx(expected, abs=1e-9)


def test_tied_scores_interval_is_the_binomial_interval_of_the_prevalence():
    """All scores tied: AP = the fraction of positives among the drawn images, whose bootstrap
    distribution is Binomial(N, p) / N; its 95% interval is p ± 1.96 sqrt(p (1 - p) / N)."""
    n, p = 2000, 0.3
    targets = np.where(np.arange(n) < p * n, 1, -1).astype(np.int8)[:, None]
    runs = {"tied": [(np.zeros((n, 1)), targets)]}
    interval = paired_intervals(runs, replicates=1000, seed=3)["tied"]
    half = 100 * 1.96 * np.sqrt(p * (1 - p) / n)  # 2.01 points
    assert interval.low == pytest.approx(100 * p - half, abs=0.3)
    assert interval.high == pytest.approx(100 * p + half, abs=0.3)
    assert interval.seeds == 1


def test_pairing_identical_rankings_never_differ_and_a_worse_method_is_significant():
    scores, targets = _data(n=600, c=4)
    perfect = targets.astype(np.float64)
    runs = {
        "perfect": [(perfect, targets)],
        "same order": [(2 * perfect + 1, targets)],  # another scale, the same ranking
        "noise": [(scores, targets), (scores[::-1].copy(), targets)],
    }
    found = paired_intervals(runs, replicates=200, seed=0)
    best = "perfect" if found["perfect"].diff_low is None else "same order"
    other = "same order" if best == "perfect" else "perfect"
    assert (found[best].low, found[best].high) == (100.0, 100.0)
    assert found[other].diff_low == found[other].diff_high == 0.0
    assert found[other].significant is False
    assert found["noise"].significant is True and found["noise"].seeds == 2
    with pytest.raises(ValueError, match="test targets differ"):
        paired_intervals({"a": [(scores, targets)], "b": [(scores, -targets)]}, replicates=10)


def _cell(tmp_path: Path, method: str, seed: int, scores: np.ndarray, targets: np.ndarray):
    folder = tmp_path / f"{method}-s{seed}"
    folder.mkdir()
    write_scores(
        folder / "scores_test.npz",
        torch.arange(len(scores)),
        torch.from_numpy(scores),
        torch.from_numpy(targets),
    )
    mAP = compute_metrics(scores, targets).as_dict()["mAP"]
    results = {"scores_file": "scores_test.npz", "evaluator": {"difficult": "negative"}}
    (folder / "results_test.json").write_text(json.dumps(results))
    return {
        "method": method, "dataset": "world", "seed": seed, "status": "ok",
        "backbone": "world", "weights": "pretrained", "metrics": {"mAP": mAP},
        "results_file": str(folder / "results_test.json"),
    }  # fmt: skip


def test_leaderboard_prints_intervals_n_and_which_methods_tie_with_the_best(tmp_path):
    scores, targets = _data(n=500, c=4)
    good = targets.astype(np.float64) + scores  # informative scores
    records = [
        _cell(tmp_path, "good", 1, good, targets),
        _cell(tmp_path, "good", 2, good + 0.01 * scores, targets),
        _cell(tmp_path, "twin", 1, good + 1e-3 * scores, targets),
        _cell(tmp_path, "noise", 1, scores, targets),
    ]
    intervals, notes = leaderboard_intervals(records, replicates=200)
    assert notes == ["- world: 200 bootstrap replicates"]
    board = leaderboard_markdown(
        "t", records, ["good", "twin", "noise"], ["world"], [1, 2], intervals=intervals,
        interval_notes=notes,
    )  # fmt: skip
    table = board.split("## Uncertainty")[0].splitlines()  # the leaderboard table only
    rows = {line.split(" | ")[0][2:]: line for line in table if line[:2] == "| "}
    good_iv, twin_iv = intervals[("good", "world")], intervals[("twin", "world")]
    assert f"[{good_iv.low:.1f}, {good_iv.high:.1f}]" in rows["good"]
    assert "(n=1)" in rows["twin"] and "± 0.00" not in rows["twin"]
    tied = good_iv if twin_iv.diff_low is None else twin_iv
    assert tied.significant is False and "≈ best" in board
    assert "≈ best" not in rows["noise"] and "## Uncertainty" in board


def test_cells_without_kept_scores_get_no_interval_and_a_note(tmp_path):
    scores, targets = _data(n=100, c=3)
    records = [_cell(tmp_path, "a", 1, scores, targets)]
    records.append({**records[0], "method": "b", "results_file": str(tmp_path / "gone.json")})
    intervals, notes = leaderboard_intervals(records, replicates=50)
    assert intervals == {} and "test scores not kept for b s1" in notes[0]
    assert leaderboard_intervals(records[:1], replicates=0) == ({}, [])
