"""A full-size rehearsal: official-format datasets at full size through the real CLI.

Writes VOC2007 (5,011 trainval + 4,952 test), COCO 2014 (40,504 val2014 images, the train2014
json with its validation draw's images, captions_train2017-sized captions), NUS-WIDE (the
107,859-image test list, the train list, Localized Narratives-sized narratives), CoMC sentences
and PVP-sized sentence files (500k / 200k) into ``--out``, as small generated JPEGs and generated
text (deterministic per seed, atomic, resumable). Then runs each method's recipe
(``configs/experiment/<method>_<dataset>.yaml``) as ``mlr-bench`` subprocesses:

- with the bundled ``world`` micro-CLIP over the full N (every image and text through the
  feature caches: memory and disk at full size; a few training steps at the recipe's batch);
- with RN50 (random weights) on a tiny subset, to measure its per-image, per-text and per-step
  costs on this machine, from which each full recipe's time is extrapolated.

Prints and writes (``scale.json``, ``scale.md``, atomically after every cell) wall time,
throughput, peak RSS and the size of every cache built, per method x dataset x stage. A cell
starts only while the time budget lasts (``--budget-min``); the rest are listed as skipped.
See docs/scale.md for a full run and how to read it.

    python benchmarks/scale.py --out /work/scale-rehearsal              # full size
    python benchmarks/scale.py --out /tmp/scale --fraction 0.01         # a quick check
    python benchmarks/scale.py --out DIR --skip-run                     # only write the data
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import shlex
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from scale import DATASETS, METHODS

if TYPE_CHECKING:  # imported after parsing: bad input is refused before torch loads
    from scale.runs import Cell, Plan
    from scale.write import Sizes

PROG = "scale.py"
REPO = Path(__file__).resolve().parent.parent
#: Order of the world cells: PVP's 500k + 200k sentences are by far the longest.
FULL_ORDER = ("zeroshot", "taidpt", "comc", "t2ipal", "pvp")


class OneLineParser(argparse.ArgumentParser):
    """Bad input is one line on stderr and exit code 2 (argparse prints the usage too)."""

    def error(self, message: str) -> NoReturn:
        print(f"{PROG}: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def fail(message: str) -> NoReturn:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def build_parser() -> OneLineParser:
    p = OneLineParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="rehearsal folder (outside the repository)")
    p.add_argument("--fraction", type=float, default=1.0, help="scale every N (default 1.0)")
    p.add_argument("--seed", type=int, default=0, help="seed of all generated data")
    p.add_argument("--datasets", default=",".join(DATASETS), help="comma-separated")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated")
    p.add_argument("--skip-write", action="store_true", help="use the data already in --out")
    p.add_argument("--skip-run", action="store_true", help="only write the data")
    p.add_argument(
        "--backbone-subset-images", type=int, default=8,
        help="RN50 probe: images per split of its subset (default 8)",
    )  # fmt: skip
    p.add_argument(
        "--backbone-subset-texts", type=int, default=64,
        help="RN50 probe: texts per corpus of its subset (default 64)",
    )  # fmt: skip
    p.add_argument(
        "--pvp-datasets",
        help="datasets of the world PVP cells (default: all of --datasets; each reads 500k + "
        "200k sentences, the longest cells)",
    )
    p.add_argument("--probe-dataset", help="dataset of the RN50 probes (default: voc2007)")
    p.add_argument("--no-probe", action="store_true", help="skip the RN50 probes")
    p.add_argument("--no-full", action="store_true", help="skip the full-size world cells")
    p.add_argument(
        "--world-image-size", type=int, default=64, help="world cells' --data.image_size"
    )
    p.add_argument("--full-steps", type=int, default=3, help="training steps of a world cell")
    p.add_argument("--budget-min", type=float, default=40.0, help="start no cell after this")
    p.add_argument("--cell-timeout-min", type=float, default=60.0, help="kill a cell after this")
    p.add_argument("--workers", type=int, default=2, help="processes writing JPEGs")
    p.add_argument(
        "--rerun",
        nargs="?",
        const="*",
        default=None,
        metavar="CELLS",
        help="rerun cells an earlier run finished: all, or those matching comma-separated "
        "patterns of cell ids (e.g. 'zeroshot/coco2014/*,*/nuswide/*')",
    )
    return p


def parse(argv: list[str]) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    args.datasets = _names(args.datasets, DATASETS, "--datasets")
    args.methods = _names(args.methods, METHODS, "--methods")
    args.pvp_datasets = (
        args.datasets if args.pvp_datasets is None
        else _names(args.pvp_datasets, DATASETS, "--pvp-datasets")
    )  # fmt: skip
    if not 0 < args.fraction <= 1:
        fail(f"--fraction must be in (0, 1], got {args.fraction}")
    for name in ("backbone_subset_images", "backbone_subset_texts", "full_steps", "workers"):
        if getattr(args, name) < 1:
            fail(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.world_image_size < 32 or args.world_image_size % 32:
        fail(f"--world-image-size must be a positive multiple of 32, got {args.world_image_size}")
    if args.budget_min <= 0 or args.cell_timeout_min <= 0:
        fail("--budget-min and --cell-timeout-min must be positive")
    if args.probe_dataset is None:
        args.probe_dataset = "voc2007" if "voc2007" in args.datasets else args.datasets[0]
    elif args.probe_dataset not in DATASETS:
        fail(f"--probe-dataset {args.probe_dataset!r}: expected one of {', '.join(DATASETS)}")
    args.out = Path(args.out).expanduser().resolve()
    if args.out == REPO or REPO in args.out.parents:
        fail(f"--out {args.out} is inside the repository; put the rehearsal data elsewhere")
    if args.out.exists() and not args.out.is_dir():
        fail(f"--out {args.out} exists and is not a folder")
    if args.skip_write and not (args.out / "data" / "manifest.json").is_file():
        fail(f"--skip-write: {args.out}/data holds no written data; run once without it")
    return args


def _names(text: str, known: tuple[str, ...], option: str) -> list[str]:
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        fail(f"{option}: unknown {', '.join(unknown) or '(empty)'}; expected {', '.join(known)}")
    return names


# ---- phases ----------------------------------------------------------------------------------
def write_phase(args: argparse.Namespace, sizes: Sizes) -> dict[str, Any]:
    """Full-size data into <out>/data and the probe subset into <out>/subset."""
    from scale.write import WRITER_VERSION, Manifest, write_dataset

    written: dict[str, Any] = {}
    targets = [("data", sizes, args.datasets, {"fraction": args.fraction})]
    if not args.no_probe:
        subset = sizes.subset(args.backbone_subset_images, args.backbone_subset_texts)
        targets.append(
            ("subset", subset, [args.probe_dataset], {"subset": list(subset.__dict__.values())})
        )
    for folder, target_sizes, datasets, extra in targets:
        settings = {"writer": WRITER_VERSION, "seed": args.seed, **extra}
        try:
            manifest = Manifest(args.out / folder, settings)
        except ValueError as exc:
            fail(str(exc))
        for dataset in datasets:
            print(f"writing {folder}/{dataset} ...", flush=True)
            result = write_dataset(
                args.out / folder, dataset, target_sizes, args.seed, args.workers, manifest
            )
            written[f"{folder}/{dataset}"] = result
            print(f"  {result}", flush=True)
    return written


def plan_cells(args: argparse.Namespace, plan: Plan) -> list[Cell]:
    """RN50 probes first (every extrapolation needs them), then the world cells by method."""
    from scale.runs import method_cells

    cells: list[Cell] = []
    if not args.no_probe:
        for method in args.methods:
            cells += method_cells(plan, method, args.probe_dataset, "probe")
    if not args.no_full:  # cheapest first, so that a budget cut leaves the most cells done
        for method in sorted(args.methods, key=FULL_ORDER.index):
            datasets = args.pvp_datasets if method == "pvp" else args.datasets
            for dataset in (d for d in args.datasets if d in datasets):
                cells += method_cells(plan, method, dataset, "full")
    return cells


def run_phase(
    args: argparse.Namespace,
    plan: Plan,
    report: dict[str, Any],
    started: float,
    sizes: Sizes,
    previous: dict[str, Any],
) -> bool:
    """Run every cell in the budget; the report is rewritten after each. True if none failed.
    Cells an earlier run finished with the same settings are kept, not rerun (``--rerun``)."""
    from scale import report as rep
    from scale.runs import resolve_inputs, run_cell

    cells = plan_cells(args, plan)
    reusable = finished_rows(previous, args.rerun)
    done: dict[str, Cell] = {}
    rows: dict[str, dict[str, Any]] = {}
    ok = True
    for number, cell in enumerate(cells, 1):
        elapsed = (time.perf_counter() - started) / 60
        reason = resolve_inputs(cell, done, plan)
        if reason is None and elapsed > args.budget_min:
            reason = f"skipped: time budget ({args.budget_min:g} min) spent"
        if cell.id in reusable:  # finished by an earlier run with the same settings
            cell.result = earlier_result(reusable[cell.id], previous, cell, args.out)
            print(f"[{number}/{len(cells)}] {cell.id}: done earlier, kept", flush=True)
        elif reason is not None:
            cell.result = {"status": reason}
        else:
            print(f"[{number}/{len(cells)}] {cell.id} ({elapsed:.1f} min in) ...", flush=True)
            cell.result = run_cell(cell, plan, args.cell_timeout_min * 60)
            if cell.stage == "generate" and cell.result["status"] == "ok":
                out = Path(cell.command[cell.command.index("--out") + 1])
                cell.result["generated_images"] = sum(1 for _ in out.glob("world-*/images/*"))
            ok = ok and cell.result["status"] == "ok"
            print(f"  {cell.result['status']}: {_brief(rep.cell_row(cell))}", flush=True)
        done[cell.id], rows[cell.id] = cell, rep.cell_row(cell)
        report.setdefault("results", {})[cell.id] = cell.result
        _fill_report(report, list(rows.values()), args, sizes, started)
        rep.save(args.out, report)
    return ok


#: Settings under which an earlier run's finished cells are kept (same data, same cells).
SAME_RUN = ("fraction", "seed", "world_image_size", "probe_images", "probe_texts", "probe_dataset")


def previous_report(args: argparse.Namespace, settings: dict[str, Any]) -> dict[str, Any]:
    """The report an earlier run left in ``--out`` when it ran with the same settings."""
    path = args.out / "scale.json"
    if not path.is_file():
        return {}
    try:
        old = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    same = all(old.get("settings", {}).get(k) == settings[k] for k in SAME_RUN)
    return old if same else {}


def earlier_result(
    row: dict[str, Any], previous: dict[str, Any], cell: Cell, out: Path
) -> dict[str, Any]:
    """A kept cell's measurements: as saved, or rebuilt from its row and its timer file (a
    report from before results were saved), so that its row is recomputed by this code."""
    saved = previous.get("results", {}).get(cell.id)
    if saved is not None:
        return saved
    timer = out / "logs" / f"{cell.slug}.timer.json"
    return {
        "status": row["status"],
        "wall_s": row.get("wall_s"),
        "peak_rss_mb": row.get("peak_rss_mb"),
        "new_caches": row.get("cache_dirs_new", {}),
        "timing": json.loads(timer.read_text()) if timer.is_file() else {},
        "generated_images": row.get("generated_images"),
        "log": row.get("log"),
        "command": cell.command,
    }


def finished_rows(previous: dict[str, Any], rerun: str | None) -> dict[str, dict[str, Any]]:
    """Rows an earlier run finished, less those ``--rerun`` names (fnmatch patterns)."""
    patterns = [p.strip() for p in (rerun or "").split(",") if p.strip()]
    return {
        r["id"]: r
        for r in previous.get("cells", [])
        if r.get("status") == "ok" and not any(fnmatch.fnmatch(r["id"], p) for p in patterns)
    }


def _brief(row: dict[str, Any]) -> str:
    parts = [f"wall {row['wall_s'] or 0:.0f} s", f"peak {row['peak_rss_mb'] or 0:,.0f} MB"]
    if row["images_encoded"]:
        parts.append(f"{row['images_encoded']:,} images at {row['images_per_s'] or 0:,.1f}/s")
    if row["texts_encoded"]:
        parts.append(f"{row['texts_encoded']:,} texts at {row['texts_per_s'] or 0:,.1f}/s")
    if row["step_s"]:
        parts.append(f"{row['step_s']:.2f} s/step")
    return ", ".join(parts)


def _fill_report(
    report: dict[str, Any], rows: list[dict[str, Any]], args: argparse.Namespace, sizes: Sizes,
    started: float,
) -> None:  # fmt: skip
    from scale import report as rep
    from scale.write import Sizes

    report["cells"] = rows
    report["rn50_costs"] = rep.unit_costs(rows)
    report["extrapolation"] = rep.extrapolate(
        rows, report["rn50_costs"], Sizes(), args.methods, args.datasets, args.fraction
    )
    report["extrapolation_sizes"] = "full official sizes (independent of --fraction)"
    report["data_sizes"] = sizes.__dict__
    report["total_wall_s"] = time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    from scale import report as rep
    from scale.runs import Plan
    from scale.write import Sizes, folder_bytes, inventory

    started = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    sizes = Sizes().scaled(args.fraction) if args.fraction < 1 else Sizes()
    plan = Plan(args.out, full_steps=args.full_steps, world_image_size=args.world_image_size)
    report: dict[str, Any] = {
        "settings": {
            "command": "python benchmarks/scale.py " + shlex.join(argv),
            "fraction": args.fraction,
            "seed": args.seed,
            "datasets": args.datasets,
            "methods": args.methods,
            "probe_dataset": None if args.no_probe else args.probe_dataset,
            "pvp_datasets": args.pvp_datasets,
            "probe_images": args.backbone_subset_images,
            "probe_texts": args.backbone_subset_texts,
            "world_image_size": args.world_image_size,
            "budget_min": args.budget_min,
        },
        "machine": rep.machine(),
    }
    previous = previous_report(args, report["settings"])
    report["commands"] = [*previous.get("commands", []), report["settings"]["command"]]
    if not args.skip_write:
        report["written"] = write_phase(args, sizes)
        report["data_bytes"] = folder_bytes(args.out / "data")
    else:
        report["written"] = previous.get("written") or inventory(args.out / "data", args.datasets)
        report["data_bytes"] = previous.get("data_bytes") or folder_bytes(args.out / "data")
    report["loading"] = rep.loading_costs()
    _fill_report(report, previous.get("cells", []), args, sizes, started)  # kept until rerun
    rep.save(args.out, report)
    ok = True
    if not args.skip_run:
        ok = run_phase(args, plan, report, started, sizes, previous)
    report["total_wall_s"] = time.perf_counter() - started
    rep.save(args.out, report)
    print(rep.markdown(report))
    print(f"written: {args.out / 'scale.json'} and {args.out / 'scale.md'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
