"""A callback that measures one benchmark cell from inside its Trainer.

The benchmark adds it to every cell (``--trainer.callbacks+=...``) because only the Trainer
knows when testing starts and ends, where the run directory is and which device was used.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer

from mlr_bench.runs import run_dir

CLASS_PATH = "mlr_bench.benchmark.probe.CellProbe"


class CellProbe(Callback):
    """Records test start/end times, the run directory and whether CUDA was used."""

    def __init__(self) -> None:
        self.test_start: float | None = None
        self.test_end: float | None = None
        self.run_dir: Path | None = None
        self.cuda = False

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self.cuda = self.cuda or trainer.strategy.root_device.type == "cuda"

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.test_start = time.perf_counter()

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.test_end = time.perf_counter()
        self.run_dir = run_dir(trainer)

    @property
    def eval_seconds(self) -> float | None:
        """Wall time of the test stage (None when no test ran)."""
        if self.test_start is None or self.test_end is None:
            return None
        return self.test_end - self.test_start

    def state(self) -> dict[str, Any]:
        return {"eval_seconds": self.eval_seconds, "run_dir": str(self.run_dir), "cuda": self.cuda}
