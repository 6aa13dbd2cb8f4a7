"""Metrics: AP against scikit-learn, hand-computed ML-GCN thresholded metrics, VOC difficult."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from mlr_bench.eval.metrics import (
    MultilabelMetrics,
    average_precision,
    compute_metrics,
    format_metrics,
    per_class_average_precision,
)


def _random_case(seed: int, n: int, c: int, decimals: int | None = None):
    """Random scores and {-1, 1} targets; every class gets at least one positive and negative."""
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=(n, c)) * 3
    if decimals is not None:
        scores = np.round(scores, decimals)
    targets = np.where(rng.random((n, c)) < 0.3, 1, -1)
    targets[0], targets[1] = 1, -1
    return scores, targets


def _sklearn_ap(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    return np.array(
        [average_precision_score(targets[:, k] == 1, scores[:, k]) for k in range(scores.shape[1])]
    )


# ---- AP vs scikit-learn -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("seed", "n", "c"), [(s, n, c) for s in range(4) for n, c in ((5, 3), (37, 7), (400, 20))]
)
def test_ap_matches_sklearn_without_ties(seed: int, n: int, c: int) -> None:
    scores, targets = _random_case(seed, n, c)
    assert len(np.unique(scores)) == scores.size  # really tie-free
    expected = _sklearn_ap(scores, targets)
    np.testing.assert_allclose(per_class_average_precision(scores, targets), expected, atol=1e-6)
    for k in range(c):
        assert average_precision(scores[:, k], targets[:, k] == 1) == pytest.approx(
            expected[k], abs=1e-6
        )
    m = compute_metrics(scores, targets)
    assert m.mAP == pytest.approx(100 * expected.mean(), abs=1e-6)
    np.testing.assert_allclose(m.per_class_ap, 100 * expected, atol=1e-6)


@pytest.mark.parametrize(("seed", "n", "c"), [(s, n, 6) for s in range(5) for n in (8, 60, 300)])
def test_ap_matches_sklearn_with_ties_and_ignores_order(seed: int, n: int, c: int) -> None:
    scores, targets = _random_case(seed, n, c, decimals=0 if n < 50 else 1)
    assert len(np.unique(scores)) < scores.size  # the case really has ties
    expected = _sklearn_ap(scores, targets)
    np.testing.assert_allclose(per_class_average_precision(scores, targets), expected, atol=1e-6)
    perm = np.random.default_rng(100 + seed).permutation(n)
    np.testing.assert_array_equal(
        per_class_average_precision(scores[perm], targets[perm]),
        per_class_average_precision(scores, targets),
    )


def test_ap_by_hand() -> None:
    # Ranked labels 1 0 1 0 1: precision at the positives is 1/1, 2/3, 3/5.
    # AP = (1 + 2/3 + 3/5) / 3 = 34/45 = 0.7555...
    scores = np.array([0.5, 0.9, 0.6, 0.7, 0.8])
    labels = np.array([1, 1, 0, 1, 0])  # sorted by score: 0.9:1 0.8:0 0.7:1 0.6:0 0.5:1
    assert average_precision(scores, labels) == pytest.approx(34 / 45, abs=1e-12)


@pytest.mark.parametrize("labels", [[0, 1, 0, 1], [0, 0, 1, 1]])
def test_ap_tie_group_by_hand(labels: list[int]) -> None:
    # Scores 0.9 | 0.5 0.5 | 0.1 with one positive inside the tie and one last. The tie group
    # is retrieved as a whole: its positive gets precision 1/3 (1 positive in 3 retrieved),
    # the last positive 2/4. AP = (1/3 + 1/2) / 2 = 5/12, whichever tied sample is positive.
    # (Breaking the tie in favour of the positive would give (1/2 + 1/2) / 2 = 1/2.)
    scores = np.array([0.9, 0.5, 0.5, 0.1])
    assert average_precision(scores, np.array(labels)) == pytest.approx(5 / 12, abs=1e-12)


def test_ap_without_positives_is_nan() -> None:
    assert math.isnan(average_precision(np.array([0.3, 0.2]), np.array([0, 0])))


def test_torch_tensors_are_accepted() -> None:
    torch = pytest.importorskip("torch")
    scores, targets = _random_case(0, 50, 4)
    expected = compute_metrics(scores, targets)
    got = compute_metrics(torch.from_numpy(scores), torch.from_numpy(targets).to(torch.int8))
    assert got.as_dict() == pytest.approx(expected.as_dict(), abs=1e-12)
    half = torch.from_numpy(scores).to(torch.bfloat16)  # numpy has no bfloat16
    np.testing.assert_allclose(
        per_class_average_precision(half, torch.from_numpy(targets)),
        per_class_average_precision(half.double().numpy(), targets),
    )


# ---- thresholded metrics (ML-GCN convention), computed by hand ---------------------------------
SCORES_4x4 = np.array(
    [
        [2.0, 1.0, 0.5, 0.2],
        [-1.0, 3.0, -2.0, 0.1],
        [0.5, -0.5, 1.5, -3.0],
        [-0.2, -1.0, -0.3, 2.5],
    ]
)
TARGETS_4x4 = np.array(
    [
        [1, 1, -1, 1],
        [-1, 1, -1, -1],
        [1, -1, 1, -1],
        [1, -1, -1, 1],
    ]
)


def test_thresholded_metrics_by_hand() -> None:
    # threshold 0 -> predicted (score >= 0):   ground truth (target 1):
    #   1 1 1 1                                  1 1 0 1
    #   0 1 0 1                                  0 1 0 0
    #   1 0 1 0                                  1 0 1 0
    #   0 0 0 1                                  1 0 0 1
    # class:   0    1    2    3
    # Nc:      2    2    1    2     (sum 7)
    # Np:      2    2    2    3     (sum 9)
    # Ng:      3    2    1    2     (sum 8)
    # CP = (1 + 1 + 1/2 + 2/3) / 4 = 19/24      CR = (2/3 + 1 + 1 + 1) / 4 = 11/12
    # CF1 = 2 CP CR / (CP + CR) = 2*19*22 / (24*41) = 209/246
    # OP = 7/9, OR = 7/8, OF1 = 2 * 49/72 / (119/72) = 14/17
    #
    # top-3: each row drops its lowest class; only row 0 loses a prediction (class 3, 0.2);
    # row 1's third class (class 0, -1.0) and row 3's (class 0/2, < 0) fail the threshold anyway.
    # class 3 becomes Nc=1, Np=2, Ng=2:
    # CP = (1 + 1 + 1/2 + 1/2) / 4 = 3/4      CR = (2/3 + 1 + 1 + 1/2) / 4 = 19/24
    # CF1 = 2 * 3/4 * 19/24 / (3/4 + 19/24) = 57/74
    # OP = 6/8, OR = 6/8, OF1 = 3/4
    m = compute_metrics(SCORES_4x4, TARGETS_4x4, threshold=0.0, top_k=3)
    expected = {
        "CP": 19 / 24,
        "CR": 11 / 12,
        "CF1": 209 / 246,
        "OP": 7 / 9,
        "OR": 7 / 8,
        "OF1": 14 / 17,
        "CP_top3": 3 / 4,
        "CR_top3": 19 / 24,
        "CF1_top3": 57 / 74,
        "OP_top3": 3 / 4,
        "OR_top3": 3 / 4,
        "OF1_top3": 3 / 4,
    }
    got = m.as_dict()
    assert set(got) == {"mAP", *expected}
    for key, value in expected.items():
        assert got[key] == pytest.approx(100 * value, abs=1e-9), key
    assert m["CF1"] == got["CF1"]


def test_cf1_is_harmonic_mean_of_averages_not_mean_of_f1() -> None:
    # Per-class F1 from the hand table above: 4/5, 1, 2/3, 4/5 -> mean 0.8166...,
    # which differs from CF1 = 209/246 = 0.8495...
    m = compute_metrics(SCORES_4x4, TARGETS_4x4)
    mean_f1 = (4 / 5 + 1 + 2 / 3 + 4 / 5) / 4
    assert m.metrics["CF1"] == pytest.approx(100 * 209 / 246)
    assert abs(m.metrics["CF1"] - 100 * mean_f1) > 1


def test_threshold_is_on_raw_scores() -> None:
    # threshold 1.0: predicted = (0,0) (0,1) (1,1) (2,2) (3,3); all are true positives.
    # Nc = Np = (1, 2, 1, 1), Ng = (3, 2, 1, 2): CP = 1, CR = (1/3 + 1 + 1 + 1/2) / 4 = 17/24.
    m = compute_metrics(SCORES_4x4, TARGETS_4x4, threshold=1.0)
    assert m.metrics["CP"] == pytest.approx(100.0)
    assert m.metrics["CR"] == pytest.approx(100 * 17 / 24)
    assert m.metrics["OP"] == pytest.approx(100 * 5 / 5)
    assert m.metrics["OR"] == pytest.approx(100 * 5 / 8)


def test_np_zero_is_replaced_by_one() -> None:
    # class 0: Nc=1, Np=1, Ng=1.  class 1: never predicted, Nc=0, Np=0 -> 1, Ng=1.
    # CP = (1 + 0/1) / 2 = 1/2 (no 0/0 = nan); CR = (1 + 0) / 2 = 1/2; CF1 = 1/2.
    # OP = 1 / (1 + 1) = 1/2: as in ML-GCN the replaced Np also enters the overall sum.
    scores = np.array([[1.0, -1.0], [-1.0, -2.0]])
    targets = np.array([[1, 1], [-1, -1]])
    m = compute_metrics(scores, targets)
    assert m.metrics["CP"] == pytest.approx(50.0)
    assert m.metrics["CR"] == pytest.approx(50.0)
    assert m.metrics["CF1"] == pytest.approx(50.0)
    assert m.metrics["OP"] == pytest.approx(50.0)
    assert m.metrics["OR"] == pytest.approx(50.0)


def test_f1_is_zero_without_any_true_positive() -> None:
    scores = np.array([[-1.0, 1.0], [1.0, -1.0]])
    targets = np.array([[1, -1], [-1, 1]])  # every prediction is wrong
    m = compute_metrics(scores, targets)
    for key in ("CP", "CR", "CF1", "OP", "OR", "OF1"):
        assert m.metrics[key] == 0.0, key


def test_top_k_ties_go_to_lower_class_index() -> None:
    # Row 0 has three tied scores; top-2 must pick classes 0 and 1 (lower index first).
    # Class 2 is only positive in row 1, where nothing reaches the threshold.
    # Classes (0, 1) picked: Nc = (1, 1, 0), Ng = (1, 1, 1) -> CR_top2 = 2/3.
    # Any other pair, (0, 2) or (1, 2), would give Nc summing to 1 -> CR_top2 = 1/3.
    scores = np.array([[1.0, 1.0, 1.0], [-1.0, -1.0, -1.0]])
    targets = np.array([[1, 1, -1], [-1, -1, 1]])
    m = compute_metrics(scores, targets, top_k=2)
    assert m.metrics["CR_top2"] == pytest.approx(100 * 2 / 3)
    assert m.metrics["OR_top2"] == pytest.approx(100 * 2 / 3)
    assert "CR_top3" not in m.metrics


# ---- VOC difficult -----------------------------------------------------------------------------
def test_difficult_negative_vs_ignore_by_hand() -> None:
    # one class, scores 0.9 0.8 0.7 0.6, targets 1 0 1 -1 (the 0.8 sample is difficult)
    # "negative": ranked 1 0 1 0 -> AP = (1/1 + 2/3) / 2 = 5/6
    # "ignore":   ranked 1 . 1 0 -> AP = (1/1 + 2/2) / 2 = 1    (1/6 = 16.67 points higher)
    # threshold 0.75 predicts the 0.9 and 0.8 samples. ML-GCN's evaluation() maps -1 to 0 and
    # keeps 0 (difficult_examples is for AP only): Ng = #(target == 1) = 2, Np = #(score >=
    # 0.75) = 2 (the difficult one included), Nc = 1 -> CP = 1/2, CR = 1/2 under both protocols.
    scores = np.array([[0.9], [0.8], [0.7], [0.6]])
    targets = np.array([[1], [0], [1], [-1]])
    neg = compute_metrics(scores, targets, threshold=0.75, difficult="negative")
    ign = compute_metrics(scores, targets, threshold=0.75, difficult="ignore")
    assert neg.mAP == pytest.approx(100 * 5 / 6)
    assert ign.mAP == pytest.approx(100.0)
    assert ign.mAP - neg.mAP == pytest.approx(100 / 6)
    assert (neg.metrics["CP"], neg.metrics["CR"]) == pytest.approx((50.0, 50.0))
    assert (ign.metrics["CP"], ign.metrics["CR"]) == pytest.approx((50.0, 50.0))
    assert (ign.metrics["OP"], ign.metrics["OR"]) == pytest.approx((50.0, 50.0))
    assert neg.difficult == "negative"
    assert ign.difficult == "ignore"
    # default is "negative"
    assert compute_metrics(scores, targets).mAP == pytest.approx(100 * 5 / 6)


def test_difficult_ignore_matches_sklearn_on_the_kept_samples() -> None:
    rng = np.random.default_rng(7)
    scores = rng.normal(size=(200, 5))
    targets = rng.choice([-1, 0, 1], size=(200, 5), p=[0.6, 0.1, 0.3])
    ign = per_class_average_precision(scores, targets, difficult="ignore")
    neg = per_class_average_precision(scores, targets, difficult="negative")
    for k in range(5):
        keep = targets[:, k] != 0
        expected = average_precision_score(targets[keep, k] == 1, scores[keep, k])
        assert ign[k] == pytest.approx(expected, abs=1e-9)
        assert neg[k] == pytest.approx(
            average_precision_score(targets[:, k] == 1, scores[:, k]), abs=1e-9
        )
    assert not np.allclose(ign, neg)


# ---- classes without positives ---------------------------------------------------------------
def test_class_without_positives_is_excluded() -> None:
    # class 0: ranked 1 0 1 -> AP = (1 + 2/3) / 2 = 5/6;  class 1: ranked 1 0 0 -> AP = 1
    # class 2: no positives (only a difficult sample and negatives) -> nan, excluded.
    # mAP = (5/6 + 1) / 2 = 11/12.  Class 2 predicts everything (scores > 0), but being
    # excluded its false positives do not enter CP or OP: with threshold 0,
    # class 0: Nc=2, Np=3; class 1: Nc=1, Np=1 -> CP = (2/3 + 1)/2 = 5/6, OP = 3/4.
    scores = np.array([[0.9, 0.8, 0.5], [0.5, -0.1, 0.6], [0.2, -0.5, 0.7]])
    targets = np.array([[1, 1, 0], [-1, -1, -1], [1, -1, -1]])
    for difficult in ("negative", "ignore"):
        m = compute_metrics(scores, targets, difficult=difficult)
        assert m.excluded_classes == (2,)
        assert math.isnan(m.per_class_ap[2])
        np.testing.assert_allclose(m.per_class_ap[:2], [100 * 5 / 6, 100.0])
        assert m.mAP == pytest.approx(100 * 11 / 12)
        assert m.metrics["CP"] == pytest.approx(100 * 5 / 6)
        assert m.metrics["OP"] == pytest.approx(100 * 3 / 4)
        assert m.num_samples == 3


def test_no_positives_at_all_gives_nan_not_an_error() -> None:
    m = compute_metrics(np.array([[1.0, 2.0]]), np.array([[-1, 0]]))
    assert m.excluded_classes == (0, 1)
    assert math.isnan(m.mAP)
    assert math.isnan(m.metrics["CF1"])


# ---- raw scores, never a sigmoid -------------------------------------------------------------
def test_scale_and_shift_do_not_change_ap() -> None:
    rng = np.random.default_rng(3)
    scores = rng.permutation(np.arange(300.0)).reshape(100, 3) / 300  # distinct, spaced 1/300
    targets = np.where(rng.random((100, 3)) < 0.3, 1, -1)
    base = compute_metrics(scores, targets).per_class_ap
    np.testing.assert_allclose(compute_metrics(scores * 1000, targets).per_class_ap, base)
    np.testing.assert_allclose(compute_metrics(scores + 50, targets).per_class_ap, base)
    # A sigmoid would saturate x1000 scores into ties at 0 and 1 and change AP: the check bites.
    sig = 1 / (1 + np.exp(-(scores - 0.5) * 1000))
    assert not np.allclose(_sklearn_ap(sig, targets) * 100, base)


def test_large_logits_are_not_saturated() -> None:
    # CLIP-like logits 30..40: in float64 sigmoid(x) rounds to exactly 1.0 for x >~ 37,
    # so a sigmoided AP would be computed over massive ties.
    rng = np.random.default_rng(4)
    scores = 30 + 10 * rng.random((500, 4))
    targets = np.where(rng.random((500, 4)) < 0.2, 1, -1)
    m = compute_metrics(scores, targets, threshold=35.0)
    expected = _sklearn_ap(scores, targets)
    np.testing.assert_allclose(m.per_class_ap, 100 * expected, atol=1e-6)
    np.testing.assert_allclose(compute_metrics(scores - 35, targets).per_class_ap, m.per_class_ap)
    assert not np.allclose(_sklearn_ap(1 / (1 + np.exp(-scores)), targets), expected)
    # the threshold is on the raw scale as well: about half the scores are >= 35
    assert 0 < m.metrics["OR"] < 100


# ---- bad input -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("scores", "targets", "message"),
    [
        (np.zeros((3, 2)), np.ones((3, 3)), r"same shape.*\(3, 2\).*\(3, 3\)"),
        (np.zeros((2, 2)), np.array([[1, 2], [1, -1]]), r"targets must only contain .*got 2"),
        (np.array([[0.1, np.nan]]), np.array([[1, -1]]), r"scores must be finite, got nan"),
        (np.array([[0.1, np.inf]]), np.array([[1, -1]]), r"scores must be finite, got inf"),
        (np.zeros(3), np.ones(3), r"scores must be 2-D, got shape \(3,\)"),
        (np.zeros((3, 1)), np.ones(3), r"targets must be 2-D, got shape \(3,\)"),
        (np.zeros((0, 2)), np.ones((0, 2)), r"at least one sample"),
        (np.zeros((1, 2)), np.array([[True, False]]), r"not booleans"),
    ],
)
def test_bad_input_raises(scores, targets, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        compute_metrics(scores, targets)
    with pytest.raises(ValueError, match=message):
        per_class_average_precision(scores, targets)


def test_bad_settings_and_1d_input_raise() -> None:
    with pytest.raises(ValueError, match=r"difficult must be one of .*'hard'"):
        compute_metrics(SCORES_4x4, TARGETS_4x4, difficult="hard")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"top_k must be a positive integer, got 0"):
        compute_metrics(SCORES_4x4, TARGETS_4x4, top_k=0)
    with pytest.raises(ValueError, match=r"labels_1d must only contain .*got -1"):
        average_precision(np.array([0.2, 0.1]), np.array([1, -1]))
    with pytest.raises(ValueError, match=r"same length, got \(2,\) vs \(3,\)"):
        average_precision(np.array([0.2, 0.1]), np.array([1, 0, 1]))
    with pytest.raises(ValueError, match=r"scores_1d must be 1-D, got shape \(1, 2\)"):
        average_precision(np.array([[0.2, 0.1]]), np.array([1, 0]))


# ---- result object and formatting ------------------------------------------------------------
def test_result_is_frozen_and_as_dict_is_scalar_only() -> None:
    m = compute_metrics(SCORES_4x4, TARGETS_4x4)
    assert isinstance(m, MultilabelMetrics)
    with pytest.raises(AttributeError):
        m.num_samples = 5  # type: ignore[misc]
    with pytest.raises(ValueError):
        m.per_class_ap[0] = 0.0
    d = m.as_dict()
    assert all(isinstance(v, float) for v in d.values())
    d["mAP"] = -1.0
    assert m.mAP != -1.0  # a copy


def test_format_metrics() -> None:
    scores = np.array([[0.9, 0.8, 0.5], [0.5, -0.1, 0.6], [0.2, -0.5, 0.7]])
    targets = np.array([[1, 1, 0], [-1, -1, -1], [1, -1, -1]])
    m = compute_metrics(scores, targets)
    text = format_metrics(m, ["cat", "dog", "horse"])
    assert f"mAP {100 * 11 / 12:.2f}" in text
    assert "OF1_top3" in text
    assert "  cat     83.33\n" in text
    assert "horse  " in text and "n/a" in text
    assert "  2  " in format_metrics(m)  # default names are the class indices
    with pytest.raises(ValueError, match="2 class names for 3 classes"):
        format_metrics(m, ["cat", "dog"])
