"""Run the matrix: skip finished cells, run the rest one by one, never stop at a failure.

Each cell runs in a child process by default (``isolation="subprocess"``): a crash, an
out-of-memory kill or a leak in one cell cannot affect the next, Ctrl-C stops the matrix
cleanly, DDP's re-launch of the command works, and a cell's peak memory is its own. The price
is the child's start-up (about 8 s of imports on a 2-core CPU), negligible against real
cells; ``isolation="in-process"`` skips it for small matrices and tests.

A cell is keyed by its full settings (``matrix.cell_settings``), stored in its ``cell.json``
and ``result.json``: a finished cell counts as done only for the same settings; one finished
with other settings stops the benchmark before anything runs (``--rerun`` replaces it). Each
cell is locked while it runs (``lock.py``): a second benchmark on the same folder skips it.
Cell processes die with the benchmark (``process.py``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tqdm.auto import tqdm

from mlr_bench.benchmark.cell import CELL, ERROR, LOG, RESULT, describe_failure, run_and_record
from mlr_bench.benchmark.lock import LOCK, CellBusy, cell_lock, held_fd, note_cell_process
from mlr_bench.benchmark.matrix import (
    REFERENCE,
    Cell,
    CellSettings,
    cell_args,
    cell_settings,
    fingerprint,
    record_name,
    settings_diff,
)
from mlr_bench.benchmark.process import (
    clear_stop,
    request_stop,
    run_cell_process,
    slot_environment,
)
from mlr_bench.errors import MLRBenchError
from mlr_bench.runs import atomic_write_json, atomic_write_text

Isolation = Literal["subprocess", "in-process"]
#: ``(cell, cell_dir, args) -> None``: runs one cell, leaving result.json or error.txt behind.
CellRunner = Callable[[Cell, Path, Sequence[str]], None]


@dataclass
class MatrixOutcome:
    """Every cell's record (``status`` ok, failed or running elsewhere) plus which cells ran
    this time, failed, or were skipped because another benchmark holds them."""

    records: list[dict[str, Any]]
    executed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    busy: list[str] = field(default_factory=list)


def read_result(cell_dir: Path) -> tuple[dict[str, Any] | None, str | None]:
    """``(record, None)`` for a readable result, ``(None, problem)`` for a broken one, ``(None,
    None)`` when there is none. Never a guess: a broken file is reported, not re-run over."""
    path = cell_dir / RESULT
    if not path.exists():
        return None, None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return None, f"{path} is not a readable result ({exc})"
    if (
        not isinstance(record, dict)
        or record.get("status") != "ok"
        or not isinstance(record.get("metrics"), dict)
    ):
        return None, f"{path} is not a cell result (no status ok with metrics)"
    return record, None


def load_result(cell_dir: Path) -> dict[str, Any] | None:
    """A finished cell's record; None when the cell is not done (no or a broken result, or an
    ``error.txt`` beside it: a failure is never taken for a result)."""
    record, _ = read_result(cell_dir)
    return None if record is None or (cell_dir / ERROR).exists() else record


def run_in_process(cell: Cell, cell_dir: Path, args: Sequence[str]) -> None:
    run_and_record(cell, cell_dir, args)


def run_in_subprocess(cell: Cell, cell_dir: Path, args: Sequence[str]) -> None:
    """``python -m mlr_bench.benchmark.worker`` with output to the cell's ``log.txt``, in its
    own process group that is killed with the benchmark; it shares the cell's lock."""
    command = [sys.executable, "-m", "mlr_bench.benchmark.worker", str(cell_dir)]
    command += [cell.method, cell.dataset, str(cell.seed), "--track", cell.track]
    if cell.backbone is not None:
        command += ["--backbone", cell.backbone]
    command += ["--", *args]
    log_file = cell_dir / LOG
    fd = held_fd(cell_dir)
    with log_file.open("a", encoding="utf-8") as log:
        code = run_cell_process(
            command,
            log,
            pass_fds=[fd] if fd is not None else [],
            started=lambda pid: note_cell_process(cell_dir, pid),
        )
    if code in (130, -signal.SIGINT):  # the child saw Ctrl-C: stop the matrix too
        raise KeyboardInterrupt
    if load_result(cell_dir) is None and not (cell_dir / ERROR).is_file():
        # Killed before it could report (a signal, the out-of-memory killer).
        error = ChildProcessError(f"cell process exited with code {code}")
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


def busy_record(cell: Cell, cell_dir: Path, holder: str) -> dict[str, Any]:
    """A cell another benchmark is running: not done here, not failed either."""
    return {
        "method": cell.method,
        "dataset": cell.dataset,
        "seed": cell.seed,
        "status": "running",
        "error": f"being run by {holder}; skipped",
        "error_file": None,
        "run_dir": str(cell_dir),
    }


def status_line(index: int, total: int, record: dict[str, Any], note: str = "") -> str:
    """One line per finished cell: name, mAP, times and memory (or the error)."""
    name = record_name(record)
    head = f"[{index}/{total}] {record['status']:<6} {name}"
    if record["status"] == "running":
        return f"{head}  {record.get('error', '')}"
    if record["status"] != "ok":
        return f"{head}  {record.get('error', '')}  ({record.get('error_file')})"
    memory = "CUDA alloc" if record.get("memory") == "cuda_max_allocated" else "RSS"
    evals = record.get("eval_time_s") or 0.0
    return (
        f"{head}  mAP {record['metrics']['mAP']:6.2f}  train {record['train_time_s']:6.1f} s  "
        f"eval {evals:5.1f} s  peak {memory} {record['peak_memory_mb']:,.0f} MB{note}"
    )


# ---- which cells are done: keyed by settings ------------------------------------------------
@dataclass
class PlannedCell:
    """A cell with its settings now and, when finished with the same settings, its record."""

    cell: Cell
    cell_dir: Path
    settings: dict[str, Any]
    record: dict[str, Any] | None = None

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.settings)


def _stored_problem(record: dict[str, Any], now: dict[str, Any]) -> str | None:
    stored = record.get("settings")
    if not isinstance(stored, dict):
        return "its settings were not recorded (run by an older mlr-bench)"
    try:
        if fingerprint(stored) == fingerprint(now):
            return None
    except (AttributeError, TypeError):
        return "its recorded settings are unreadable"
    return "; ".join(settings_diff(stored, now)) or "other settings"


def plan_cells(
    cells: Sequence[Cell], out: Path, settings: CellSettings, rerun: bool = False
) -> list[PlannedCell]:
    """Each cell with its record when it is done with these settings. A finished cell with
    other settings, or a broken ``result.json``, stops everything here, before anything is run
    or written, with one message saying what differs and how to go on (``rerun``: run them
    again, replacing their results)."""
    planned, problems = [], []
    for cell in cells:
        cell_dir = out / cell.name
        if cell_dir.exists() and not cell_dir.is_dir():
            raise MLRBenchError(
                f"--out {out}: {cell_dir} is a file where cell {cell.name} keeps its folder; "
                "move it away, or use another --out"
            )
        item = PlannedCell(cell, cell_dir, cell_settings(cell, settings))
        record, broken = read_result(cell_dir)
        if broken is not None:
            problems.append(f"  {cell.name}: {broken}")
        elif record is not None and not (cell_dir / ERROR).exists():
            differs = _stored_problem(record, item.settings)
            if differs is None:
                item.record = record
            else:
                problems.append(f"  {cell.name}: {differs}")
        planned.append(item)
    if problems and not rerun:
        raise MLRBenchError(
            f"--out {out}: {len(problems)} cell(s) there are finished with other settings or "
            "have a broken result.json; nothing was run:\n"
            + "\n".join(problems)
            + "\nTo keep them, use another --out; to run these cells again with the settings "
            "given now (replacing their results), add --rerun."
        )
    return planned


def clear_cell(cell_dir: Path) -> None:
    """An unfinished or replaced earlier attempt: remove everything but the held lock (a stale
    ``error.txt`` or ``result.json`` must not outlive the run that replaces it)."""
    for entry in cell_dir.iterdir():
        if entry.name == LOCK:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def folder_records(out: Path, skip: set[str]) -> list[dict[str, Any]]:
    """Finished cells in ``out`` other than ``skip`` (earlier runs of other methods, datasets
    or seeds), by folder name: the tables cover everything finished in the folder."""
    found = []
    for cell_dir in sorted(p for p in out.iterdir() if p.is_dir() and p.name not in skip):
        record = load_result(cell_dir)
        if record is not None and {"method", "dataset", "seed"} <= set(record):
            found.append(record)
    return found


def run_matrix(
    cells: Sequence[Cell],
    out: Path,
    settings: CellSettings,
    isolation: Isolation = "subprocess",
    runner: CellRunner | None = None,
    rerun: bool = False,
    planned: Sequence[PlannedCell] | None = None,
) -> MatrixOutcome:
    """Run every not-yet-done cell of ``cells`` under ``out``; failures are recorded, not raised.

    ``runner`` replaces the cell runner (tests use it to count or interrupt cells).
    """
    run_cell = runner or RUNNERS[isolation]
    plan = list(planned) if planned is not None else plan_cells(cells, out, settings, rerun)
    total = len(plan)
    outcome = MatrixOutcome(records=[])
    bar = tqdm(
        total=total,
        initial=sum(p.record is not None for p in plan),
        bar_format="{desc} {n_fmt}/{total_fmt} |{bar:20}| {elapsed} elapsed, ETA {remaining}"
        "{postfix}",
        desc="benchmark: cells done",
        file=sys.stderr,
        dynamic_ncols=True,
    )
    with bar:
        if settings.launcher != "local":
            return _run_as_jobs(plan, settings, out, bar, outcome)
        if settings.workers > 1:
            return _run_parallel(plan, settings, run_cell, bar, outcome)
        for index, item in enumerate(plan, start=1):
            if item.record is not None:
                bar.write(status_line(index, total, item.record, note="  (done before: skipped)"))
                outcome.records.append(item.record)
                continue
            bar.set_postfix_str(f"running cell {index}/{total}: {item.cell.name}")
            attempt = _attempt(item, settings, run_cell)
            outcome.records.append(_account(item, attempt, settings, outcome, bar, index, total))
    return outcome


#: What running one cell gave: its record (None: it left none), whether it ran, and the holder
#: of its lock when another benchmark runs it.
Attempt = tuple[dict[str, Any] | None, bool, str | None]


def _attempt(item: PlannedCell, settings: CellSettings, run_cell: CellRunner) -> Attempt:
    """Run one planned cell under its lock (in any thread)."""
    try:
        record, ran = _run_locked(item, settings, run_cell)
    except CellBusy as busy:
        return None, False, busy.holder
    except OSError as exc:
        raise MLRBenchError(os_error_message(item.cell_dir, exc)) from None
    return record, ran, None


def _account(
    item: PlannedCell,
    attempt: Attempt,
    settings: CellSettings,
    outcome: MatrixOutcome,
    bar: Any,
    index: int,
    total: int,
) -> dict[str, Any]:
    """The record of a finished attempt, counted in ``outcome`` and shown (main thread)."""
    cell, cell_dir = item.cell, item.cell_dir
    record, ran, holder = attempt
    if holder is not None:
        record = busy_record(cell, cell_dir, holder)
        outcome.busy.append(cell.name)
        bar.write(f"mlr-bench benchmark: cell {cell.name} is being run by {holder}; skipped")
    if ran:
        outcome.executed.append(cell.name)
        if record is None:
            record = failed_record(cell, cell_dir)
            outcome.failed.append(cell.name)
    assert record is not None
    if cell.track != REFERENCE:  # failed and busy records too
        record = {**record, "track": cell.track}
    if cell.backbone is not None and record.get("status") != "ok":
        record = {**record, "backbone_axis": cell.backbone}
        record.setdefault("backbone", cell.backbone)
    if record.get("status") != "ok":  # a finished cell records the protocol it ran
        record.setdefault("protocol", settings.protocol)
    bar.write(status_line(index, total, record))
    if record["status"] != "running":
        bar.update(1)
    return record


def worker_environments(workers: int) -> list[dict[str, str]]:
    """Each parallel worker's environment: one CPU thread (``OMP_NUM_THREADS=1``, so N workers
    share N cores without oversubscribing them) and, with GPUs, one device each, round-robin
    over the visible ones (``CUDA_VISIBLE_DEVICES``)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    devices = [d for d in visible.split(",") if d.strip()] if visible is not None else []
    if visible is None:
        try:
            import torch

            devices = [str(i) for i in range(torch.cuda.device_count())]
        except Exception:
            devices = []
    envs = []
    for slot in range(workers):
        env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        if devices:
            env["CUDA_VISIBLE_DEVICES"] = devices[slot % len(devices)]
        envs.append(env)
    return envs


def _run_as_jobs(
    plan: Sequence[PlannedCell], settings: CellSettings, out: Path, bar: Any, outcome: MatrixOutcome
) -> MatrixOutcome:
    """Pending cells as one submitit array job (``launcher.py``); records in plan order."""
    from mlr_bench.benchmark.launcher import SlurmOptions, submit_cells, wait_for_jobs

    total = len(plan)
    records: list[dict[str, Any] | None] = [item.record for item in plan]
    for index, item in enumerate(plan, start=1):
        if item.record is not None:
            bar.write(status_line(index, total, item.record, note="  (done before: skipped)"))
    todo = [i for i, item in enumerate(plan) if item.record is None]
    if todo:
        options = settings.slurm or SlurmOptions()
        folder = out / ".submitit"
        jobs = submit_cells([plan[i] for i in todo], settings, settings.launcher, folder, options)
        bar.write(
            f"mlr-bench benchmark: {len(jobs)} cell(s) submitted ({settings.launcher}); job "
            f"logs in {folder}"
        )
        bar.set_postfix_str(f"{len(jobs)} jobs submitted")

        def done(k: int, attempt: Attempt) -> None:
            i = todo[k]
            records[i] = _account(plan[i], attempt, settings, outcome, bar, i + 1, total)

        wait_for_jobs(jobs, done)
    outcome.records.extend(r for r in records if r is not None)
    return outcome


def _run_parallel(
    plan: Sequence[PlannedCell],
    settings: CellSettings,
    run_cell: CellRunner,
    bar: Any,
    outcome: MatrixOutcome,
) -> MatrixOutcome:
    """Up to ``settings.workers`` cells at once, each from a worker thread with its own slot
    environment; records keep the plan's order. Ctrl-C/SIGTERM land in this (main) thread,
    which tells every worker to stop: each kills its cell's process group."""
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
    from queue import SimpleQueue

    total = len(plan)
    records: list[dict[str, Any] | None] = [item.record for item in plan]
    for index, item in enumerate(plan, start=1):
        if item.record is not None:
            bar.write(status_line(index, total, item.record, note="  (done before: skipped)"))
    slots: SimpleQueue[dict[str, str]] = SimpleQueue()
    for env in worker_environments(settings.workers):
        slots.put(env)

    def work(item: PlannedCell) -> Attempt:
        env = slots.get()
        try:
            with slot_environment(env):
                return _attempt(item, settings, run_cell)
        finally:
            slots.put(env)

    todo = [(i, item) for i, item in enumerate(plan) if item.record is None]
    clear_stop()
    pool = ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="cell")
    try:
        futures = {pool.submit(work, item): (i, item) for i, item in todo}
        bar.set_postfix_str(f"{min(len(todo), settings.workers)} cells running")
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            for future in done:
                i, item = futures[future]
                records[i] = _account(item, future.result(), settings, outcome, bar, i + 1, total)
            running = f"{min(len(pending), settings.workers)} cells running"
            if done:  # only on a change: each update redraws the bar
                bar.set_postfix_str(running)
    except BaseException:
        request_stop()  # every worker kills its cell; finished cells are kept
        pool.shutdown(wait=True, cancel_futures=True)
        clear_stop()
        raise
    pool.shutdown(wait=True)
    outcome.records.extend(r for r in records if r is not None)
    return outcome


def _run_locked(
    item: PlannedCell, settings: CellSettings, run_cell: CellRunner
) -> tuple[dict[str, Any] | None, bool]:
    """Under the cell's lock: take a result another run finished meanwhile with the same
    settings, else clear the folder, record the settings (``cell.json``) and run the cell."""
    cell, cell_dir = item.cell, item.cell_dir
    with cell_lock(cell_dir):
        record = load_result(cell_dir)
        if record is not None and _stored_problem(record, item.settings) is None:
            return record, False
        clear_cell(cell_dir)
        atomic_write_json(
            cell_dir / CELL,
            {
                "cell": cell.name,
                "settings": item.settings,
                "fingerprint": item.fingerprint,
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "benchmark_pid": os.getpid(),
            },
        )
        run_cell(cell, cell_dir, cell_args(cell, cell_dir, settings))
        return load_result(cell_dir), True


def os_error_message(path: Path, exc: OSError) -> str:
    """A file-system failure (full disk, read-only folder, a file in the way) as one line."""
    where = exc.filename or path
    reason = exc.strerror or str(exc)
    return (
        f"cannot write {where}: {reason}. Finished cells are kept; free space or fix the "
        "folder, then run the same command again to resume."
    )
