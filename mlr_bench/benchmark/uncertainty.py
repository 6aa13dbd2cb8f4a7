"""How sure a leaderboard can be: 95% intervals that combine seeds and test images, paired.

A method's test mAP varies with its training seed and with which test images happen to be in
the test set. The interval here resamples both, as a two-level bootstrap:

* **images**, jointly for every method: replicate b draws N test images with replacement (a
  multiplicity vector ``w_b``), the same draw for all methods, so differences between methods
  are *paired* (an easy image set makes every method look good at once);
* **seeds**, per method: replicate b averages the mAP of S seeds drawn with replacement from
  the method's S runs (with S = 1 the interval reflects the images alone, and says n = 1).

Each replicate's mAP is the exact mAP of the evaluator (ties as one group, classes without a
positive left out) with image weights ``w_b``: it equals
``sklearn.metrics.average_precision_score(..., sample_weight=w_b)`` per class, and the
evaluator's mAP for ``w_b = 1``. A method differs *significantly* from the best when the 95%
interval of the paired difference (best − method) excludes 0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

#: Replicates of the bootstrap by default (percentile intervals settle to ~0.1 mAP by ~500).
DEFAULT_REPLICATES = 1000
#: Replicates per block: bounds the [block, N] weight matrices (COCO: 100 x 40k x 8 B = 32 MB).
_BLOCK = 100


@dataclass(frozen=True)
class Interval:
    """A method's 95% interval (mAP in %) and its paired difference from the best method."""

    low: float
    high: float
    seeds: int
    #: 95% interval of (best − this method), paired over images; None for the best itself.
    diff_low: float | None = None
    diff_high: float | None = None

    @property
    def significant(self) -> bool | None:
        """Whether the best method is significantly better (None for the best itself)."""
        return None if self.diff_low is None else self.diff_low > 0


def weighted_average_precision(
    scores: np.ndarray, positive: np.ndarray, weights: np.ndarray
) -> np.ndarray:
    """AP of one class under each row of ``weights`` ([B, N] image multiplicities): [B], nan
    where a row weighs no positive. Samples with equal scores form one group, whose positives
    all get the precision at the group's end (the evaluator's and sklearn's rule)."""
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], positive[order].astype(np.float64)
    w = weights[:, order].astype(np.float64)
    ends = np.flatnonzero(np.r_[s[1:] != s[:-1], True])
    tp = np.cumsum(w * y, axis=1)[:, ends]
    seen = np.cumsum(w, axis=1)[:, ends]
    gained = np.diff(tp, axis=1, prepend=0.0)
    precision = np.divide(tp, seen, out=np.zeros_like(tp), where=seen > 0)
    total = tp[:, -1]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, (gained * precision).sum(axis=1) / total, np.nan)


def weighted_map(
    scores: np.ndarray, targets: np.ndarray, weights: np.ndarray, difficult: str = "negative"
) -> np.ndarray:
    """mAP (%) under each row of ``weights``: [B]. Targets are {1, 0, -1} as the evaluator's;
    ``difficult="ignore"`` leaves 0 entries out of their class's AP, "negative" counts them as
    negatives. Classes without a positive in the full set are left out (as the evaluator)."""
    aps = []
    for c in range(targets.shape[1]):
        t = targets[:, c]
        if not (t == 1).any():
            continue
        keep = t != 0 if difficult == "ignore" else np.ones(len(t), dtype=bool)
        aps.append(weighted_average_precision(scores[keep, c], t[keep] == 1, weights[:, keep]))
    with np.errstate(invalid="ignore"):
        return 100.0 * np.nanmean(np.stack(aps, axis=1), axis=1)


def image_weights(n: int, replicates: int, seed: int) -> np.ndarray:
    """[replicates, n] multiplicities of n images drawn with replacement (row sums = n)."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n, size=(replicates, n))
    return np.stack([np.bincount(row, minlength=n) for row in draws]).astype(np.float32)


def paired_intervals(
    runs: Mapping[str, Sequence[tuple[np.ndarray, np.ndarray]]],
    replicates: int = DEFAULT_REPLICATES,
    seed: int = 0,
    difficult: str = "negative",
) -> dict[str, Interval]:
    """95% intervals for each method of ``runs`` (method -> its seeds' ``(scores, targets)``
    on the same test set), images resampled jointly, seeds per method (see the module doc)."""
    if not runs:
        return {}
    targets = next(iter(runs.values()))[0][1]
    for method, seeds in runs.items():
        for scores, t in seeds:
            if t.shape != targets.shape or not np.array_equal(t, targets):
                raise ValueError(
                    f"{method}: its test targets differ from the other methods' (shape "
                    f"{t.shape} vs {targets.shape}); a paired bootstrap needs one test set"
                )
            if scores.shape != targets.shape:
                raise ValueError(f"{method}: scores {scores.shape} vs targets {targets.shape}")
    n = len(targets)
    per_seed: dict[str, np.ndarray] = {m: np.empty((len(s), replicates)) for m, s in runs.items()}
    for start in range(0, replicates, _BLOCK):
        stop = min(start + _BLOCK, replicates)
        weights = image_weights(n, stop - start, seed * 1_000_003 + start)
        for method, seeds in runs.items():
            for i, (scores, t) in enumerate(seeds):
                per_seed[method][i, start:stop] = weighted_map(scores, t, weights, difficult)
    rng = np.random.default_rng(seed + 1)
    combined = {}
    for method, table in per_seed.items():
        picks = rng.integers(0, len(table), size=(replicates, len(table)))
        combined[method] = table[picks, np.arange(replicates)[:, None]].mean(axis=1)
    point = {
        m: float(np.mean([weighted_map(s, t, np.ones((1, n)), difficult)[0] for s, t in seeds]))
        for m, seeds in runs.items()
    }
    best = max(point, key=point.__getitem__)
    out = {}
    for method, values in combined.items():
        low, high = np.percentile(values, [2.5, 97.5])
        diff = None if method == best else np.percentile(combined[best] - values, [2.5, 97.5])
        out[method] = Interval(
            float(low),
            float(high),
            len(runs[method]),
            None if diff is None else float(diff[0]),
            None if diff is None else float(diff[1]),
        )
    return out


def auto_replicates(n_images: int, n_classes: int, n_runs: int) -> int:
    """1000 replicates for small test sets (the world: seconds); 200 from ~2M image x class x
    run cells (COCO, NUS-WIDE: minutes on a CPU), where 200 still pins a 95% percentile
    interval to within a few tenths of a point."""
    return DEFAULT_REPLICATES if n_images * n_classes * n_runs <= 2_000_000 else 200


def record_scores(record: Mapping) -> tuple[np.ndarray, np.ndarray, str] | None:
    """The test scores, targets and evaluator ``difficult`` setting of a benchmark record
    (None: not written, e.g. a cell finished before scores were kept, or a moved folder)."""
    import json
    from pathlib import Path

    from mlr_bench.eval.evaluator import read_scores

    results = record.get("results_file")
    if not results:
        return None
    try:
        content = json.loads(Path(results).read_text(encoding="utf-8"))
        name = content.get("scores_file")
        difficult = (content.get("evaluator") or {}).get("difficult", "negative")
        return (*read_scores(Path(results).with_name(name)), difficult) if name else None
    except (OSError, ValueError, KeyError):
        return None


def leaderboard_intervals(
    records: Sequence[Mapping], replicates: int | None = None, seed: int = 0
) -> tuple[dict[tuple[str, str], Interval], list[str]]:
    """Intervals per (method, column) over the successful records (``dataset`` = column), and
    notes on columns left without them. ``replicates=None`` picks :func:`auto_replicates`;
    0 computes none."""
    columns: dict[str, dict[str, list]] = {}
    difficult: dict[str, set[str]] = {}
    missing: dict[str, list[str]] = {}
    for record in records:
        if record.get("status") != "ok":
            continue
        column, method = str(record["dataset"]), str(record["method"])
        found = record_scores(record)
        if found is None:
            missing.setdefault(column, []).append(f"{method} s{record.get('seed')}")
        else:
            columns.setdefault(column, {}).setdefault(method, []).append(found[:2])
            difficult.setdefault(column, set()).add(found[2])
    out: dict[tuple[str, str], Interval] = {}
    notes = []
    if replicates == 0:
        return out, notes
    for column, runs in columns.items():
        if column in missing:
            notes.append(
                f"- {column}: no intervals; test scores not kept for {', '.join(missing[column])} "
                "(cells run before mlr-bench kept scores_test.npz: run them again with --rerun)"
            )
            continue
        if len(difficult[column]) > 1:
            notes.append(f"- {column}: no intervals; cells scored VOC difficult labels both ways")
            continue
        first = next(iter(runs.values()))[0][1]
        count = replicates or auto_replicates(*first.shape, sum(map(len, runs.values())))
        try:
            found = paired_intervals(runs, count, seed, difficult[column].pop())
        except ValueError as exc:
            notes.append(f"- {column}: no intervals; {exc}")
            continue
        out |= {(method, column): interval for method, interval in found.items()}
        notes.append(f"- {column}: {count} bootstrap replicates")
    return out, notes
