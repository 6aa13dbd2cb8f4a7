"""Cells as cluster jobs: ``mlr-bench benchmark --launcher slurm`` through submitit.

Each pending cell becomes one task of a SLURM array job; the task runs the cell exactly as the
local benchmark does (under the cell's lock, in its own process, writing ``result.json`` last),
so the folder's resumable semantics hold: a re-run skips finished cells and cells whose lock a
running job holds. The benchmark waits for the jobs, polling, and collects their records in
the matrix's order. Ctrl-C cancels the jobs it submitted (finished cells are kept). Jobs do not
die with the benchmark process otherwise: a killed benchmark leaves them running, and running
the same command again collects them (or skips them while they hold their locks).

``--launcher submitit-local`` runs the same path with submitit's local executor (jobs as local
processes): what the tests use, and a way to try a cluster setup on one machine.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlr_bench.errors import MLRBenchError

LAUNCHERS = ("local", "slurm", "submitit-local")
#: Seconds between polls of the submitted jobs.
POLL_S = 2.0


@dataclass
class SlurmOptions:
    """``--slurm.*``: where and how long each cell's job runs (None: the cluster default)."""

    partition: str | None = None
    time_min: int = 240
    gpus_per_cell: int = 0
    cpus_per_cell: int = 1
    mem_gb: int | None = None
    parallelism: int = 64

    def parameters(self) -> dict[str, Any]:
        """submitit ``update_parameters`` arguments (``slurm_*`` ones only reach SLURM)."""
        params: dict[str, Any] = {
            "name": "mlr-bench",
            "timeout_min": self.time_min,
            "gpus_per_node": self.gpus_per_cell,
            "cpus_per_task": self.cpus_per_cell,
            "slurm_array_parallelism": self.parallelism,
        }
        if self.mem_gb is not None:
            params["mem_gb"] = self.mem_gb
        if self.partition:
            params["slurm_partition"] = self.partition
        return params


def run_planned_cell(item: Any, settings: Any) -> Any:
    """The job's body: one planned cell, in its own process (``run_in_subprocess``)."""
    from mlr_bench.benchmark.runner import RUNNERS, _attempt

    return _attempt(item, settings, RUNNERS["subprocess"])


def executor_for(launcher: str, folder: Path, options: SlurmOptions) -> Any:
    """A submitit executor for ``launcher``, with a clear error when submitit is missing."""
    try:
        import submitit
    except ImportError:
        raise MLRBenchError(
            f"--launcher {launcher} needs submitit: pip install 'mlr-bench[slurm]' (or "
            "pip install submitit)"
        ) from None
    cluster = "slurm" if launcher == "slurm" else "local"
    try:
        executor = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
    except RuntimeError as exc:  # e.g. no sbatch on this machine
        raise MLRBenchError(f"--launcher {launcher}: {exc}") from None
    executor.update_parameters(**options.parameters())
    return executor


def submit_cells(
    items: Sequence[Any], settings: Any, launcher: str, folder: Path, options: SlurmOptions
) -> list[Any]:
    """One array job over ``items`` (planned cells): its jobs, in the items' order."""
    executor = executor_for(launcher, folder, options)
    return executor.map_array(run_planned_cell, list(items), [settings] * len(items))


def wait_for_jobs(jobs: Sequence[Any], on_done: Any) -> None:
    """Poll ``jobs`` until all are done, calling ``on_done(index, attempt)`` as each ends; a
    job that failed outside the cell (node failure, timeout) gives ``(None, True, None)`` (a
    failed cell). On Ctrl-C/SIGTERM: cancel the unfinished jobs, then re-raise."""
    pending = dict(enumerate(jobs))
    try:
        while pending:
            for index, job in list(pending.items()):
                if not job.done():
                    continue
                del pending[index]
                try:
                    attempt = job.result()
                except Exception:
                    attempt = (None, True, None)
                on_done(index, attempt)
            if pending:
                time.sleep(POLL_S)
    except BaseException:
        for job in pending.values():
            with contextlib.suppress(Exception):  # best effort while stopping
                job.cancel(check=False)
        raise
