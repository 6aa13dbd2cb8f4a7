"""Multi-label metrics: mAP, CP/CR/CF1, OP/OR/OF1 and their top-k variants.

Pure numpy (float64) so every method is scored by the same exact arithmetic, independent of the
device or the dtype it produced its scores in. Scores are used *raw*: they are uncalibrated CLIP
logits, and AP only depends on their order, which a sigmoid would destroy by saturating large
logits into ties.

Targets use the VOC encoding: 1 = positive, -1 = negative, 0 = "difficult". The ``difficult``
argument picks the protocol: ``"negative"`` (TaI-DPT/PVP/CoMC, the default) counts 0 as a
negative; ``"ignore"`` (ML-GCN) drops those entries from that class's AP only. ML-GCN's
``AveragePrecisionMeter`` applies ``difficult_examples`` to AP alone: its CP/CR/CF1/OP/OR/OF1
(and top-k) turn -1 into 0 and leave 0 as it is, so a prediction on a difficult image counts in
Np and the image is never a positive; both protocols therefore share the thresholded metrics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

Difficult = Literal["negative", "ignore"]
_DIFFICULT = ("negative", "ignore")


def _to_numpy(x: Any, name: str) -> np.ndarray:
    """numpy view of ``x``; torch tensors are detached and moved to the CPU first."""
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch here
        x = x.detach().cpu()
        if x.is_floating_point():
            x = x.double()  # numpy has no bfloat16
    try:
        return np.asarray(x)
    except Exception as err:  # pragma: no cover - exotic inputs
        raise ValueError(f"{name} must be array-like, got {type(x).__name__}") from err


def _check_scores(scores: Any, ndim: int, name: str = "scores") -> np.ndarray:
    arr = _to_numpy(scores, name)
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {arr.shape}")
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{name} must be real numbers, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    bad = ~np.isfinite(arr)
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"{name} must be finite, got {arr[where]} at index {where}")
    return arr


def _check_labels(labels: Any, allowed: tuple[int, ...], ndim: int, name: str) -> np.ndarray:
    arr = _to_numpy(labels, name)
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {arr.shape}")
    if arr.dtype == bool and 0 in allowed and -1 in allowed:
        raise ValueError(f"{name} must use 1/-1/0 (positive/negative/difficult), not booleans")
    if not (arr.dtype == bool or np.issubdtype(arr.dtype, np.number)):
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
    bad = ~np.isin(arr, allowed)
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"{name} must only contain {set(allowed)}, got {arr[where]} at {where}")
    return arr.astype(np.int8)


def _check_inputs(scores: Any, targets: Any, difficult: str) -> tuple[np.ndarray, np.ndarray]:
    s = _check_scores(scores, 2)
    t = _check_labels(targets, (-1, 0, 1), 2, "targets")
    if s.shape != t.shape:
        raise ValueError(f"scores and targets must have the same shape, got {s.shape} vs {t.shape}")
    if s.shape[0] == 0 or s.shape[1] == 0:
        raise ValueError(f"expected at least one sample and one class, got shape {s.shape}")
    if difficult not in _DIFFICULT:
        raise ValueError(f"difficult must be one of {_DIFFICULT}, got {difficult!r}")
    return s, t


def average_precision(scores_1d: Any, labels_1d: Any) -> float:
    """Non-interpolated AP of one class: the mean, over the positives, of the precision at
    each positive's rank when samples are sorted by descending score.

    Ties are handled as one group: all samples sharing a score are retrieved together, so every
    positive in the group gets the precision measured at the end of the group. This makes the
    result deterministic and independent of the input order, and identical to
    ``sklearn.metrics.average_precision_score`` even with ties.

    Args:
        scores_1d: [N] raw real scores (higher = more likely positive).
        labels_1d: [N] binary relevance, 1/True = positive, 0/False = negative.

    Returns:
        AP in [0, 1], or nan when there is no positive (AP is undefined then).
    """
    s = _check_scores(scores_1d, 1, "scores_1d")
    y = _check_labels(labels_1d, (0, 1), 1, "labels_1d")
    if s.shape != y.shape:
        raise ValueError(
            f"scores_1d and labels_1d must have the same length, got {s.shape} vs {y.shape}"
        )
    return _ap(s, y.astype(bool))


def _ap(s: np.ndarray, y: np.ndarray) -> float:
    n_pos = int(y.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    tp = np.cumsum(y)
    # Last index of each group of equal scores: the precision of the whole group is read there.
    ends = np.flatnonzero(np.r_[s[1:] != s[:-1], True])
    tp_end = tp[ends]
    pos_in_group = np.diff(tp_end, prepend=0)
    precision = tp_end / (ends + 1)
    return float(np.sum(pos_in_group * precision) / n_pos)


def per_class_average_precision(
    scores: Any, targets: Any, difficult: Difficult = "negative"
) -> np.ndarray:
    """[C] AP of every class (in [0, 1]); nan for classes without positives.

    With ``difficult="ignore"`` the samples whose target is 0 are dropped for that class only.
    """
    s, t = _check_inputs(scores, targets, difficult)
    return _per_class_ap(s, t, difficult)


def _per_class_ap(s: np.ndarray, t: np.ndarray, difficult: str) -> np.ndarray:
    ap = np.empty(s.shape[1])
    for k in range(s.shape[1]):
        keep = t[:, k] != 0 if difficult == "ignore" else slice(None)
        ap[k] = _ap(s[keep, k], t[keep, k] == 1)
    return ap


@dataclass(frozen=True, eq=False)
class MultilabelMetrics:
    """Result of :func:`compute_metrics`; all values are percentages (x100).

    Attributes:
        metrics: scalar metrics, keys ``mAP, CP, CR, CF1, OP, OR, OF1`` and
            ``CP_top{k}, CR_top{k}, CF1_top{k}, OP_top{k}, OR_top{k}, OF1_top{k}``.
        per_class_ap: [C] AP per class, nan for the excluded classes.
        excluded_classes: indices of the classes without positives (not in any average).
        num_samples: number of samples N.
        threshold, top_k, difficult: the settings the metrics were computed with.
    """

    metrics: dict[str, float]
    per_class_ap: np.ndarray
    excluded_classes: tuple[int, ...]
    num_samples: int
    threshold: float
    top_k: int
    difficult: Difficult

    @property
    def mAP(self) -> float:
        return self.metrics["mAP"]

    def __getitem__(self, key: str) -> float:
        return self.metrics[key]

    def as_dict(self) -> dict[str, float]:
        """All scalar metrics (a copy), e.g. for logging; nothing per-class."""
        return dict(self.metrics)


def _thresholded(pred: np.ndarray, t: np.ndarray) -> dict[str, float]:
    """CP, CR, CF1, OP, OR, OF1 (in [0, 1]) of the boolean predictions ``pred`` [N, C].

    ML-GCN's formulas: Np = 0 is replaced by 1 *before* the sums, so a class that predicts
    nothing adds 1 to OP's denominator exactly as in ML-GCN; CF1/OF1 are harmonic means of the
    averaged P and R. Classes without positives are left out of all averages and sums.
    """
    gt = t == 1  # a difficult entry (0) is a negative here under both protocols (ML-GCN)
    n_c = (pred & gt).sum(0)
    n_p = pred.sum(0)
    n_g = gt.sum(0)
    keep = n_g > 0
    n_c, n_p, n_g = n_c[keep], np.maximum(n_p[keep], 1), n_g[keep]
    if not keep.any():
        return dict.fromkeys(("CP", "CR", "CF1", "OP", "OR", "OF1"), float("nan"))
    cp, cr = float(np.mean(n_c / n_p)), float(np.mean(n_c / n_g))
    op, or_ = n_c.sum() / n_p.sum(), n_c.sum() / n_g.sum()
    return {"CP": cp, "CR": cr, "CF1": _f1(cp, cr), "OP": op, "OR": or_, "OF1": _f1(op, or_)}


def _f1(p: float, r: float) -> float:
    return float(2 * p * r / (p + r)) if p + r > 0 else 0.0


def _top_k_mask(s: np.ndarray, k: int) -> np.ndarray:
    """True for each image's k highest-scoring classes; ties go to the lower class index."""
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    mask = np.zeros(s.shape, dtype=bool)
    np.put_along_axis(mask, order, True, axis=1)
    return mask


def compute_metrics(
    scores: Any,
    targets: Any,
    *,
    threshold: float = 0.0,
    top_k: int = 3,
    difficult: Difficult = "negative",
) -> MultilabelMetrics:
    """mAP plus the thresholded metrics of the ML-GCN convention, all x100.

    Args:
        scores: [N, C] raw scores, never passed through a sigmoid (AP needs only the order;
            ``threshold`` must be on the same raw scale).
        targets: [N, C] in {1, 0, -1}: positive, difficult, negative.
        threshold: a class is predicted iff its score >= threshold.
        top_k: the ``*_top{k}`` metrics predict a class iff it is among the image's k highest
            scores (ties broken by the lower class index) *and* its score >= threshold.
        difficult: target 0 is a "negative" or is "ignore"d by its class's AP; the
            thresholded metrics count it as a negative either way (as ML-GCN does).
    """
    s, t = _check_inputs(scores, targets, difficult)
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
        raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
    if np.isnan(threshold):
        raise ValueError("threshold must be a number, got nan")
    ap = _per_class_ap(s, t, difficult)
    excluded = tuple(int(k) for k in np.flatnonzero(np.isnan(ap)))
    m_ap = float(np.mean(ap[~np.isnan(ap)])) if len(excluded) < len(ap) else float("nan")
    above = s >= threshold
    metrics = {"mAP": m_ap, **_thresholded(above, t)}
    top = _thresholded(above & _top_k_mask(s, int(top_k)), t)
    metrics.update({f"{key}_top{top_k}": value for key, value in top.items()})
    per_class_ap = ap * 100
    per_class_ap.flags.writeable = False
    return MultilabelMetrics(
        metrics={key: float(value) * 100 for key, value in metrics.items()},
        per_class_ap=per_class_ap,
        excluded_classes=excluded,
        num_samples=int(s.shape[0]),
        threshold=float(threshold),
        top_k=int(top_k),
        difficult=difficult,
    )


def format_metrics(m: MultilabelMetrics, class_names: list[str] | None = None) -> str:
    """A short table for the console: the headline metrics on one line, then AP per class."""
    head = "  ".join(f"{key} {value:.2f}" for key, value in m.metrics.items())
    names = (
        list(class_names)
        if class_names is not None
        else [str(i) for i in range(len(m.per_class_ap))]
    )
    if len(names) != len(m.per_class_ap):
        raise ValueError(f"got {len(names)} class names for {len(m.per_class_ap)} classes")
    width = max(len(n) for n in names)
    lines = [
        f"N={m.num_samples}  threshold={m.threshold:g}  difficult={m.difficult}",
        head,
        "per-class AP:",
    ]
    for name, ap in zip(names, m.per_class_ap, strict=True):
        value = "   n/a (no positives)" if np.isnan(ap) else f"{ap:6.2f}"
        lines.append(f"  {name:<{width}}  {value}")
    return "\n".join(lines)
