"""Run one sweep trial (``mlr-bench fit`` with the trial's hyperparameters) and read its score.

Trials run like benchmark cells: by default in a child process (``mlr_bench.sweep.worker``)
in its own process group that dies with the sweep (:mod:`mlr_bench.benchmark.process`), with
output to the trial's ``log.txt``; ``in-process`` for quick local runs and tests. A trial is
done once ``trial.json`` is written, atomically, as the last step; a failure leaves
``error.txt`` (the benchmark's format) instead. Only ``fit`` runs: no test stage, no test
metric (:class:`~mlr_bench.sweep.probe.TrialProbe` makes sure).
"""

from __future__ import annotations

import json
import shutil
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlr_bench.benchmark.cell import ERROR, LOG, describe_failure, output_to
from mlr_bench.benchmark.process import run_cell_process, terminating
from mlr_bench.errors import MLRBenchError
from mlr_bench.runs import atomic_write_json, atomic_write_text

RESULT = "trial.json"


@dataclass(frozen=True)
class TrialJob:
    """One trial to run: its folder and its ``mlr-bench fit`` arguments."""

    number: int
    trial_dir: Path
    args: tuple[str, ...]

    @property
    def name(self) -> str:  # what describe_failure calls it
        return f"trial {self.number}"


#: ``job -> None``: runs the trial, leaving ``trial.json`` or ``error.txt`` in its folder.
TrialRunner = Callable[[TrialJob], None]


class TrialError(MLRBenchError):
    """A trial ran but gave no validation score."""


def run_trial_here(job: TrialJob) -> dict[str, Any] | None:
    """Run the trial's ``fit`` in this process; its record, or None on a DDP rank > 0."""
    from mlr_bench.benchmark.cell import run_cli_stoppable
    from mlr_bench.budget import budget_record
    from mlr_bench.runs import run_dir
    from mlr_bench.sweep.probe import TrialProbe

    cli = run_cli_stoppable(job.args)
    trainer = getattr(cli, "trainer", None)
    if trainer is None:
        raise TrialError(f"{job.name}: `mlr-bench {job.args[0]}` did not run a Trainer")
    if not trainer.is_global_zero:
        return None
    probe = next((c for c in trainer.callbacks if isinstance(c, TrialProbe)), None)
    if probe is None or probe.best is None:
        seen = "no val/mAP was logged" if probe is None or not probe.history else "val/mAP NaN"
        raise TrialError(f"{job.name}: no validation score ({seen}); nothing to choose on")
    budget = budget_record(getattr(cli.model, "budget_stages", None), None, None) or {}
    checkpoint = trainer.checkpoint_callback
    return {
        "number": job.number,
        **probe.state(),
        "optimizer_steps": budget.get("optimizer_steps"),
        "train_wall_s": budget.get("wall_s"),
        "run_dir": str(run_dir(trainer)),
        "best_checkpoint": getattr(checkpoint, "best_model_path", None) or None,
        "args": list(job.args),
    }


def write_failure(job: TrialJob, exc: BaseException) -> None:
    """``error.txt`` in the benchmark's format, saying "trial" where it says "cell"."""
    text = describe_failure(job, exc, job.trial_dir / LOG)  # type: ignore[arg-type]
    atomic_write_text(job.trial_dir / ERROR, text.removeprefix("cell "))


def run_in_process(job: TrialJob) -> None:
    """The trial in this process, output to its log; KeyboardInterrupt passes through."""
    try:
        with output_to(job.trial_dir / LOG):
            record = run_trial_here(job)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # SystemExit too: the CLI's user errors end that way
        if terminating():
            raise KeyboardInterrupt from None
        write_failure(job, exc)
        return
    if record is not None:
        atomic_write_json(job.trial_dir / RESULT, record)


def run_in_subprocess(job: TrialJob) -> None:
    """``python -m mlr_bench.sweep.worker`` in its own process group (killed with the sweep)."""
    command = [sys.executable, "-m", "mlr_bench.sweep.worker", str(job.trial_dir)]
    command += [str(job.number), "--", *job.args]
    with (job.trial_dir / LOG).open("a", encoding="utf-8") as log:
        code = run_cell_process(command, log)
    if code in (130, -signal.SIGINT):
        raise KeyboardInterrupt
    if read_trial(job.trial_dir) is None and not (job.trial_dir / ERROR).is_file():
        write_failure(job, ChildProcessError(f"trial process exited with code {code}"))


RUNNERS: dict[str, TrialRunner] = {"subprocess": run_in_subprocess, "in-process": run_in_process}


def prepare_dir(trial_dir: Path) -> None:
    """A fresh folder for the trial (a leftover of a deleted study's trial is removed)."""
    if trial_dir.exists():
        shutil.rmtree(trial_dir) if trial_dir.is_dir() else trial_dir.unlink()
    trial_dir.mkdir(parents=True)


def read_trial(trial_dir: Path) -> dict[str, Any] | None:
    """The trial's record, or None when it is not done (or failed: ``error.txt`` wins)."""
    if (trial_dir / ERROR).exists():
        return None
    try:
        record = json.loads((trial_dir / RESULT).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("val_mAP") is not None else None


def failure_text(trial_dir: Path) -> str:
    """First line of the trial's ``error.txt`` (without the trial prefix)."""
    try:
        first = (trial_dir / ERROR).read_text(encoding="utf-8").splitlines()[0]
    except (OSError, IndexError):
        return "failed without an error report"
    return first.split(" failed: ", 1)[-1]
