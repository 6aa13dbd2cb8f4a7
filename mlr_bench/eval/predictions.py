"""``predict`` output: one CSV of raw scores per evaluation image, exact under DDP."""

from __future__ import annotations

import csv
import io

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from mlr_bench.eval.evaluator import display_class_names, gather_unique
from mlr_bench.runs import atomic_write_text, run_dir


class PredictionWriter(Callback):
    """Writes ``predictions.csv`` (index, then one raw score column per class) in the run dir."""

    def __init__(self, filename: str = "predictions.csv") -> None:
        self.filename = filename
        self._rows: list[dict[str, torch.Tensor]] = []
        self.path: str | None = None

    def on_predict_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._rows = []

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._rows.append({"index": outputs["index"].long(), "scores": outputs["scores"].float()})

    def on_predict_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self._rows:
            return
        index = torch.cat([r["index"] for r in self._rows])
        scores = torch.cat([r["scores"] for r in self._rows])
        index, scores, _ = gather_unique(index, scores, torch.zeros_like(index), trainer.world_size)
        path = run_dir(trainer) / self.filename  # collective: every rank
        self.path = str(path)
        if trainer.is_global_zero:
            buffer = io.StringIO()
            writer = csv.writer(buffer)
            writer.writerow(["index", *display_class_names(trainer, pl_module)])
            for i, row in zip(index.tolist(), scores.tolist(), strict=True):
                writer.writerow([i, *(f"{v:.6g}" for v in row)])
            atomic_write_text(path, buffer.getvalue())
