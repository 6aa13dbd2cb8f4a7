"""The one evaluator every method is scored by, exact under DDP.

Each rank keeps the ``(index, scores, targets)`` of the samples it saw. At epoch end the ranks
gather everything, drop the duplicates that ``DistributedSampler`` pads the last shard with
(same dataset index), sort by index and compute the metrics once on the full set — so two
processes give bit-for-bit the single-process numbers, even on an odd-sized set.
"""

from __future__ import annotations

import re
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor

from mlr_bench.eval.metrics import MultilabelMetrics, compute_metrics
from mlr_bench.provenance import weights_record
from mlr_bench.runs import atomic_write_bytes, atomic_write_json, git_revision, run_dir, versions

Stage = Literal["val", "test"]

#: Names already exempted from Lightning's "use sync_dist=True" advice (see log_identical).
_UNSYNCED: set[str] = set()


def log_identical(pl_module: LightningModule, name: str, value: float, **kwargs: Any) -> None:
    """Log a value that every rank computed identically (from the gathered set), unsynced.

    ``sync_dist=True`` would average the ranks' equal float32 values, and the mean of three
    equal float32 numbers is not always that number: with 3 processes some logged metrics
    (metrics.csv, the console table, W&B) moved by one float32 step. Logged unsynced, they are
    the single-process values bit for bit. Lightning's advice to sync epoch-level values is
    silenced for exactly these names.
    """
    if name not in _UNSYNCED:
        _UNSYNCED.add(name)
        warnings.filterwarnings(
            "ignore",
            message=re.escape(
                f"It is recommended to use `self.log({name!r}, ..., sync_dist=True)`"
            ),
        )
    pl_module.log(name, value, sync_dist=False, **kwargs)


def gather_unique(
    index: Tensor, scores: Tensor, targets: Tensor, world_size: int
) -> tuple[Tensor, Tensor, Tensor]:
    """All ranks' samples, one row per dataset index, ordered by index."""
    if world_size > 1:
        from torchmetrics.utilities.distributed import gather_all_tensors

        index, scores, targets = (
            torch.cat(gather_all_tensors(t)) for t in (index, scores, targets)
        )
    index, scores, targets = index.cpu(), scores.cpu(), targets.cpu()
    order = torch.argsort(index, stable=True)
    index, scores, targets = index[order], scores[order], targets[order]
    first = torch.ones_like(index, dtype=torch.bool)
    first[1:] = index[1:] != index[:-1]
    return index[first], scores[first], targets[first]


class Evaluator(Callback):
    """Collects scores on every rank and logs mAP, CP/CR/CF1, OP/OR/OF1 and top-k variants.

    Logged keys are ``val/mAP``, ``test/mAP``, ``test/CF1``, ``test/OF1_top3``, ... and
    ``test/AP/<class>``; ``test`` (and a stand-alone ``validate``) also write
    ``results_<stage>.json`` into the run directory next to ``checkpoints/``; the file says
    whether CLIP had random weights (``"weights": "random"``), which make the numbers mean nothing.
    """

    def __init__(
        self,
        threshold: float = 0.0,
        top_k: int = 3,
        difficult: Literal["negative", "ignore"] = "negative",
        write_results: bool = True,
    ) -> None:
        """
        Args:
            threshold: score at or above which a class counts as predicted (CP/CR/OP/OR/F1).
                Raw CLIP scores are uncalibrated, so set it per method/backbone.
            top_k: k of the top-k thresholded variants (3 in the field's papers).
            difficult: target 0 (VOC "difficult") counts as "negative" (TaI-DPT/PVP/CoMC
                protocol) or is "ignore"d by AP (ML-GCN protocol, whose thresholded metrics
                still count it as a negative).
            write_results: write ``results_<stage>.json`` at the end of test/validate.
        """
        self.threshold = threshold
        self.top_k = top_k
        self.difficult = difficult
        self.write_results = write_results
        self._buffers: dict[str, list[dict[str, Tensor]]] = {"val": [], "test": []}
        self.results: dict[str, dict[str, Any]] = {}

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        for logger in _wandb_loggers(trainer):
            from mlr_bench.loggers import describe_run

            describe_run(logger, trainer, pl_module)

    # ---- collection ------------------------------------------------------------------------
    def _collect(self, stage: Stage, outputs: Any) -> None:
        if not isinstance(outputs, dict) or not {"scores", "target", "index"} <= outputs.keys():
            raise RuntimeError(
                "Evaluator expects the step to return {'scores', 'target', 'index'} "
                f"(MLRMethod's shared steps do); got {type(outputs).__name__}"
            )
        self._buffers[stage].append({k: outputs[k].detach() for k in ("scores", "target", "index")})

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._buffers["val"] = []

    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._buffers["test"] = []

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ):
        self._collect("val", outputs)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._collect("test", outputs)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        write = trainer.state.fn == TrainerFn.VALIDATING and not trainer.sanity_checking
        self._finish("val", trainer, pl_module, write=write)

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._finish("test", trainer, pl_module, write=True)

    # ---- computation -----------------------------------------------------------------------
    def gather(self, stage: Stage, world_size: int = 1) -> tuple[Tensor, Tensor, Tensor]:
        """``(index, scores, targets)`` of everything collected for ``stage``, one row per
        sample of the whole set (all ranks when ``world_size`` > 1), ordered by index."""
        buf = self._buffers[stage]
        if not buf:
            raise RuntimeError(f"no {stage} samples were collected")
        return gather_unique(
            torch.cat([b["index"].long() for b in buf]),
            torch.cat([b["scores"].float() for b in buf]),
            torch.cat([b["target"].to(torch.int8) for b in buf]),
            world_size,
        )

    def compute(self, stage: Stage, world_size: int = 1) -> tuple[Tensor, MultilabelMetrics]:
        """Metrics over everything collected for ``stage`` (all ranks when ``world_size`` > 1)."""
        index, scores, targets = self.gather(stage, world_size)
        return index, self._metrics(scores, targets)

    def _metrics(self, scores: Tensor, targets: Tensor) -> MultilabelMetrics:
        return compute_metrics(
            scores.double().numpy(),
            targets.numpy(),
            threshold=self.threshold,
            top_k=self.top_k,
            difficult=self.difficult,
        )

    def _finish(self, stage: Stage, trainer: Trainer, pl_module: LightningModule, write: bool):
        if not self._buffers[stage]:
            return
        index, scores, targets = self.gather(stage, trainer.world_size)
        metrics = self._metrics(scores, targets)
        self._buffers[stage] = []
        class_names = display_class_names(trainer, pl_module) or [
            str(i) for i in range(len(metrics.per_class_ap))
        ]
        per_class = _per_class(metrics, class_names)
        for key, value in metrics.as_dict().items():
            log_identical(pl_module, f"{stage}/{key}", float(value), prog_bar=key == "mAP")
        if stage == "test":
            for name, ap in per_class.items():
                if ap is not None:
                    log_identical(pl_module, f"test/AP/{name}", ap)
        self.results[stage] = self._report(trainer, pl_module, metrics, per_class, class_names)
        if stage == "test" and trainer.is_global_zero:
            for logger in _wandb_loggers(trainer):
                from mlr_bench.loggers import log_budget_summary, log_test_tables

                log_test_tables(logger, trainer, per_class, index, scores, targets)
                log_budget_summary(logger, self.results[stage].get("budget"))
        if write and self.write_results:
            path = run_dir(trainer) / f"results_{stage}.json"  # collective: call on every rank
            scores_path = path.with_name(f"scores_{stage}.npz")
            self.results[stage]["scores_file"] = scores_path.name
            if trainer.is_global_zero:  # scores first: a results file always has its scores
                write_scores(scores_path, index, scores, targets)
                atomic_write_json(path, self.results[stage])
            self.results[stage]["path"] = str(path)

    def _report(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        metrics: MultilabelMetrics,
        per_class: dict[str, float | None],
        class_names: Sequence[str],
    ) -> dict[str, Any]:
        datamodule = getattr(trainer, "datamodule", None)
        return {
            "metrics": metrics.as_dict(),
            "per_class_ap": per_class,
            "excluded_classes": [class_names[i] for i in metrics.excluded_classes],
            "num_samples": metrics.num_samples,
            "evaluator": {
                "threshold": self.threshold,
                "top_k": self.top_k,
                "difficult": self.difficult,
            },
            "method": _describe(pl_module),
            **weights_record(pl_module),  # "weights": random|pretrained, beside every number
            "data": _describe(datamodule),
            "protocol": _protocol(datamodule),
            "budget": _budget(pl_module, datamodule),
            "seed": _seed(),
            "ckpt_path": str(Path(trainer.ckpt_path).resolve()) if trainer.ckpt_path else None,
            "world_size": trainer.world_size,
            "versions": versions(),
            "git_revision": git_revision(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }


def write_scores(path: Path, index: Tensor, scores: Tensor, targets: Tensor) -> None:
    """``scores_<stage>.npz``: every image's raw scores (float32) and targets (int8) in index
    order, so that comparisons can resample test images (the benchmark's paired bootstrap)."""

    def save(f: Any) -> None:
        np.savez_compressed(
            f, index=index.numpy(), scores=scores.float().numpy(), targets=targets.numpy()
        )

    atomic_write_bytes(path, save)


def read_scores(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``(scores [N, C] float32, targets [N, C] int8)`` of a ``scores_<stage>.npz``."""
    with np.load(path) as data:
        return data["scores"], data["targets"]


def display_class_names(trainer: Trainer, pl_module: LightningModule) -> list[str]:
    """The dataset's class names for results and tables: the datamodule's when it has as many
    as the model (the model holds the names it prompts with, which the reference protocol may
    change, e.g. COCO "motor bike" for "motorcycle"), else the model's."""
    model_names = list(getattr(pl_module, "class_names", []))
    data_names = getattr(getattr(trainer, "datamodule", None), "class_names", None)
    try:
        data_names = list(data_names) if data_names is not None else None
    except (NotImplementedError, TypeError):
        data_names = None
    return data_names if data_names and len(data_names) == len(model_names) else model_names


def _wandb_loggers(trainer: Trainer) -> list[Any]:
    """The trainer's W&B loggers; the check imports no ``wandb`` (Lightning's class is lazy)."""
    from lightning.pytorch.loggers import WandbLogger

    return [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]


def _budget(pl_module: LightningModule, datamodule: Any) -> dict[str, Any] | None:
    """What the fit in this process spent (:mod:`mlr_bench.budget`), with the reference
    recipe's steps where known; None when nothing was metered here."""
    from mlr_bench import registry
    from mlr_bench.budget import budget_record

    method = registry.name_for_class("method", type(pl_module))
    dataset = registry.name_for_class("data", type(datamodule)) if datamodule else None
    policy = getattr(pl_module, "budget_policy", None)
    return budget_record(getattr(pl_module, "budget_stages", None), method, dataset, policy)


def _protocol(datamodule: Any) -> dict[str, Any] | None:
    """The datamodule's protocol record (None for a datamodule outside mlr-bench's base)."""
    record = getattr(datamodule, "protocol_record", None)
    return record() if callable(record) else None


def _per_class(metrics: MultilabelMetrics, class_names: Sequence[str]) -> dict[str, float | None]:
    return {
        name: (None if ap != ap else float(ap))  # NaN -> None: the class had no positives
        for name, ap in zip(class_names, metrics.per_class_ap, strict=True)
    }


def _describe(obj: Any) -> dict[str, Any] | None:
    if obj is None:
        return None
    cls = type(obj)
    hparams = dict(getattr(obj, "hparams", {}) or {})
    hparams.pop("class_names", None)  # listed with the per-class results already
    return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": hparams}


def _seed() -> int | None:
    import os

    seed = os.environ.get("PL_GLOBAL_SEED")
    return int(seed) if seed is not None else None
