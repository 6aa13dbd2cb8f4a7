"""``mlr-bench benchmark``: the (method × dataset × seed) matrix -> tables, leaderboard, plots."""

from __future__ import annotations

import argparse
import inspect
import secrets
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlr_bench.benchmark import matrix as mx
from mlr_bench.benchmark.plots import plot_all
from mlr_bench.benchmark.reference import load_reference
from mlr_bench.benchmark.report import leaderboard_markdown, rows_to_csv, summarise, to_rows
from mlr_bench.benchmark.runner import CellRunner, Isolation, MatrixOutcome, run_matrix
from mlr_bench.errors import MLRBenchError
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


def run_benchmark(
    methods: Sequence[str],
    datasets: Sequence[str],
    seeds: Sequence[int],
    out: Path,
    settings: mx.CellSettings | None = None,
    isolation: Isolation = "subprocess",
    name: str | None = None,
    runner: CellRunner | None = None,
) -> BenchmarkResult:
    """Run (or resume) the matrix in ``out`` and write every output; failures are recorded."""
    out.mkdir(parents=True, exist_ok=True)
    meta = benchmark_identity(out, name)
    settings = settings or mx.CellSettings()
    if settings.logger == "wandb":
        settings.project, settings.group = meta["name"], meta["id"]
    cells = mx.expand(methods, datasets, seeds)
    meta |= {
        "methods": list(methods),
        "datasets": list(datasets),
        "seeds": list(seeds),
        "recipes": str(settings.recipes) if settings.recipes else None,
        "configs": [str(c) for c in settings.configs],
        "extra_args": list(settings.extra_args),
        "isolation": isolation,
    }
    atomic_write_json(out / META, meta)
    outcome = run_matrix(cells, out, settings, isolation, runner)

    columns, rows = to_rows(outcome.records)
    per_class = [r.get("per_class_ap") for r in outcome.records]
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
    leaderboard = leaderboard_markdown(
        meta["name"], outcome.records, methods, datasets, seeds, load_reference()
    )
    atomic_write_text(files["leaderboard.md"], leaderboard)
    summaries = summarise(outcome.records)
    plots = plot_all(summaries, methods, datasets, out / "plots", meta["name"], seeds)
    if settings.logger == "wandb":
        log_to_wandb(rows, meta, out)
    return BenchmarkResult(outcome, files, plots, leaderboard, meta)


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
            "results.csv/json, leaderboard.md and plots/. Re-running resumes: finished cells "
            "are skipped. Arguments after `--` go to every cell."
        ),
    )
    parser.add_argument("--methods", default="all", help="comma-separated names, or all")
    parser.add_argument("--data", default="world", help="comma-separated dataset names")
    parser.add_argument("--seeds", default="1,2,3", help="comma-separated seeds (1,2,3)")
    parser.add_argument(
        "--config", action="append", default=[], help="extra config for every cell (repeatable)"
    )
    parser.add_argument("--out", type=Path, default=Path("runs/benchmark"), help="output dir")
    parser.add_argument("--name", help="benchmark name (default: the --out folder's name)")
    parser.add_argument("--max-epochs", type=int, help="override trainer.max_epochs")
    parser.add_argument("--logger", choices=list(mx.LOGGERS), help="logger of every cell")
    parser.add_argument(
        "--recipes",
        default=str(mx.DEFAULT_RECIPES),
        help="folder of <method>_<dataset>.yaml recipes ('none': always --method/--data)",
    )
    parser.add_argument(
        "--isolation",
        choices=["subprocess", "in-process"],
        default="subprocess",
        help="one child process per cell (default, robust) or all in this process (faster start)",
    )
    return parser


def benchmark_main(argv: Sequence[str]) -> int:
    """Entry of ``mlr-bench benchmark``; exit code 1 when any cell failed."""
    argv = list(argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    args = build_parser().parse_args(own)
    recipes = None if args.recipes.lower() == "none" else Path(args.recipes).expanduser()
    if recipes is not None and not recipes.is_dir():
        raise MLRBenchError(f"--recipes: {recipes} is not a folder of <method>_<dataset>.yaml")
    for config in args.config:
        if not Path(config).expanduser().is_file():
            raise MLRBenchError(f"--config: {config} does not exist (expected a YAML file)")
    if args.max_epochs is not None and args.max_epochs < 1:
        raise MLRBenchError(f"--max-epochs: expected a positive integer, got {args.max_epochs}")
    settings = mx.CellSettings(
        recipes=recipes,
        configs=[str(Path(c).expanduser().resolve()) for c in args.config],
        extra_args=extra,
        max_epochs=args.max_epochs,
        logger=args.logger,
    )
    try:
        result = run_benchmark(
            mx.resolve_names("method", args.methods),
            mx.resolve_names("data", args.data),
            mx.parse_seeds(args.seeds),
            args.out,
            settings,
            args.isolation,
            args.name,
        )
    except KeyboardInterrupt:
        print(
            f"\nmlr-bench benchmark: interrupted. Finished cells are kept in {args.out}; "
            "run the same command again to resume.",
            file=sys.stderr,
        )
        return 130
    print()
    print(result.leaderboard)
    print("files:")
    for path in [*result.files.values(), *result.plots]:
        print(f"  {path}")
    outcome = result.outcome
    print(
        f"\n{len(outcome.records)} cells: {len(outcome.executed)} run now, "
        f"{len(outcome.records) - len(outcome.executed)} done before, {len(outcome.failed)} failed"
    )
    if outcome.failed:
        print(f"mlr-bench benchmark: {len(outcome.failed)} cell(s) failed:", file=sys.stderr)
        for record in outcome.records:
            if record.get("status") != "ok":
                print(
                    f"  {record['method']}-{record['dataset']}-s{record['seed']}: "
                    f"{record.get('error')} (see {record.get('error_file')})",
                    file=sys.stderr,
                )
        return 1
    return 0
