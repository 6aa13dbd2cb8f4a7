"""Tables from cell records: ``results.csv``/``results.json`` and ``leaderboard.md``."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mlr_bench.benchmark.matrix import REFERENCE, track_of
from mlr_bench.benchmark.reference import (
    BACKBONE_MARK,
    CellSetting,
    ReferenceTable,
    Reported,
    cell_setting,
    column_dataset,
)
from mlr_bench.benchmark.uncertainty import Interval
from mlr_bench.protocol import CLEAN
from mlr_bench.provenance import PRETRAINED, RANDOM, UNKNOWN

ID_COLUMNS = ["method", "dataset", "protocol", "backbone", "weights", "seed", "status"]
HEADLINE_METRICS = ["mAP", "CF1", "OF1"]
COST_COLUMNS = ["train_time_s", "eval_time_s", "peak_memory_mb", "memory"]
#: What each cell's training spent (``results.json`` budget; see :mod:`mlr_bench.budget`).
BUDGET_COLUMNS = ["optimizer_steps", "reference_steps", "steps_x_reference", "train_device_s"]
TAIL_COLUMNS = ["run_dir", "error"]
#: Beside the mAP of a cell whose CLIP had random weights (``--method.pretrained none``).
RANDOM_LABEL = "random weights — rehearsal only"


def metric_columns(records: Sequence[dict[str, Any]]) -> list[str]:
    """mAP, CF1, OF1 and the top-k F1 variants under the names the evaluator wrote."""
    names = list(HEADLINE_METRICS)
    for record in records:
        for key in record.get("metrics") or {}:
            if key.startswith(("CF1_top", "OF1_top")) and key not in names:
                names.append(key)
    return names


def to_rows(records: Sequence[dict[str, Any]]) -> tuple[list[str], list[dict[str, Any]]]:
    """One flat row per cell (failed cells included, with empty metrics)."""
    metrics = metric_columns(records)
    ids = list(ID_COLUMNS)
    tracks = any(track_of(r) != REFERENCE for r in records)
    if tracks:  # a "track" column only beside tuned cells: tables without them are unchanged
        ids.insert(1, "track")
    columns = ids + metrics + BUDGET_COLUMNS + COST_COLUMNS + TAIL_COLUMNS
    rows = []
    for record in records:
        row = {c: record.get(c) for c in columns}
        row.update({m: (record.get("metrics") or {}).get(m) for m in metrics})
        if tracks:
            row["track"] = track_of(record)
        rows.append(row)
    return columns, rows


def rows_to_csv(columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: "" if row.get(c) is None else row[c] for c in columns})
    return buffer.getvalue()


# ---- protocols: one column each ----------------------------------------------------------------
def protocol_column(record: dict[str, Any]) -> str:
    """The leaderboard column of a record: its dataset, qualified by its protocol unless that
    is ``clean`` (``voc2007 [reference]``), so two protocols never share a column. Records
    from before protocols existed ran clean."""
    label = record.get("protocol") or CLEAN
    dataset = str(record.get("dataset"))
    return dataset if label == CLEAN else f"{dataset} [{label}]"


def by_protocol(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """``records`` with ``dataset`` replaced by :func:`protocol_column`; a column whose records
    ran on more than one CLIP backbone is split into one per backbone (``world · world-vit``),
    so a ResNet and a ViT are never averaged or ranked together."""
    columns = [protocol_column(r) if r.get("dataset") else None for r in records]
    backbones: dict[str, set[str]] = {}
    for record, column in zip(records, columns, strict=True):
        if column is not None:
            backbones.setdefault(column, set()).add(str(record.get("backbone")))
    out = []
    for record, column in zip(records, columns, strict=True):
        if column is not None and len(backbones[column]) > 1:
            column = f"{column}{BACKBONE_MARK}{record.get('backbone')}"
        out.append(record if column is None else {**record, "dataset": column})
    return out


# ---- tracks: one row each ---------------------------------------------------------------------
def track_label(method: str, track: str) -> str:
    """The leaderboard row of a method on a track: ``pvp`` or ``pvp (tuned)``."""
    return method if track == REFERENCE else f"{method} ({track})"


def by_track(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """``records`` with ``method`` replaced by :func:`track_label`, so that the tuned and the
    reference track of a method are never averaged together."""
    return [
        {**r, "method": track_label(r["method"], track_of(r))}
        if r.get("method") and track_of(r) != REFERENCE
        else r
        for r in records
    ]


# ---- aggregation ------------------------------------------------------------------------------
@dataclass
class Summary:
    """One method on one dataset over its successful seeds (population std, ddof=0)."""

    method: str
    dataset: str
    backbones: list[str]
    seeds: list[int]
    mean: dict[str, float]
    std: dict[str, float]
    per_class_ap: dict[str, float | None]  # mean over seeds; None: no positives
    #: Provenance of CLIP's weights over the seeds (``random``, ``pretrained``, ``unknown``).
    weights: list[str] = field(default_factory=list)
    #: What each seed ran with (resolution, crop, test images, method arguments), matched
    #: against the setting of a published number.
    settings: list[CellSetting] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.seeds)

    @property
    def random_weights(self) -> bool:
        """Any seed ran with random CLIP weights: the mean means nothing."""
        return RANDOM in self.weights


def summarise(records: Sequence[dict[str, Any]]) -> list[Summary]:
    """Mean and std per (method, dataset), in the records' order; failed cells are left out."""
    metrics = metric_columns(records)
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for record in records:
        if record.get("status") == "ok":
            groups.setdefault((record["method"], record["dataset"]), []).append(record)
    out = []
    for (method, dataset), group in groups.items():
        values = {m: [r["metrics"].get(m) for r in group] for m in metrics}
        values |= {c: [r.get(c) for r in group] for c in COST_COLUMNS[:-1] + BUDGET_COLUMNS}
        mean, std = {}, {}
        for key, column in values.items():
            numbers = np.array([v for v in column if v is not None], dtype=float)
            mean[key] = float(numbers.mean()) if numbers.size else math.nan
            std[key] = float(numbers.std()) if numbers.size else math.nan
        classes = list(group[0].get("per_class_ap") or {})
        per_class = {}
        for name in classes:
            aps = [r["per_class_ap"].get(name) for r in group if r.get("per_class_ap")]
            aps = [a for a in aps if a is not None]
            per_class[name] = float(np.mean(aps)) if aps else None
        backbones = sorted({str(r.get("backbone")) for r in group})
        weights = sorted({str(r.get("weights") or UNKNOWN) for r in group})
        seeds = [int(r["seed"]) for r in group]
        settings = [cell_setting(r) for r in group]
        out.append(
            Summary(method, dataset, backbones, seeds, mean, std, per_class, weights, settings)
        )
    return out


# ---- leaderboard ------------------------------------------------------------------------------
def _pm(summary: Summary, key: str, digits: int = 2) -> str:
    mean, std = summary.mean.get(key, math.nan), summary.std.get(key, math.nan)
    if math.isnan(mean):
        return "–"
    if summary.n == 1:  # one seed has no spread to show: "± 0.00" would claim one
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _budget_text(summary: Summary) -> str:
    """`` · 840 steps (0.32× ref)``: the optimizer steps behind the number and, where the
    method's reference recipe on the dataset is known, their share of its steps."""
    steps = summary.mean.get("optimizer_steps", math.nan)
    if math.isnan(steps):
        return ""
    ratio = summary.mean.get("steps_x_reference", math.nan)
    share = "" if math.isnan(ratio) else f" ({ratio:.2g}× ref)"
    return f" · {steps:,.0f} steps{share}"


def _paragraph(text: str, shown: object) -> list[str]:
    """A note paragraph (and its blank line) of the leaderboard, only where it applies."""
    return [text, ""] if shown else []


def _policy_text(records: Sequence[dict[str, Any]]) -> str:
    """The budget policy the trained cells ran under (docs/budgets.md), as one sentence."""
    fractions = set()
    for record in records:
        policy = (record.get("budget") or {}).get("policy") or {}
        if policy.get("budget_fraction") is not None:
            fractions.add(float(policy["budget_fraction"]))
    if not fractions:
        return ""
    shown = " and ".join(f"{f:g}" for f in sorted(fractions))
    mixed = " (**mixed fractions: compare with care**)" if len(fractions) > 1 else ""
    return (
        f"**Budget policy:** every trained method got {shown} of its reference optimizer steps, "
        f"epochs derived from its corpus{mixed}. "
    )


def _interval_text(interval: Interval | None) -> str:
    """`` [66.1, 68.5]``, with `` ≈ best`` when the best is not significantly better."""
    if interval is None:
        return ""
    text = f" [{interval.low:.1f}, {interval.high:.1f}]"
    return text + (" ≈ best" if interval.significant is False else "")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _mismatches(summary: Summary, ref: Reported) -> list[str]:
    """Why ``ref`` may not sit beside the cell (empty: it may), over all of its seeds."""
    if summary.backbones != [ref.backbone]:
        return [f"run with {', '.join(summary.backbones)}, reported for {ref.backbone}"]
    why: list[str] = []
    for setting in summary.settings:
        why += [w for w in ref.mismatches(setting) if w not in why]
    return why


def _comparable(summary: Summary | None, ref: Reported) -> bool:
    """A published number sits beside a cell only when every seed of the cell ran with
    pretrained weights (random weights: never) in the number's setting: the same backbone, and
    the same test resolution, crop, number of test images and protocol arguments wherever both
    the source and the cell's results say (:meth:`Reported.mismatches`)."""
    return summary is not None and summary.weights == [PRETRAINED] and not _mismatches(summary, ref)


def _why_left_out(summary: Summary, refs: Sequence[Reported], shown: Sequence[Reported]) -> str:
    """Why published numbers of the cell were left out ('' when none worth saying was)."""
    if summary.random_weights:
        return "run with random weights" if not shown else ""
    if summary.weights != [PRETRAINED]:
        return "weights not recorded (older mlr-bench)" if not shown else ""
    same = [r for r in refs if summary.backbones == [r.backbone] and r not in shown]
    if same:  # the backbone matches, another part of the setting does not
        return "; ".join(
            f"{r.mAP:.2f} from {r.source}, {r.where}: {', '.join(_mismatches(summary, r))}"
            for r in same
        )
    if shown:
        return ""
    reported = ", ".join(sorted({r.backbone for r in refs}))
    return f"run with {', '.join(summary.backbones)}, reported for {reported}"


def _reported_for(
    reference: ReferenceTable | None,
    summaries: dict[tuple[str, str], Summary],
    methods: Sequence[str],
    datasets: Sequence[str],
) -> tuple[dict[tuple[str, str], list[Reported]], list[str]]:
    """Verified published numbers that may sit beside each cell, and the cells some of whose
    published numbers were left out, with why."""
    shown: dict[tuple[str, str], list[Reported]] = {}
    left_out = []
    for cell in [(m, d) for m in methods for d in datasets]:
        refs = [r for r in reference.for_cell(*cell) if r.verified] if reference else []
        summary = summaries.get(cell)
        shown[cell] = [r for r in refs if _comparable(summary, r)]
        why = _why_left_out(summary, refs, shown[cell]) if summary and refs else ""
        if why:
            left_out.append(f"- {cell[0]} on {cell[1]}: {why}")
    return shown, left_out


def leaderboard_markdown(
    title: str,
    records: Sequence[dict[str, Any]],
    methods: Sequence[str],
    datasets: Sequence[str],
    seeds: Sequence[int],
    reference: ReferenceTable | None = None,
    coverage: str | None = None,
    intervals: Mapping[tuple[str, str], Interval] | None = None,
    interval_notes: Sequence[str] = (),
) -> str:
    """Test mAP (mean ± std) per method × dataset, best in bold, reported numbers beside;
    with ``intervals`` (:mod:`mlr_bench.benchmark.uncertainty`) a 95% interval per cell and
    which methods the best does not beat significantly.

    ``coverage`` says at the top which cells the tables cover; cells run with different
    settings are flagged there and listed under *Settings*. Cells run with random CLIP weights
    are marked, never bold and get no reported number: theirs would look like a comparison.
    """
    summaries = {(s.method, s.dataset): s for s in summarise(records)}
    variants = settings_variants(records)
    mixed_groups = mixed_setting_groups(records)
    best = {}
    for dataset in datasets:
        means = [
            s.mean["mAP"]
            for (m, d), s in summaries.items()
            if d == dataset and not s.random_weights
        ]
        means = [v for v in means if not math.isnan(v)]
        best[dataset] = max(means) if means else None
    reported, left_out = _reported_for(reference, summaries, methods, datasets)
    random_cells = any(s.random_weights for s in summaries.values())
    with_reported = [d for d in datasets if any(reported[(m, d)] for m in methods)]
    notes: list[Reported] = []

    header = ["method"]
    for dataset in datasets:
        header.append(dataset)
        if dataset in with_reported:
            header.append(f"{dataset} (reported)")
    rows = []
    for method in methods:
        row = [method]
        for dataset in datasets:
            summary = summaries.get((method, dataset))
            if summary is None:
                statuses = {
                    r.get("status")
                    for r in records
                    if (r.get("method"), r.get("dataset")) == (method, dataset)
                }
                cell = "running elsewhere" if statuses == {"running"} else "failed"
                cell = cell if statuses else "not run"
            else:
                cell = _pm(summary, "mAP")
                is_best = best[dataset] is not None and summary.mean["mAP"] == best[dataset]
                if is_best and not summary.random_weights:
                    cell = f"**{cell}**"
                if summary.n < len(seeds) or summary.n == 1:
                    cell += f" (n={summary.n})"
                cell += _interval_text((intervals or {}).get((method, dataset)))
                cell += _budget_text(summary)
                if (method, dataset) in mixed_groups:
                    cell += " (mixed settings!)"
                if summary.random_weights:
                    cell += f" ({RANDOM_LABEL})"
            row.append(cell)
            if dataset in with_reported:
                marks = []
                for ref in reported[(method, dataset)]:
                    notes.append(ref)
                    marks.append(f"{ref.mAP:.2f} [{len(notes)}]")
                row.append("; ".join(marks) or "–")
        rows.append(row)

    seed_text = ", ".join(str(s) for s in seeds)
    lines = [
        f"# Leaderboard: {title}",
        "",
        *([coverage, ""] if coverage else []),
        *_paragraph(
            "**Warning: not all of these cells were run with the same settings (see "
            "Settings below); compare with care.**",
            len(variants) > 1 or mixed_groups,
        ),
        f"Test mAP (%) of the checkpoint selected on **val** (clean protocol: never test), "
        f"mean ± std over seeds {seed_text} (population std). **Bold**: best per column. "
        "*· N steps*: the optimizer steps its training took (all stages, mean over seeds), "
        "*(x× ref)* their share of the method's reference recipe on that dataset where known "
        "(`mlr_bench/budget.py`). "
        f"{_policy_text(records)}"
        "Columns marked "
        "*(reported)* are published numbers, **not run here**, shown only beside cells run "
        "with pretrained weights in the setting they were reported in (backbone; test "
        "resolution, crop, number of test images and protocol arguments where the source "
        "states them); sources and settings below.",
        "",
        *_paragraph(
            "**Protocols:** columns marked *[reference]* ran the reference protocol: "
            "validation carved from the test set (checkpoints selected on test images, "
            "optimistic), captions of test images kept in the training text, the reference "
            "code's class names in prompts. Unmarked columns ran the clean protocol.",
            any(column_dataset(d) != d for d in datasets),
        ),
        *_paragraph(
            "**Tracks:** rows marked *(tuned)* ran with the hyperparameters `mlr-bench "
            "sweep` chose on validation mAP at the recipe's training budget (`--tuned`); "
            "unmarked rows ran the recipes' reference hyperparameters. The two tracks are "
            "never averaged together.",
            any(track_of(r) != REFERENCE for r in records),
        ),
        *_paragraph(
            f"**Random weights:** cells marked *{RANDOM_LABEL}* ran CLIP with a random "
            "initialisation (`--method.pretrained none`), for rehearsal and throughput only: "
            "their mAP means nothing, is never bold and has no reported number beside it.",
            random_cells,
        ),
        *_table(header, rows),
    ]
    if variants:
        lines += ["", "## Settings", ""]
        for text, names in variants.items():
            lines.append(f"- {text}: {', '.join(names)}")
        for method, dataset in sorted(mixed_groups):
            lines.append(f"- {method} on {dataset}: its seeds used different recipes")
    if intervals:
        lines += [
            "",
            "## Uncertainty",
            "",
            "[low, high]: 95% interval of the test mAP from a two-level bootstrap: test images "
            "resampled jointly for all methods (paired), seeds resampled per method (n = 1: "
            "images only). *≈ best*: the 95% interval of the paired difference from the column's "
            "best method includes 0, i.e. not significantly worse. "
            "(`mlr_bench/benchmark/uncertainty.py`)",
            "",
            *interval_notes,
        ]
    lines += ["", "## Details (mean ± std over seeds)", ""]
    lines += _details(records, summaries, methods, datasets)
    if notes:
        lines += ["", "## Reported numbers (not run here)", ""]
        for i, ref in enumerate(notes, start=1):
            source = reference.sources[ref.source] if reference else ref.source
            lines.append(f"{i}. {ref.origin()} [{ref.status}]: {source}. Setting: {ref.setting}")
        unread = [
            f"{m} on {d}"
            for (m, d), refs in reported.items()
            if refs and any(not s.known for s in summaries[(m, d)].settings)
        ]
        if unread:
            lines += [
                "",
                "Matched on backbone and weights only (no readable results file, so test "
                f"resolution, test images and arguments unknown): {', '.join(unread)}.",
            ]
    if left_out:
        lines += [
            "",
            "Reported numbers left out: a published number is shown only beside a cell run "
            "with pretrained weights in its setting (backbone; test resolution, crop, number "
            "of test images and protocol arguments where stated).",
            *left_out,
        ]
    unverified = _unverified(reference, methods, datasets)
    if unverified:
        lines += ["", "Unverified (quoted second-hand, not confirmed from the paper; not shown):"]
        lines += [
            f"- {r.method} on {r.dataset} ({r.backbone}): {r.mAP:.2f}, {r.origin()}: "
            f"{reference.sources[r.source] if reference else r.source}. Setting: {r.setting}"
            for r in unverified
        ]
    if reference and (notes or unverified):
        lines += ["", f"Note: {reference.note}"]
    running = [r for r in records if r.get("status") == "running"]
    if running:
        lines += ["", "## Cells being run by another benchmark (not included)", ""]
        lines += [f"- {r['method']}-{r['dataset']}-s{r['seed']}: {r.get('error')}" for r in running]
    failed = [r for r in records if r.get("status") not in ("ok", "running")]
    if failed:
        lines += ["", "## Failed cells", ""]
        lines += [
            f"- {r['method']}-{r['dataset']}-s{r['seed']}: {r.get('error')} ({r.get('error_file')})"
            for r in failed
        ]
    return "\n".join(lines) + "\n"


def _details(
    records: Sequence[dict[str, Any]],
    summaries: dict[tuple[str, str], Summary],
    methods: Sequence[str],
    datasets: Sequence[str],
) -> list[str]:
    metrics = metric_columns(records)
    header = ["method", "dataset", "backbone", "weights", "seeds", *metrics]
    header += ["train s", "eval s", "peak MB"]
    rows = []
    for dataset in datasets:
        for method in methods:
            s = summaries.get((method, dataset))
            if s is None:
                continue
            row = [method, dataset, ", ".join(s.backbones), ", ".join(s.weights), str(s.n)]
            row += [_pm(s, m) for m in metrics]
            row += [_pm(s, "train_time_s", 1), _pm(s, "eval_time_s", 1)]
            row += [_pm(s, "peak_memory_mb", 0)]
            rows.append(row)
    return _table(header, rows)


def _unverified(
    reference: ReferenceTable | None, methods: Sequence[str], datasets: Sequence[str]
) -> list[Reported]:
    if reference is None:
        return []
    return [
        r for m in methods for d in datasets for r in reference.for_cell(m, d) if not r.verified
    ]


# ---- settings of the cells ----------------------------------------------------------------------
def _shared_settings_text(settings: Any) -> str:
    """The settings every cell of one benchmark run shares, as one line."""
    if not isinstance(settings, dict):
        return "settings not recorded (older mlr-bench)"
    configs = [str(c.get("path")) for c in settings.get("configs") or [] if isinstance(c, dict)]
    parts = [
        f"--max-epochs {settings.get('max_epochs') or 'from the recipe'}",
        f"--logger {settings.get('logger') or 'csv'}",
        f"--config {', '.join(configs)}" if configs else "no --config",
        f"args after -- {' '.join(settings.get('extra_args') or []) or '(none)'}",
    ]
    hashes = [c.get("sha256", "")[:8] for c in settings.get("configs") or [] if isinstance(c, dict)]
    if hashes:
        parts[2] += f" (sha256 {', '.join(hashes)})"
    return "; ".join(parts)


def settings_variants(records: Sequence[dict[str, Any]]) -> dict[str, list[str]]:
    """Shared settings -> the finished cells run with them (more than one key: mixed)."""
    variants: dict[str, list[str]] = {}
    for r in records:
        if r.get("status") == "ok":
            text = _shared_settings_text(r.get("settings"))
            variants.setdefault(text, []).append(f"{r['method']}-{r['dataset']}-s{r['seed']}")
    return variants


def mixed_setting_groups(records: Sequence[dict[str, Any]]) -> set[tuple[str, str]]:
    """(method, dataset) pairs whose seeds were run with different recipes."""
    recipes: dict[tuple[str, str], set[Any]] = {}
    for r in records:
        if r.get("status") == "ok":
            settings = r.get("settings") if isinstance(r.get("settings"), dict) else {}
            recipe = settings.get("recipe") if settings else "unknown"
            key = recipe.get("sha256") if isinstance(recipe, dict) else recipe
            recipes.setdefault((r["method"], r["dataset"]), set()).add(key)
    return {group for group, keys in recipes.items() if len(keys) > 1}
