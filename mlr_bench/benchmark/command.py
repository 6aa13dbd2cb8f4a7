"""``mlr-bench benchmark``: the (method × dataset × seed) matrix -> tables, leaderboard, plots."""

from __future__ import annotations

import argparse
import inspect
import secrets
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlr_bench.benchmark import matrix as mx
from mlr_bench.benchmark.launcher import LAUNCHERS, SlurmOptions
from mlr_bench.benchmark.plots import plot_all
from mlr_bench.benchmark.process import report_interruption, stop_on_signals
from mlr_bench.benchmark.reference import BACKBONE_MARK, load_reference
from mlr_bench.benchmark.report import (
    by_protocol,
    by_track,
    leaderboard_markdown,
    protocol_column,
    rows_to_csv,
    summarise,
    to_rows,
    track_label,
)
from mlr_bench.benchmark.runner import (
    CellRunner,
    Isolation,
    MatrixOutcome,
    folder_records,
    os_error_message,
    plan_cells,
    run_matrix,
)
from mlr_bench.benchmark.uncertainty import leaderboard_intervals
from mlr_bench.errors import MLRBenchError
from mlr_bench.protocol import CLEAN, PROTOCOLS
from mlr_bench.runs import atomic_write_json, atomic_write_text

META = "benchmark.json"


@dataclass
class BenchmarkResult:
    """What a benchmark run produced: the matrix outcome and the files written."""

    outcome: MatrixOutcome
    files: dict[str, Path]
    plots: list[Path]
    leaderboard: str
    meta: dict[str, Any] = field(default_factory=dict)


def benchmark_identity(out: Path, name: str | None) -> dict[str, Any]:
    """Name and id of the benchmark in ``out``, kept across resumed runs (one W&B group)."""
    path = out / META
    if path.is_file():
        import json

        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise MLRBenchError(
                f"{path}: not valid JSON ({exc}); delete it to start anew"
            ) from None
        if name is None or name == meta.get("name"):
            return meta
    name = name or out.resolve().name
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return {"name": name, "id": f"{name}-{stamp}-{secrets.token_hex(2)}", "created": stamp}


def prepare_out(out: Path) -> None:
    """``--out`` must be a folder this process can write into: say so before any cell runs."""
    if out.exists() and not out.is_dir():
        raise MLRBenchError(f"--out: {out} is a file; expected a folder (new, or a benchmark's)")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as exc:
        raise MLRBenchError(
            f"--out: cannot write into {exc.filename or out} ({exc.strerror or exc}); choose "
            "a folder you can write to"
        ) from None


def _names_in_order(first: Sequence[Any], records: Sequence[dict[str, Any]], key: str) -> list:
    """``first`` (what was asked for), then what else the folder's cells have, sorted."""
    extra = sorted({r[key] for r in records} - set(first), key=str)
    return [*first, *extra]


def coverage_text(out: Path, asked: Sequence[dict[str, Any]], others: Sequence[Any]) -> str:
    """The leaderboard's first line: exactly which cells it covers."""
    finished = sum(r.get("status") == "ok" for r in asked)
    text = (
        f"Covers every finished cell in `{out}`: {finished} of the {len(asked)} cell(s) this "
        f"run asked for, plus {len(others)} other finished cell(s) found there."
    )
    running = sum(r.get("status") == "running" for r in asked)
    if running:
        text += f" {running} cell(s) being run by another benchmark are not included."
    return text


def run_benchmark(
    methods: Sequence[str],
    datasets: Sequence[str],
    seeds: Sequence[int],
    out: Path,
    settings: mx.CellSettings | None = None,
    isolation: Isolation = "subprocess",
    name: str | None = None,
    runner: CellRunner | None = None,
    rerun: bool = False,
) -> BenchmarkResult:
    """Run (or resume) the matrix in ``out`` and write every output; failures are recorded.

    Cells finished earlier with other settings stop it before anything is written
    (``MLRBenchError``) unless ``rerun``. The tables and plots cover every finished cell in
    ``out``, including other methods, datasets and seeds of earlier runs.
    """
    prepare_out(out)
    meta = benchmark_identity(out, name)
    settings = settings or mx.CellSettings()
    if settings.logger == "wandb":
        settings.project, settings.group = meta["name"], meta["id"]
    tracks = (mx.REFERENCE, mx.TUNED) if settings.tuned is not None else (mx.REFERENCE,)
    cells = mx.expand(methods, datasets, seeds, tracks, settings.backbones)
    runnable = [c for c in cells if mx.runs_on(c)]
    skipped = sorted({f"{c.method} on {c.backbone}" for c in cells if c not in runnable})
    if skipped:  # e.g. TagCLIP needs a ViT: its ResNet cells would only fail
        print(
            f"mlr-bench benchmark: note: skipping {', '.join(skipped)} (the method does not "
            "support that image tower)",
            file=sys.stderr,
        )
    cells = runnable
    planned = plan_cells(cells, out, settings, rerun)  # refuses before anything is written
    meta |= {
        "methods": list(methods),
        "datasets": list(datasets),
        "seeds": list(seeds),
        "recipes": str(settings.recipes) if settings.recipes else None,
        "configs": [str(c) for c in settings.configs],
        "extra_args": list(settings.extra_args),
        **({"backbones": list(settings.backbones)} if settings.backbones != (None,) else {}),
        "isolation": isolation,
        **({"tuned": str(settings.tuned)} if settings.tuned is not None else {}),
    }
    try:
        atomic_write_json(out / META, meta)
    except OSError as exc:
        raise MLRBenchError(os_error_message(out / META, exc)) from None
    outcome = run_matrix(cells, out, settings, isolation, runner, rerun, planned)
    records = outcome.records + folder_records(out, skip={c.name for c in cells})
    try:
        return _write_outputs(out, meta, records, outcome, methods, datasets, seeds, settings)
    except OSError as exc:
        raise MLRBenchError(os_error_message(out, exc)) from None


def _write_outputs(
    out: Path,
    meta: dict[str, Any],
    records: list[dict[str, Any]],
    outcome: MatrixOutcome,
    methods: Sequence[str],
    datasets: Sequence[str],
    seeds: Sequence[int],
    settings: mx.CellSettings,
) -> BenchmarkResult:
    """results.csv/json, leaderboard.md and plots/ over ``records`` (all of the folder)."""
    columns, rows = to_rows(records)
    per_class = [r.get("per_class_ap") for r in records]
    json_rows = [{**row, "per_class_ap": pc} for row, pc in zip(rows, per_class, strict=True)]
    files = {
        "results.csv": out / "results.csv",
        "results.json": out / "results.json",
        "leaderboard.md": out / "leaderboard.md",
    }
    atomic_write_text(files["results.csv"], rows_to_csv(columns, rows))
    atomic_write_json(
        files["results.json"], {"benchmark": meta, "columns": columns, "rows": json_rows}
    )
    records = by_track(by_protocol(records))  # leaderboard and plots: one column per protocol
    tracks = [mx.REFERENCE, mx.TUNED] if settings.tuned is not None else [mx.REFERENCE]
    asked_rows = [track_label(m, t) for m in methods for t in tracks]  # and one row per track
    all_methods = _names_in_order(asked_rows, records, "method")
    asked = [protocol_column({"dataset": d, "protocol": settings.protocol}) for d in datasets]
    found = {r["dataset"] for r in records}  # an asked column split by backbone: its parts
    asked = [a for a in asked if not any(f.startswith(a + BACKBONE_MARK) for f in found)]
    all_datasets = _names_in_order(asked, records, "dataset")
    all_seeds = sorted(set(seeds) | {int(r["seed"]) for r in records if r.get("status") == "ok"})
    intervals, interval_notes = leaderboard_intervals(records, settings.bootstrap)
    leaderboard = leaderboard_markdown(
        meta["name"],
        records,
        all_methods,
        all_datasets,
        all_seeds,
        load_reference(),
        coverage=coverage_text(out, outcome.records, records[len(outcome.records) :]),
        intervals=intervals,
        interval_notes=interval_notes,
    )
    atomic_write_text(files["leaderboard.md"], leaderboard)
    summaries = summarise(records)
    plots = plot_all(summaries, all_methods, all_datasets, out / "plots", meta["name"], all_seeds)
    if settings.logger == "wandb":
        log_to_wandb(rows, meta, out)
    return BenchmarkResult(outcome, files, plots, leaderboard, meta)


def wandb_sync_hint(out: Path) -> str | None:
    """How to upload the benchmark's offline W&B runs (cells and leaderboard), if any."""
    if not any(out.rglob("offline-run-*")):
        return None
    return (
        "W&B runs are offline; upload them all with:\n"
        f"  find {out} -type d -name 'offline-run-*' -prune -exec wandb sync {{}} +"
    )


def log_to_wandb(rows: list[dict[str, Any]], meta: dict[str, Any], out: Path) -> None:
    """The leaderboard as a W&B summary run in the benchmark's group, when the logger module
    provides it (``mlr_bench.loggers.log_leaderboard``)."""
    from mlr_bench import loggers

    log = getattr(loggers, "log_leaderboard", None)
    if log is None:
        print(
            "mlr-bench benchmark: no W&B leaderboard (mlr_bench.loggers.log_leaderboard "
            "is missing)",
            file=sys.stderr,
        )
        return
    kwargs = {"save_dir": str(out)} if "save_dir" in inspect.signature(log).parameters else {}
    log(rows, project=meta["name"], group=meta["id"], **kwargs)


# ---- command line -------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mlr-bench benchmark",
        description=(
            "Run `mlr-bench train` (fit, then test the checkpoint selected on val) for every "
            "method × dataset × seed, each in <out>/<method>-<dataset>-s<seed>/, then write "
            "results.csv/json, leaderboard.md and plots/ (over every finished cell in <out>). "
            "Re-running resumes: cells finished with the same settings are skipped; cells "
            "finished with other settings stop it (see --rerun); a cell another benchmark is "
            "running is skipped. Arguments after `--` go to every cell."
        ),
    )
    parser.add_argument("--methods", default="all", help="comma-separated names, or all")
    parser.add_argument("--data", default="world", help="comma-separated dataset names")
    parser.add_argument("--seeds", default="1,2,3", help="comma-separated seeds (1,2,3)")
    parser.add_argument(
        "--backbones",
        help="comma-separated CLIP backbones, every cell once per backbone (e.g. "
        "world,world-vit); default: each recipe's own. Leaderboard columns split by backbone",
    )
    parser.add_argument(
        "--config", action="append", default=[], help="extra config for every cell (repeatable)"
    )
    parser.add_argument("--out", type=Path, default=Path("runs/benchmark"), help="output dir")
    parser.add_argument("--name", help="benchmark name (default: the --out folder's name)")
    parser.add_argument("--max-epochs", type=int, help="override trainer.max_epochs")
    parser.add_argument("--logger", choices=list(mx.LOGGERS), help="logger of every cell")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="cells run at once (default 1), each in its own process with one CPU thread or, "
        "with GPUs, one device each (round-robin over CUDA_VISIBLE_DEVICES)",
    )
    parser.add_argument(
        "--launcher",
        choices=LAUNCHERS,
        default="local",
        help="where cells run: local (default), slurm (one array job through submitit; "
        "--slurm.* options), submitit-local (the same path with local processes)",
    )
    slurm = SlurmOptions()
    parser.add_argument("--slurm.partition", help="SLURM partition (default: the cluster's)")
    parser.add_argument(
        "--slurm.time", type=int, default=slurm.time_min, help="minutes per cell's job"
    )
    parser.add_argument("--slurm.gpus-per-cell", type=int, default=slurm.gpus_per_cell)
    parser.add_argument("--slurm.cpus-per-cell", type=int, default=slurm.cpus_per_cell)
    parser.add_argument("--slurm.mem-gb", type=int, help="memory per cell's job")
    parser.add_argument(
        "--slurm.parallelism",
        type=int,
        default=slurm.parallelism,
        help="array tasks running at once",
    )
    parser.add_argument(
        "--bootstrap",
        type=int,
        metavar="N",
        help="replicates of the leaderboard's paired bootstrap (default: 1000, or 200 for "
        "large test sets; 0: no intervals)",
    )
    parser.add_argument(
        "--protocol",
        choices=list(PROTOCOLS),
        default=CLEAN,
        help="protocol of every cell: clean (default: validation from the training side, no "
        "captions of test images) or reference (the reference code's choices); the "
        "leaderboard never puts two protocols in one column",
    )
    parser.add_argument(
        "--recipes",
        default=str(mx.DEFAULT_RECIPES),
        help="folder of <method>_<dataset>.yaml recipes ('none': always --method/--data)",
    )
    parser.add_argument(
        "--tuned",
        type=Path,
        metavar="DIR",
        help="add the tuned track: every cell again with the hyperparameters a sweep chose, "
        "DIR/<method>-<dataset>/best.yaml (`mlr-bench sweep --out DIR/<method>-<dataset>`); "
        "the leaderboard labels its rows '<method> (tuned)'",
    )
    parser.add_argument(
        "--isolation",
        choices=["subprocess", "in-process"],
        default="subprocess",
        help="one child process per cell (default, robust) or all in this process (faster start)",
    )
    parser.add_argument(
        "--rerun",
        action="store_true",
        help="run cells again that are finished with other settings (or have a broken "
        "result.json), replacing their results; default: refuse and say what differs",
    )
    return parser


def benchmark_main(argv: Sequence[str]) -> int:
    """Entry of ``mlr-bench benchmark``. Exit codes: 0 all cells done; 1 a cell failed or is
    being run by another benchmark (skipped); 2 bad input, settings conflicting with finished
    cells, an unwritable folder (one message, nothing run); 130/143/129 on SIGINT/TERM/HUP."""
    argv = list(argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    args = build_parser().parse_args(own)
    recipes = None if args.recipes.lower() == "none" else Path(args.recipes).expanduser()
    if recipes is not None and not recipes.is_dir():
        what = "is not a folder" if recipes.exists() else "does not exist"
        raise MLRBenchError(
            f"--recipes: {recipes} {what}; expected a folder of <method>_<dataset>.yaml "
            "recipes, or 'none'"
        )
    for config in args.config:
        if not Path(config).expanduser().is_file():
            what = "is not a file" if Path(config).expanduser().exists() else "does not exist"
            raise MLRBenchError(f"--config: {config} {what} (expected a YAML file)")
    if args.workers < 1:
        raise MLRBenchError(f"--workers: expected 1 or more, got {args.workers}")
    if args.workers > 1 and args.isolation == "in-process":
        raise MLRBenchError(
            "--workers N > 1 runs cells in their own processes; it does not combine with "
            "--isolation in-process"
        )
    if args.launcher != "local" and (args.isolation == "in-process" or args.workers > 1):
        raise MLRBenchError(
            f"--launcher {args.launcher} runs each cell as a job in its own process; it does "
            "not combine with --isolation in-process or --workers (set --slurm.parallelism)"
        )
    slurm_options = SlurmOptions(
        partition=getattr(args, "slurm.partition"),
        time_min=getattr(args, "slurm.time"),
        gpus_per_cell=getattr(args, "slurm.gpus_per_cell"),
        cpus_per_cell=getattr(args, "slurm.cpus_per_cell"),
        mem_gb=getattr(args, "slurm.mem_gb"),
        parallelism=getattr(args, "slurm.parallelism"),
    )
    if args.bootstrap is not None and args.bootstrap < 0:
        raise MLRBenchError(f"--bootstrap: expected 0 or more replicates, got {args.bootstrap}")
    if args.max_epochs is not None and args.max_epochs < 1:
        raise MLRBenchError(f"--max-epochs: expected a positive integer, got {args.max_epochs}")
    settings = mx.CellSettings(
        recipes=recipes,
        configs=[str(Path(c).expanduser().resolve()) for c in args.config],
        extra_args=extra,
        max_epochs=args.max_epochs,
        logger=args.logger,
        protocol=args.protocol,
        bootstrap=args.bootstrap,
        workers=args.workers,
        launcher=args.launcher,
        slurm=slurm_options,
    )
    methods = mx.resolve_names("method", args.methods)
    datasets = mx.resolve_names("data", args.data)
    seeds = mx.parse_seeds(args.seeds)
    if args.backbones is not None:
        settings.backbones = tuple(mx.split_list("--backbones", args.backbones))
    if args.tuned is not None:
        settings.tuned = check_tuned(args.tuned.expanduser(), methods, datasets)
    if recipes is not None and recipes.resolve() != mx.DEFAULT_RECIPES:
        missing = [
            c.name for c in mx.expand(methods, datasets, seeds[:1]) if not mx.recipe_for(c, recipes)
        ]
        if missing:  # your own recipes folder: say which cells fall back to the defaults
            print(
                f"mlr-bench benchmark: note: no <method>_<dataset>.yaml in {recipes} for "
                f"{', '.join(n.rsplit('-s', 1)[0] for n in missing)}; those cells use "
                "--method/--data with their defaults",
                file=sys.stderr,
            )
    try:
        with stop_on_signals():
            result = run_benchmark(
                methods, datasets, seeds, args.out, settings, args.isolation, args.name,
                rerun=args.rerun,
            )  # fmt: skip
    except KeyboardInterrupt as exc:
        return report_interruption(
            exc,
            "benchmark",
            f"the running cell was stopped. Finished cells are kept in {args.out}; run the "
            "same command again to resume.",
        )
    print()
    print(result.leaderboard)
    print("files:")
    for path in [*result.files.values(), *result.plots]:
        print(f"  {path}")
    outcome = result.outcome
    before = len(outcome.records) - len(outcome.executed) - len(outcome.busy)
    print(
        f"\n{len(outcome.records)} cells: {len(outcome.executed)} run now, "
        f"{before} done before, {len(outcome.failed)} failed, "
        f"{len(outcome.busy)} skipped (run by another benchmark)"
    )
    if settings.logger == "wandb":
        hint = wandb_sync_hint(args.out)
        if hint:
            print(hint)
    code = 0
    if outcome.busy:
        print(
            f"mlr-bench benchmark: {len(outcome.busy)} cell(s) not done here: another "
            "benchmark is running them; run the same command again once it has finished:",
            file=sys.stderr,
        )
        _list_cells(outcome.records, "running", "  cell {name} is {error}")
        code = 1
    if outcome.failed:
        print(f"mlr-bench benchmark: {len(outcome.failed)} cell(s) failed:", file=sys.stderr)
        _list_cells(outcome.records, "failed", "  {name}: {error} (see {error_file})")
        code = 1
    return code


def check_tuned(folder: Path, methods: Sequence[str], datasets: Sequence[str]) -> Path:
    """``--tuned DIR`` must hold a sweep's ``best.yaml`` for every method and dataset asked."""
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise MLRBenchError(
            f"--tuned: {folder} {what}; expected a folder of sweep outputs, "
            "<method>-<dataset>/best.yaml"
        )
    folder = folder.resolve()
    cells = [mx.Cell(m, d, 0, mx.TUNED) for d in datasets for m in methods]
    missing = [c for c in cells if not (folder / f"{c.method}-{c.dataset}/best.yaml").is_file()]
    if missing:
        raise MLRBenchError(
            f"--tuned {folder}: no best.yaml for "
            + ", ".join(f"{c.method}-{c.dataset}" for c in missing)
            + "; run e.g. `mlr-bench sweep --method "
            f"{missing[0].method} --data {missing[0].dataset} --trials N --out "
            f"{folder / f'{missing[0].method}-{missing[0].dataset}'}` first"
        )
    return folder


def _list_cells(records: list[dict], status: str, line: str) -> None:
    """One stderr line per cell of ``status``, formatted from its name and error fields."""
    for record in records:
        if record.get("status") == status:
            name = mx.record_name(record)
            print(
                line.format(
                    name=name, error=record.get("error"), error_file=record.get("error_file")
                ),
                file=sys.stderr,
            )
