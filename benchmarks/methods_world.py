"""Methods I on the synthetic world: zero-shot CLIP, TaI-DPT and CoMC over three seeds.

Each method runs its world recipe (``configs/experiment/<method>_world.yaml``: batch 512,
reference hyperparameters, bundled micro-CLIP, 5% of the reference optimizer steps under the
budget policy of docs/budgets.md) through the real CLI: fit (checkpoint
selected on the world's *validation* draw, never on test), then test the selected checkpoint.
Prints test mAP (mean ± std over seeds), CF1/OF1 at the evaluator's threshold (score ≥ 0) and
at top-3, and the fit wall time. The first run of each method also builds the shared feature
caches; its time is reported separately.

    python benchmarks/methods_world.py [--seeds 1,2,3] [--methods zeroshot,taidpt,comc]
                                       [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mlr_bench.cli import run_cli

CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "experiment"
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


def run_once(
    method: str, seed: int, root: Path, recipe: str | None = None, extra: Sequence[str] = ()
) -> dict:
    """Fit ``configs/experiment/<recipe>.yaml`` (default ``<method>_world``) plus ``extra``
    arguments, test the checkpoint selected on validation, return the test metrics."""
    recipe_file = CONFIGS / f"{recipe or method + '_world'}.yaml"
    config = ["--config", str(recipe_file), *extra, "--seed_everything", str(seed)]
    run_root = root / f"{method.replace(' ', '_').replace('/', '')}-seed{seed}"
    start = time.perf_counter()
    run_cli(["fit", *config, *QUIET, "--trainer.default_root_dir", str(run_root / "fit")])
    fit_seconds = time.perf_counter() - start
    best = sorted((run_root / "fit").rglob("best-*.ckpt")) or sorted(run_root.rglob("last.ckpt"))
    test_args = ["--ckpt_path", str(best[-1])] if best else []
    run_cli(["test", *config, *QUIET, *test_args, "--trainer.default_root_dir", str(run_root)])
    results = json.loads(next((run_root).glob("**/results_test.json")).read_text())
    return {"seed": seed, "fit_seconds": fit_seconds, **results["metrics"]}


def summarise(runs: list[dict]) -> dict:
    def stat(key: str) -> tuple[float, float]:
        values = np.array([r[key] for r in runs], dtype=float)
        return float(values.mean()), float(values.std())

    keys = ("mAP", "CF1", "OF1", "CF1_top3", "OF1_top3", "fit_seconds")
    out = {k: stat(k) for k in keys}
    out["first_fit_seconds"] = runs[0]["fit_seconds"]  # includes building the caches
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--methods", default="zeroshot,taidpt,comc")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--root", help="run folder (default: a temporary one)")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    root = Path(args.root or tempfile.mkdtemp(prefix="mlr-bench-methods-"))
    os.environ.setdefault("MLR_BENCH_CACHE", str(root / "feature-cache"))  # self-contained
    table = {}
    for method in args.methods.split(","):
        runs = [run_once(method, seed, root) for seed in seeds]
        table[method] = {"runs": runs, "summary": summarise(runs)}

    print(f"\nsynthetic world, bundled micro-CLIP, test mAP over seeds {seeds}")
    header = f"{'method':10} {'mAP':>13} {'CF1':>6} {'OF1':>6} {'CF1@3':>6} {'OF1@3':>6}"
    print(header + f" {'fit s (first)':>15}")
    for method, entry in table.items():
        s = entry["summary"]
        print(
            f"{method:10} {s['mAP'][0]:6.2f} ± {s['mAP'][1]:4.2f} {s['CF1'][0]:6.1f} "
            f"{s['OF1'][0]:6.1f} {s['CF1_top3'][0]:6.1f} {s['OF1_top3'][0]:6.1f} "
            f"{s['fit_seconds'][0]:7.1f} ({s['first_fit_seconds']:.0f})"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(table, indent=2))


if __name__ == "__main__":
    main()
