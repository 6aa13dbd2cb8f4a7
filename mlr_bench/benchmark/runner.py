"""Run the matrix: skip finished cells, run the rest one by one, never stop at a failure.

Each cell runs in a child process by default (``isolation="subprocess"``): a crash, an
out-of-memory kill or a leak in one cell cannot affect the next, Ctrl-C stops the matrix
cleanly, DDP's re-launch of the command works, and a cell's peak memory is its own. The price
is the child's start-up (about 8 s of imports on a 2-core CPU), negligible against real
cells; ``isolation="in-process"`` skips it for small matrices and tests.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tqdm.auto import tqdm

from mlr_bench.benchmark.cell import ERROR, LOG, RESULT, describe_failure, run_and_record
from mlr_bench.benchmark.matrix import Cell, CellSettings, cell_args
from mlr_bench.runs import atomic_write_text

Isolation = Literal["subprocess", "in-process"]
#: ``(cell, cell_dir, args) -> None``: runs one cell, leaving result.json or error.txt behind.
CellRunner = Callable[[Cell, Path, Sequence[str]], None]


@dataclass
class MatrixOutcome:
    """Every cell's record (``status`` ok or failed) plus which cells ran this time."""

    records: list[dict[str, Any]]
    executed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def load_result(cell_dir: Path) -> dict[str, Any] | None:
    """A finished cell's record; None when the cell is not done (or its file is unreadable)."""
    try:
        record = json.loads((cell_dir / RESULT).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("status") == "ok" else None


def run_in_process(cell: Cell, cell_dir: Path, args: Sequence[str]) -> None:
    run_and_record(cell, cell_dir, args)


def run_in_subprocess(cell: Cell, cell_dir: Path, args: Sequence[str]) -> None:
    """``python -m mlr_bench.benchmark.worker`` with output to the cell's ``log.txt``."""
    command = [sys.executable, "-m", "mlr_bench.benchmark.worker", str(cell_dir)]
    command += [cell.method, cell.dataset, str(cell.seed), "--", *args]
    log_file = cell_dir / LOG
    with log_file.open("a", encoding="utf-8") as log:
        done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=os.environ)
    if done.returncode in (130, -signal.SIGINT):  # the child saw Ctrl-C: stop the matrix too
        raise KeyboardInterrupt
    if load_result(cell_dir) is None and not (cell_dir / ERROR).is_file():
        # Killed before it could report (a signal, the out-of-memory killer).
        error = ChildProcessError(f"cell process exited with code {done.returncode}")
        atomic_write_text(cell_dir / ERROR, describe_failure(cell, error, log_file))


RUNNERS: dict[str, CellRunner] = {"subprocess": run_in_subprocess, "in-process": run_in_process}


def failure_summary(cell_dir: Path) -> str:
    """First line of ``error.txt`` (without the cell prefix), for the table and the console."""
    try:
        first = (cell_dir / ERROR).read_text(encoding="utf-8").splitlines()[0]
    except (OSError, IndexError):
        return "failed without an error report"
    return first.split(" failed: ", 1)[-1]


def failed_record(cell: Cell, cell_dir: Path) -> dict[str, Any]:
    return {
        "method": cell.method,
        "dataset": cell.dataset,
        "seed": cell.seed,
        "status": "failed",
        "error": failure_summary(cell_dir),
        "error_file": str(cell_dir / ERROR),
        "run_dir": str(cell_dir),
    }


def status_line(index: int, total: int, record: dict[str, Any], note: str = "") -> str:
    """One line per finished cell: name, mAP, times and memory (or the error)."""
    name = f"{record['method']}-{record['dataset']}-s{record['seed']}"
    head = f"[{index}/{total}] {record['status']:<6} {name}"
    if record["status"] != "ok":
        return f"{head}  {record.get('error', '')}  ({record.get('error_file')})"
    memory = "CUDA alloc" if record.get("memory") == "cuda_max_allocated" else "RSS"
    evals = record.get("eval_time_s") or 0.0
    return (
        f"{head}  mAP {record['metrics']['mAP']:6.2f}  train {record['train_time_s']:6.1f} s  "
        f"eval {evals:5.1f} s  peak {memory} {record['peak_memory_mb']:,.0f} MB{note}"
    )


def run_matrix(
    cells: Sequence[Cell],
    out: Path,
    settings: CellSettings,
    isolation: Isolation = "subprocess",
    runner: CellRunner | None = None,
) -> MatrixOutcome:
    """Run every not-yet-done cell of ``cells`` under ``out``; failures are recorded, not raised.

    ``runner`` replaces the cell runner (tests use it to count or interrupt cells).
    """
    run_cell = runner or RUNNERS[isolation]
    total = len(cells)
    done = {cell: load_result(out / cell.name) for cell in cells}
    outcome = MatrixOutcome(records=[])
    bar = tqdm(
        total=total,
        initial=sum(r is not None for r in done.values()),
        bar_format="{desc} {n_fmt}/{total_fmt} |{bar:20}| {elapsed} elapsed, ETA {remaining}"
        "{postfix}",
        desc="benchmark: cells done",
        file=sys.stderr,
        dynamic_ncols=True,
    )
    with bar:
        for index, cell in enumerate(cells, start=1):
            cell_dir = out / cell.name
            record = done[cell]
            if record is not None:
                bar.write(status_line(index, total, record, note="  (done before: skipped)"))
                outcome.records.append(record)
                continue
            bar.set_postfix_str(f"running cell {index}/{total}: {cell.name}")
            if cell_dir.exists():  # an unfinished earlier attempt: start clean
                shutil.rmtree(cell_dir)
            cell_dir.mkdir(parents=True)
            run_cell(cell, cell_dir, cell_args(cell, cell_dir, settings))
            outcome.executed.append(cell.name)
            record = load_result(cell_dir)
            if record is None:
                record = failed_record(cell, cell_dir)
                outcome.failed.append(cell.name)
            outcome.records.append(record)
            bar.write(status_line(index, total, record))
            bar.update(1)
    return outcome
