"""What a sweep leaves behind: ``best.yaml``, ``summary.json`` and the printed summary.

``best.yaml`` is an ordinary config (``model: init_args:`` only) that goes after the recipe:
``mlr-bench train --config <recipe> --config best.yaml``, or ``mlr-bench benchmark --tuned``.
Both files are rewritten atomically after every finished trial, so a killed sweep leaves the
best so far.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mlr_bench.runs import atomic_write_json, atomic_write_text
from mlr_bench.sweep.space import Dimension
from mlr_bench.sweep.study import INTERRUPTED, REFERENCE, RETRY_OF, tally

BEST = "best.yaml"
SUMMARY = "summary.json"


@dataclass
class SweepInfo:
    """The sweep's identity, as written into its outputs."""

    study: str
    storage: str
    method: str
    dataset: str
    recipe: str | None
    sampler: str
    sampler_seed: int
    seed: int
    trials: int
    dims: Sequence[Dimension]
    configs: Sequence[str] = ()
    extra_args: Sequence[str] = ()
    best_path: Path | None = None
    notes: list[str] = field(default_factory=list)


def _trial_row(t: Any) -> dict[str, Any]:
    value = t.value if t.value is not None and math.isfinite(t.value) else None
    return {
        "number": t.number,
        "state": t.state.name.lower(),
        "val_mAP": value,
        "params": dict(t.params),
        "reference": bool(t.user_attrs.get(REFERENCE)),
        "retry_of": t.user_attrs.get(RETRY_OF),
        "interrupted": t.user_attrs.get(INTERRUPTED),
        "trial_dir": t.user_attrs.get("trial_dir"),
        "error": t.user_attrs.get("error"),
        **{k: t.user_attrs.get(k) for k in ("best_epoch", "optimizer_steps", "run_dir")},
    }


def best_trial(trials: Sequence[Any]) -> Any | None:
    """The completed trial with the highest val mAP (the lowest number among equals)."""
    from optuna.trial import TrialState

    done = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    return max(done, key=lambda t: (t.value, -t.number)) if done else None


def reference_trial(trials: Sequence[Any]) -> Any | None:
    from optuna.trial import TrialState

    refs = [t for t in trials if t.user_attrs.get(REFERENCE) and t.state == TrialState.COMPLETE]
    return refs[0] if refs else None


def summary_data(info: SweepInfo, trials: Sequence[Any]) -> dict[str, Any]:
    counts = tally(trials)
    best, ref = best_trial(trials), reference_trial(trials)
    return {
        "study": info.study,
        "storage": info.storage,
        "method": info.method,
        "dataset": info.dataset,
        "recipe": info.recipe,
        "configs": list(info.configs),
        "extra_args": list(info.extra_args),
        "sampler": info.sampler,
        "sampler_seed": info.sampler_seed,
        "seed": info.seed,
        "selection": "best val/mAP of the fit (validation only; the test stage never runs)",
        "trials": {
            "requested": info.trials,
            "complete": counts.complete,
            "failed": counts.failed,
            "running": counts.running,
            "waiting": counts.waiting,
            "interrupted": counts.interrupted,
        },
        "best": None if best is None else _trial_row(best),
        "reference": None if ref is None else _trial_row(ref),
        "search_space": {d.name: d.as_dict() for d in info.dims},
        "all_trials": [_trial_row(t) for t in trials],
        "notes": list(info.notes),
    }


def best_yaml(info: SweepInfo, trials: Sequence[Any]) -> str | None:
    """The best trial's overrides as a config with a comment header (None: no trial done)."""
    best = best_trial(trials)
    if best is None:
        return None
    counts, ref = tally(trials), reference_trial(trials)
    plain = f"--method {info.method} --data {info.dataset}"
    recipe = f"--config {info.recipe}" if info.recipe else plain
    ref_text = f"; reference hyperparameters: {ref.value:.2f} (trial {ref.number})" if ref else ""
    header = [
        f"mlr-bench sweep: best trial of study {info.study!r} ({info.storage})",
        f"method {info.method} on {info.dataset}; {counts.complete} trial(s) done, "
        f"{counts.failed} failed; sampler {info.sampler}, sampler seed {info.sampler_seed}, "
        f"seed {info.seed}",
        f"best val/mAP {best.value:.2f} (trial {best.number}){ref_text}",
        "chosen on validation mAP only: no trial ran the test stage",
        *(
            [f"trials ran with args after --: {' '.join(info.extra_args)} (not in this file)"]
            if info.extra_args
            else []
        ),
        f"use: mlr-bench train {recipe} --config {info.best_path or BEST}",
    ]
    body = yaml.safe_dump(
        {"model": {"init_args": dict(best.params)}}, sort_keys=False, default_flow_style=False
    )
    return "".join(f"# {line}\n" for line in header) + body


def write_outputs(out: Path, info: SweepInfo, trials: Sequence[Any]) -> dict[str, Any]:
    """Rewrite ``best.yaml`` (once a trial is done) and ``summary.json``; the summary."""
    text = best_yaml(info, trials)
    if text is not None:
        atomic_write_text(out / BEST, text)
    data = summary_data(info, trials)
    atomic_write_json(out / SUMMARY, data)
    return data


def _params_text(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={_short(v)}" for k, v in params.items()) or "(no parameters)"


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def trial_line(number: int, status: str, params: dict[str, Any], detail: str) -> str:
    """``[trial 3] done   val mAP 65.21  lr=0.0012 ...`` for the console."""
    return f"[trial {number}] {status:<6} {detail}  {_params_text(params)}"


def summary_text(data: dict[str, Any], out: Path) -> str:
    """The printed summary: counts, best val mAP, the chosen config, the files."""
    t = data["trials"]
    lines = [
        f"sweep {data['method']} on {data['dataset']}: study {data['study']!r} ({data['storage']})",
        f"trials: {t['complete']} done, {t['failed']} failed, {t['running']} running elsewhere, "
        f"{t['interrupted']} interrupted and retried (requested {t['requested']}); sampler "
        f"{data['sampler']}, sampler seed {data['sampler_seed']}, seed {data['seed']}",
    ]
    best, ref = data["best"], data["reference"]
    if best is None:
        lines.append("no trial finished: no best.yaml")
    else:
        ref_text = f"; reference hyperparameters {ref['val_mAP']:.2f}" if ref else ""
        lines.append(f"best val mAP {best['val_mAP']:.2f} (trial {best['number']}){ref_text}")
        lines.append("chosen config (model.init_args):")
        lines += [f"  {k}: {v}" for k, v in best["params"].items()] or ["  (none)"]
    lines += [f"note: {n}" for n in data.get("notes") or []]
    lines.append("files:")
    if best is not None:
        lines.append(f"  {out / BEST}")
    lines.append(f"  {out / SUMMARY}")
    return "\n".join(lines)
