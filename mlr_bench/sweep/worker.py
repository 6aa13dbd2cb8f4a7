"""Child-process entry of a sweep trial: ``python -m mlr_bench.sweep.worker DIR N -- ARGS``.

The sweep's counterpart of :mod:`mlr_bench.benchmark.worker`: its stdout and stderr are the
trial's ``log.txt``; it writes ``trial.json`` (done) or ``error.txt`` (failed), exits with the
sweep that started it (even a SIGKILLed one) and, under DDP, only rank 0 writes.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from mlr_bench.benchmark.process import die_with_parent
from mlr_bench.runs import atomic_write_json
from mlr_bench.sweep.trial import RESULT, TrialJob, run_trial_here, write_failure


def main(argv: Sequence[str] | None = None) -> int:
    """Exit code 0 (done), 1 (failed) or 130 (interrupted)."""
    parser = argparse.ArgumentParser(prog="python -m mlr_bench.sweep.worker")
    parser.add_argument("trial_dir", type=Path)
    parser.add_argument("number", type=int)
    parser.add_argument("args", nargs=argparse.REMAINDER)
    die_with_parent()
    ns = parser.parse_args(argv)
    args = ns.args[1:] if ns.args[:1] == ["--"] else ns.args
    from mlr_bench.cli import _quiet_known_warnings

    _quiet_known_warnings()
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    job = TrialJob(ns.number, ns.trial_dir, tuple(args))
    try:
        record = run_trial_here(job)
    except KeyboardInterrupt:
        return 130
    except BaseException as exc:
        sys.stdout.flush()
        sys.stderr.flush()
        write_failure(job, exc)
        return 1
    if record is not None:
        atomic_write_json(ns.trial_dir / RESULT, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
