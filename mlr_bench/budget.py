"""Training budgets in the open: what each fit spent, and what the reference recipe spends.

A comparison of methods is only as fair as their budgets. Every fit run through mlr-bench is
metered by :class:`BudgetMeter` (optimizer steps, training samples seen per data kind, epochs,
wall-clock and device seconds); a method trained in stages (PVP) records each stage, a cached
stage with the budget it was trained with. ``results_<stage>.json`` carries the budget, and,
where the reference recipe of the method on that dataset is known, that recipe's optimizer
steps and the ratio (:data:`REFERENCE_STEPS`, each with how it was derived).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer


def _batch_sizes(batch: Any) -> dict[str, int]:
    """Samples in a training batch, per data kind (``{kind: batch}`` batches of several kinds
    from a CombinedLoader), else under ``"train"``."""
    if isinstance(batch, Mapping) and batch and all(isinstance(v, Mapping) for v in batch.values()):
        return {str(k): sum(_batch_sizes(v).values()) for k, v in batch.items()}
    tensors = batch.values() if isinstance(batch, Mapping) else batch
    if isinstance(tensors, torch.Tensor):
        return {"train": len(tensors)}
    for value in tensors if isinstance(tensors, list | tuple) else list(tensors):
        if isinstance(value, torch.Tensor) and value.ndim > 0:
            return {"train": len(value)}
    return {"train": 0}


class BudgetMeter(Callback):
    """Meters one fit into ``pl_module.budget_stages[name]``: optimizer steps, samples seen
    per kind (this rank's count x world size: Lightning's distributed sampler gives every rank
    the same number of batches), epochs, wall seconds and device seconds (wall x devices)."""

    def __init__(self, name: str = "train") -> None:
        self.name = name
        self._start = 0.0
        self._steps = 0
        self._samples: dict[str, int] = {}

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start, self._steps, self._samples = time.perf_counter(), trainer.global_step, {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        for kind, n in _batch_sizes(batch).items():
            self._samples[kind] = self._samples.get(kind, 0) + n

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        wall = time.perf_counter() - self._start
        # a module with nothing to train (zero-shot) runs Lightning's mock optimizer: 0 steps
        trains = any(p.requires_grad for p in pl_module.parameters())
        record = {
            "optimizer_steps": int(trainer.global_step - self._steps) if trains else 0,
            "samples_seen": {k: v * trainer.world_size for k, v in self._samples.items()},
            "epochs": int(trainer.current_epoch),
            "batch_size": getattr(trainer.datamodule, "batch_size", None),
            "wall_s": round(wall, 3),
            "device_s": round(wall * trainer.world_size, 3),
            "devices": trainer.world_size,
        }
        stages = getattr(pl_module, "budget_stages", None)
        if not isinstance(stages, dict):
            stages = {}
        stages[self.name] = record
        pl_module.budget_stages = stages


#: Optimizer steps of the reference recipes, per (method, dataset): {stage: steps} with the
#: derivation. Dassl drops the last incomplete batch, so steps per epoch = floor(texts / batch);
#: texts = the corpus kept after labelling plus the template augmentation (C classes x
#: (K - 1 + 80) sentences for K template copies).
REFERENCE_STEPS: dict[tuple[str, str], dict[str, Any]] = {
    ("taidpt", "voc2007"): {
        "stages": {"train": 132 * 20},
        "derivation": "66,087 captions kept (reference logs) + 20 x 89 templates = 67,867 texts; "
        "batch 512 -> 132 steps/epoch; 20 epochs (configs/trainers/Caption_distill_double)",
    },
    ("taidpt", "coco2014"): {
        "stages": {"train": 210 * 20},
        "derivation": "100,543 captions kept (reference logs) + 80 x 89 templates = 107,663 "
        "texts; batch 512 -> 210 steps/epoch; 20 epochs",
    },
    ("taidpt", "nuswide"): {
        "stages": {"train": 131 * 20},
        "derivation": "60,364 narratives after balancing (reference logs) + 81 x 89 templates = "
        "67,573 texts; batch 512 -> 131 steps/epoch; 20 epochs",
    },
    ("comc", "coco2014"): {
        "stages": {"train": 4200},
        "derivation": "the released COCO checkpoint's Adam step count: 4,200 after 20 epochs "
        "(210 steps/epoch at batch 512, i.e. about 100.4k-100.9k sentences)",
    },
    ("pvp", "coco2014"): {
        "stages": {"pretrain": 1051 * 41, "train": 434 * 20},
        "derivation": "stage 1: 500,000 sentences (pretrain_50w_coco_voc.txt) + 80 x 479 "
        "templates = 538,320 texts, batch 512 -> 1,051 steps/epoch, 41 epochs (the hand-off); "
        "stage 2: 200,000 sentences + 80 x 279 templates = 222,320 texts -> 434 steps/epoch, "
        "20 epochs; assumes every sentence names a COCO class",
    },
    ("t2ipal", "coco2014"): {
        "stages": {"train": 210 * 20},
        "derivation": "reconstruction (the T2I-PAL paper releases no code): TaI-DPT's protocol, "
        "which mlr-bench's T2I-PAL follows: 210 text batches of 512 per epoch, 20 epochs (the "
        "generated images cycle alongside the text)",
    },
    ("zeroshot", "voc2007"): {"stages": {}, "derivation": "no training"},
    ("zeroshot", "coco2014"): {"stages": {}, "derivation": "no training"},
    ("zeroshot", "nuswide"): {"stages": {}, "derivation": "no training"},
    ("tagclip", "voc2007"): {"stages": {}, "derivation": "no training"},
    ("tagclip", "coco2014"): {"stages": {}, "derivation": "no training"},
    ("tagclip", "nuswide"): {"stages": {}, "derivation": "no training"},
}


#: Datasets without reference recipes of their own, and whose they borrow: the world is sized
#: like a small COCO (multi-object scenes, captions and LLM-style sentences).
REFERENCE_ANCHORS: dict[str, str] = {"world": "coco2014"}


def reference_for(method: str, dataset: str) -> tuple[dict[str, Any] | None, str]:
    """The reference recipe's budget of ``method`` on ``dataset`` (or on the dataset it is
    anchored to, :data:`REFERENCE_ANCHORS`), and the dataset it belongs to."""
    anchor = REFERENCE_ANCHORS.get(dataset, dataset)
    reference = REFERENCE_STEPS.get((method, anchor))
    return reference, anchor


def budget_record(
    stages: Mapping[str, Mapping[str, Any]] | None,
    method: str | None,
    dataset: str | None,
    policy: Mapping[str, Any] | None = None,
) -> dict[str, Any] | None:
    """``results.json``'s ``budget``: the stages, their total steps and, where known, the
    reference recipe's steps and the ratio (None when nothing was metered: e.g. ``test``
    of a checkpoint trained by another process)."""
    if not stages:
        return None
    total = sum(int(s.get("optimizer_steps", 0)) for s in stages.values())
    reference, anchor = reference_for(str(method), str(dataset))
    if reference is not None and anchor != dataset:
        reference = {**reference, "dataset": anchor}
    ref_total = sum(reference["stages"].values()) if reference else None
    return {
        "stages": {k: dict(v) for k, v in stages.items()},
        "optimizer_steps": total,
        "wall_s": round(sum(float(s.get("wall_s", 0.0)) for s in stages.values()), 3),
        "device_s": round(sum(float(s.get("device_s", 0.0)) for s in stages.values()), 3),
        "reference": None if reference is None else {"optimizer_steps": ref_total, **reference},
        "ratio_to_reference": (total / ref_total) if ref_total else None,
        "policy": dict(policy) if policy else None,
    }
