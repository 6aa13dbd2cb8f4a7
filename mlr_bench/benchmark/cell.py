"""Run one benchmark cell (``mlr-bench train``) and turn it into a result record.

Used in-process by the runner, or in a child process through ``mlr_bench.benchmark.worker``
(the default: one cell's crash, leaked memory or Ctrl-C handling cannot touch the others, and
its peak memory is its own). A cell is done only once ``result.json`` is written, atomically,
as the very last step; a failure leaves ``error.txt`` instead.
"""

from __future__ import annotations

import contextlib
import json
import logging
import resource
import signal
import sys
import time
import traceback
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from mlr_bench.benchmark.matrix import Cell
from mlr_bench.benchmark.process import terminating
from mlr_bench.errors import MLRBenchError
from mlr_bench.provenance import UNKNOWN
from mlr_bench.runs import atomic_write_json, atomic_write_text

RESULT = "result.json"
#: The cell's settings and fingerprint, written before it starts; copied into result.json.
CELL = "cell.json"
ERROR = "error.txt"
LOG = "log.txt"
TAIL_LINES = 40


class CellError(MLRBenchError):
    """A cell ran but did not produce what the benchmark needs (e.g. no test results)."""


# ---- memory ---------------------------------------------------------------------------------
def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (Linux ``clear_refs``); False where unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """Peak resident memory of this process since start or the last reset, in MB."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def _reset_cuda_peak() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def _cuda_peak_mb() -> float:
    import torch

    return torch.cuda.max_memory_allocated() / 2**20


# ---- one cell ---------------------------------------------------------------------------------
@contextlib.contextmanager
def _watch_ctrl_c() -> Iterator[list[bool]]:
    """Note a Ctrl-C (then raise KeyboardInterrupt as usual), so that a cell stopped by the
    user is told apart from a failing one; the previous handler is restored afterwards."""
    pressed: list[bool] = []

    def handler(signum: int, frame: Any) -> None:
        pressed.append(True)
        signal.default_int_handler(signum, frame)

    try:
        previous = signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield pressed
        return
    try:
        yield pressed
    finally:
        signal.signal(signal.SIGINT, previous)


def run_cli_stoppable(args: Sequence[str]) -> Any:
    """``run_cli(args)``, where a stop from outside (Ctrl-C, SIGTERM: Lightning turns them into
    ``SystemExit(1)``) is raised as KeyboardInterrupt again, told apart from a user error."""
    from mlr_bench.cli import run_cli

    with _watch_ctrl_c() as pressed:
        try:
            return run_cli(list(args))
        except SystemExit:
            if pressed or terminating():
                raise KeyboardInterrupt from None
            raise


def run_cell_here(cell: Cell, args: Sequence[str]) -> dict[str, Any] | None:
    """Run ``mlr-bench <args>`` in this process; the cell's record, or None on a DDP rank > 0.

    Train time is everything before testing starts (data, feature caches, prior stages, fit);
    eval time is the test stage on the selected checkpoint.
    """
    from mlr_bench.benchmark.probe import CellProbe
    from mlr_bench.eval.evaluator import Evaluator

    reset_peak_rss()
    _reset_cuda_peak()
    start = time.perf_counter()
    cli = run_cli_stoppable(args)
    trainer = getattr(cli, "trainer", None)
    if trainer is None:
        raise CellError(f"cell {cell.name}: `mlr-bench {args[0]}` did not run a Trainer")
    if not trainer.is_global_zero:
        return None
    probe = next((c for c in trainer.callbacks if isinstance(c, CellProbe)), None)
    evaluator = next((c for c in trainer.callbacks if isinstance(c, Evaluator)), None)
    test = evaluator.results.get("test") if evaluator is not None else None
    if probe is None or probe.test_start is None or not test or "path" not in test:
        raise CellError(
            f"cell {cell.name}: no test results were written (expected results_test.json "
            "from the evaluator after fit + test)"
        )
    results_file = Path(test["path"])
    results = json.loads(results_file.read_text(encoding="utf-8"))  # the file is the record
    cuda = probe.cuda
    return {
        "method": cell.method,
        "dataset": cell.dataset,
        "seed": cell.seed,
        "backbone": ((results.get("method") or {}).get("init_args") or {}).get("backbone"),
        "weights": results.get("weights", UNKNOWN),  # random weights: rehearsal only
        "protocol": (results.get("protocol") or {}).get("label", UNKNOWN),
        **budget_columns(results.get("budget")),
        "status": "ok",
        "metrics": results["metrics"],
        "per_class_ap": results["per_class_ap"],
        "train_time_s": probe.test_start - start,
        "eval_time_s": probe.eval_seconds,
        "peak_memory_mb": _cuda_peak_mb() if cuda else peak_rss_mb(),
        "memory": "cuda_max_allocated" if cuda else "cpu_max_rss",
        "run_dir": str(results_file.parent),
        "results_file": str(results_file),
        "args": list(args),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def budget_columns(budget: dict[str, Any] | None) -> dict[str, Any]:
    """The benchmark's budget columns from a results file's ``budget`` (None: not metered)."""
    budget = budget or {}
    reference = budget.get("reference") or {}
    return {
        "optimizer_steps": budget.get("optimizer_steps"),
        "reference_steps": reference.get("optimizer_steps"),
        "steps_x_reference": budget.get("ratio_to_reference"),
        "train_device_s": budget.get("device_s"),
        "budget": budget or None,
    }


def describe_failure(cell: Cell, exc: BaseException, log_file: Path | None = None) -> str:
    """``error.txt``: the error on the first line, then the traceback and log tails.

    A ``SystemExit`` is the CLI's own report of a user error: its message is in the log, so
    the first line quotes the log's last ``error:`` line and the traceback is left out.
    """
    log = log_file.read_text(errors="replace") if log_file and log_file.is_file() else ""
    summary = f"{type(exc).__name__}: {exc}".strip()
    parts = []
    if isinstance(exc, SystemExit):
        said = [line.strip() for line in log.splitlines() if "error:" in line]
        summary = f"exit code {exc.code}" + (f": {said[-1]}" if said else "")
    else:
        trace = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        parts += ["", "traceback (last lines):", tail(trace)]
    if log:
        parts += ["", f"log tail ({log_file}):", tail(log)]
    return "\n".join([f"cell {cell.name} failed: {summary}", *parts]) + "\n"


def tail(text: str, lines: int = TAIL_LINES) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


@contextlib.contextmanager
def output_to(log_file: Path) -> Iterator[None]:
    """Send this process's output to the cell's log (in-process runs): ``print``s and the
    ``logging`` handlers that write to the console (Lightning's bound it at import)."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    consoles = {id(sys.stdout), id(sys.stderr), id(sys.__stdout__), id(sys.__stderr__)}
    loggers = [logging.getLogger(), *logging.root.manager.loggerDict.values()]
    handlers = {
        h
        for lg in loggers
        if isinstance(lg, logging.Logger)
        for h in lg.handlers
        if isinstance(h, logging.StreamHandler) and id(h.stream) in consoles
    }
    with (
        log_file.open("a", encoding="utf-8") as f,
        contextlib.redirect_stdout(f),
        contextlib.redirect_stderr(f),
    ):
        saved = [(h, h.setStream(f)) for h in handlers]
        try:
            yield
        finally:
            for handler, stream in saved:
                handler.setStream(stream)


def run_and_record(cell: Cell, cell_dir: Path, args: Sequence[str]) -> dict[str, Any] | None:
    """Run a cell here and write ``result.json`` (success) or ``error.txt`` (failure).

    Returns the record, or None when it failed or on a DDP rank > 0. KeyboardInterrupt is
    re-raised: the matrix stops and the cell stays not-done for the next (resumed) run.
    """
    log_file = cell_dir / LOG
    try:
        with output_to(log_file):
            record = run_cell_here(cell, args)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # SystemExit too: the CLI's user errors end that way
        if terminating():  # stopped from outside: not this cell's failure
            raise KeyboardInterrupt from None
        atomic_write_text(cell_dir / ERROR, describe_failure(cell, exc, log_file))
        return None
    if record is not None:
        write_result(cell_dir, record)
    return record


def write_result(cell_dir: Path, record: dict[str, Any]) -> None:
    """``result.json``, last and atomically, carrying the settings the cell was started with
    (its ``cell.json``): a later benchmark with other settings then cannot take it for its
    own. A cell whose run left ``error.txt`` (e.g. another DDP rank failed) is not done."""
    try:
        started = json.loads((cell_dir / CELL).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        started = {}
    if isinstance(started, dict):
        record = {**record, **{k: started[k] for k in ("settings", "fingerprint") if k in started}}
    if (cell_dir / ERROR).exists():
        return
    atomic_write_json(cell_dir / RESULT, record)
