"""The callback every sweep trial runs with: it records val/mAP and forbids the test stage.

A trial is chosen on validation only. The probe keeps the best ``val/mAP`` of the fit's
validation epochs (sanity checks excluded) and raises if anything starts testing in a trial's
Trainer, so a sweep cannot read a test metric even by a misconfigured recipe or argument.
"""

from __future__ import annotations

import math
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer

CLASS_PATH = "mlr_bench.sweep.probe.TrialProbe"
MONITOR = "val/mAP"


class ForbiddenTestStage(RuntimeError):
    """A sweep trial tried to run the test stage."""


class TrialProbe(Callback):
    """Per-epoch ``val/mAP`` of the fit; ``best`` is what the sweep maximises."""

    def __init__(self) -> None:
        self.history: list[float] = []

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get(MONITOR)
        if value is not None:
            self.history.append(float(value))

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        raise ForbiddenTestStage(
            "a sweep trial never runs the test stage: trials are chosen on validation mAP only"
        )

    @property
    def best(self) -> float | None:
        """Best finite val/mAP over the epochs (None: no validation ran or all were NaN)."""
        finite = [v for v in self.history if math.isfinite(v)]
        return max(finite) if finite else None

    @property
    def best_epoch(self) -> int | None:
        best = self.best
        return None if best is None else self.history.index(best)

    def state(self) -> dict[str, Any]:
        return {"val_mAP": self.best, "best_epoch": self.best_epoch, "history": self.history}
