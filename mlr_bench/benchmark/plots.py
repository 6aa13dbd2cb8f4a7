"""PNG figures of a benchmark: mAP per method × dataset, and per-class AP heatmaps.

matplotlib runs on the Agg backend (no display needed, safe in child processes and CI).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path

from mlr_bench.benchmark.report import RANDOM_LABEL, Summary


def _pyplot():  # imported lazily: matplotlib is only needed once the matrix is done
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    """Write through a temporary file and rename, like every other benchmark output."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png")
    tmp.replace(path)
    return path


def map_bar_chart(
    summaries: Sequence[Summary],
    methods: Sequence[str],
    datasets: Sequence[str],
    path: Path,
    title: str,
) -> Path:
    """Grouped bars: one group per dataset, one bar per method, error bars = std over seeds."""
    plt = _pyplot()
    by_key = {(s.method, s.dataset): s for s in summaries}
    width = 0.8 / max(len(methods), 1)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * len(datasets) * max(len(methods), 2) / 2), 4))
    for i, method in enumerate(methods):
        xs, heights, errors, labels = [], [], [], []
        for j, dataset in enumerate(datasets):
            s = by_key.get((method, dataset))
            if s is None or math.isnan(s.mean["mAP"]):
                continue
            xs.append(j - 0.4 + width * (i + 0.5))
            heights.append(s.mean["mAP"])
            errors.append(s.std["mAP"])
            labels.append(f"{s.mean['mAP']:.1f}" + ("\nrandom" if s.random_weights else ""))
        bars = ax.bar(xs, heights, width, yerr=errors, capsize=3, label=method)
        ax.bar_label(bars, labels=labels, fontsize=7, padding=2)
    ax.set_xticks(range(len(datasets)), list(datasets))
    ax.set_xlabel("dataset")
    ax.set_ylabel("test mAP (%)")
    ax.set_ylim(0, 105)
    ax.set_title(title)
    ax.legend(title="method", fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(axis="y", alpha=0.3)
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)


def per_class_heatmap(
    summaries: Sequence[Summary], dataset: str, path: Path, title: str
) -> Path | None:
    """Methods × classes, colour = per-class AP (mean over seeds); None if nothing to draw."""
    rows = [s for s in summaries if s.dataset == dataset and s.per_class_ap]
    if not rows:
        return None
    import numpy as np

    plt = _pyplot()
    classes = list(rows[0].per_class_ap)
    values = np.array(
        [
            [np.nan if s.per_class_ap.get(c) is None else s.per_class_ap[c] for c in classes]
            for s in rows
        ],
        dtype=float,
    )
    fig, ax = plt.subplots(figsize=(max(6.0, 0.32 * len(classes) + 2), 1.0 + 0.45 * len(rows)))
    cmap = plt.get_cmap("viridis").with_extremes(bad="lightgrey")  # no positives: grey
    image = ax.imshow(np.ma.masked_invalid(values), aspect="auto", cmap=cmap, vmin=0, vmax=100)
    ax.set_xticks(range(len(classes)), classes, rotation=90, fontsize=7)
    ax.set_yticks(range(len(rows)), [s.method for s in rows], fontsize=8)
    ax.set_xlabel("class")
    ax.set_ylabel("method")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="AP (%)", fraction=0.03, pad=0.01)
    if len(classes) <= 30:  # small enough to print the values
        for (i, j), value in np.ndenumerate(values):
            if not np.isnan(value):
                colour = "white" if value < 60 else "black"
                ax.text(j, i, f"{value:.0f}", ha="center", va="center", fontsize=6, color=colour)
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)


def _random_mark(summaries: Sequence[Summary]) -> str:
    """A title suffix when any of the plotted cells had random CLIP weights."""
    if not any(s.random_weights for s in summaries):
        return ""
    marked = [s.method for s in summaries if s.random_weights]
    return f"\n({', '.join(dict.fromkeys(marked))}: {RANDOM_LABEL})"


def plot_all(
    summaries: Sequence[Summary],
    methods: Sequence[str],
    datasets: Sequence[str],
    folder: Path,
    name: str,
    seeds: Sequence[int],
) -> list[Path]:
    """Every figure of the benchmark, into ``folder``; returns the files written."""
    seed_text = ",".join(str(s) for s in seeds)
    paths = [
        map_bar_chart(
            summaries,
            methods,
            datasets,
            folder / "map_by_method.png",
            f"{name}: test mAP, mean ± std over seeds {seed_text}{_random_mark(summaries)}",
        )
    ]
    for dataset in datasets:
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", dataset)
        mark = _random_mark([s for s in summaries if s.dataset == dataset])
        path = per_class_heatmap(
            summaries,
            dataset,
            folder / f"per_class_ap_{safe}.png",
            f"{name}: per-class test AP on {dataset} (mean over seeds){mark}",
        )
        if path is not None:
            paths.append(path)
    return paths
