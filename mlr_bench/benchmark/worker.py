"""Child-process entry of a benchmark cell: ``python -m mlr_bench.benchmark.worker``.

Kept out of the package's imports so that ``-m`` runs it fresh. Its stdout and stderr are the
cell's ``log.txt``; it writes ``result.json`` (done) or ``error.txt`` (failed) into the cell.
Under DDP, Lightning re-launches this same command for the other ranks; only rank 0 writes.
It exits with the benchmark that started it, even a SIGKILLed one (``process.die_with_parent``).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from mlr_bench.benchmark.cell import ERROR, LOG, describe_failure, run_cell_here, write_result
from mlr_bench.benchmark.matrix import REFERENCE, Cell
from mlr_bench.benchmark.process import die_with_parent
from mlr_bench.runs import atomic_write_text


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m mlr_bench.benchmark.worker DIR METHOD DATA SEED [--track T] [--backbone B]
    -- ARGS``; exit code 0 (done), 1 (failed) or 130 (interrupted)."""
    parser = argparse.ArgumentParser(prog="python -m mlr_bench.benchmark.worker")
    parser.add_argument("cell_dir", type=Path)
    parser.add_argument("method")
    parser.add_argument("dataset")
    parser.add_argument("seed", type=int)
    parser.add_argument("--track", default=REFERENCE, help="the cell's track (tuned cells)")
    parser.add_argument("--backbone", help="the cell's --backbones value")
    die_with_parent()  # never outlive the benchmark, even one killed with SIGKILL
    argv = list(sys.argv[1:] if argv is None else argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    ns, args = parser.parse_args(argv[:cut]), argv[cut + 1 :]
    from mlr_bench.cli import _quiet_known_warnings

    _quiet_known_warnings()
    # The cell's argv is given to the CLI explicitly, while sys.argv (kept for DDP re-launch)
    # holds the worker's own: an expected combination here.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    cell = Cell(ns.method, ns.dataset, ns.seed, ns.track, ns.backbone)
    try:
        record = run_cell_here(cell, args)
    except KeyboardInterrupt:
        return 130
    except BaseException as exc:  # our stdout/stderr are the cell's log: flush, then quote it
        sys.stdout.flush()
        sys.stderr.flush()
        atomic_write_text(ns.cell_dir / ERROR, describe_failure(cell, exc, ns.cell_dir / LOG))
        return 1
    if record is not None:
        write_result(ns.cell_dir, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
