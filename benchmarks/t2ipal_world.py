"""T2I-PAL on the synthetic world: against zero-shot CLIP and TaI-DPT, plus its ablations.

Every row runs through the real CLI on the same world (bundled micro-CLIP, the recipes'
budget, batch 512, the same caption corpus): fit with the checkpoint selected on the world's
*validation* draw (never test), then test that checkpoint. T2I-PAL trains on images the
world's renderer generates from the first ``num_generated`` captions plus those captions
(``train_on: both``).
Prints test mAP (mean ± std over seeds) and the fit wall time for

- zero-shot CLIP, TaI-DPT (``configs/experiment/{zeroshot,taidpt}_world.yaml``), T2I-PAL
  (``configs/experiment/t2ipal_world.yaml``);
- the ablations: no generated images (``train_on: captions``), no heatmap + prototypes
  (``local_head: prompt``), no adapter (``adapter: false``).

    python benchmarks/t2ipal_world.py [--seeds 1,2,3] [--rows all|main|ablations]
                                      [--json results.json] [--root DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import numpy as np
from methods_world import run_once  # the same fit + test protocol as the Methods I table

#: row name -> (recipe, extra CLI arguments)
MAIN = {
    "zero-shot CLIP": ("zeroshot_world", []),
    "TaI-DPT": ("taidpt_world", []),
    "T2I-PAL": ("t2ipal_world", []),
}
ABLATIONS = {
    "T2I-PAL w/o generated images": ("t2ipal_world", ["--method.train_on", "captions"]),
    "T2I-PAL w/o heatmap+prototypes": ("t2ipal_world", ["--method.local_head", "prompt"]),
    "T2I-PAL w/o adapter": ("t2ipal_world", ["--method.adapter", "false"]),
}


def summary(runs: list[dict]) -> dict[str, tuple[float, float]]:
    def stat(key: str) -> tuple[float, float]:
        values = np.array([r[key] for r in runs], dtype=float)
        return float(values.mean()), float(values.std())

    return {k: stat(k) for k in ("mAP", "CF1_top3", "OF1_top3", "fit_seconds")}


def print_table(title: str, table: dict[str, dict]) -> None:
    print(f"\n{title}")
    print(f"{'':32} {'test mAP':>15} {'CF1@3':>6} {'OF1@3':>6} {'fit s':>7}")
    for name, entry in table.items():
        s = entry["summary"]
        print(
            f"{name:32} {s['mAP'][0]:7.2f} ± {s['mAP'][1]:4.2f} {s['CF1_top3'][0]:6.1f} "
            f"{s['OF1_top3'][0]:6.1f} {s['fit_seconds'][0]:7.1f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--rows", choices=("all", "main", "ablations"), default="all")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--root", help="run folder (default: a temporary one)")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    root = Path(args.root or tempfile.mkdtemp(prefix="mlr-bench-t2ipal-"))
    os.environ.setdefault("MLR_BENCH_CACHE", str(root / "feature-cache"))  # self-contained
    groups = {"main": MAIN, "ablations": ABLATIONS}
    chosen = groups if args.rows == "all" else {args.rows: groups[args.rows]}
    tables: dict[str, dict[str, dict]] = {}
    for group, rows in chosen.items():
        tables[group] = {}
        for name, (recipe, extra) in rows.items():
            runs = [run_once(name, seed, root, recipe, extra) for seed in seeds]
            tables[group][name] = {"runs": runs, "summary": summary(runs)}
    head = f"synthetic world, bundled micro-CLIP, seeds {seeds}"
    if "main" in tables:
        print_table(f"T2I-PAL vs baselines ({head})", tables["main"])
    if "ablations" in tables:
        if "main" in tables:
            tables["ablations"] = {"T2I-PAL": tables["main"]["T2I-PAL"], **tables["ablations"]}
        print_table(f"T2I-PAL ablations ({head})", tables["ablations"])
    if args.json:
        Path(args.json).write_text(json.dumps(tables, indent=2))


if __name__ == "__main__":
    main()
