"""Methods trained in stages: a stage a method must fit before its own (PVP's pre-training).

A method asks for a prior stage by returning a :class:`PriorStage` from
``method.prior_stage(datamodule, trainer)`` (None when it is cached or not wanted). The trainer
fits it with a child Trainer built from its own device settings, so that each stage is a plain
Lightning fit in which only that stage's parameters require gradients: plain ``ddp`` works
because no trainable parameter is ever left without a gradient.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import CSVLogger

from mlr_bench.budget import BudgetMeter

if TYPE_CHECKING:
    from mlr_bench.datamodule import MLRDataModule
    from mlr_bench.method import MLRMethod

#: Trainer settings a prior stage inherits: where and how to run, and smoke-test limits.
INHERITED_TRAINER_ARGS = (
    "accelerator",
    "devices",
    "num_nodes",
    "precision",
    "deterministic",
    "benchmark",
    "enable_progress_bar",
    "log_every_n_steps",
    "max_steps",
    "limit_train_batches",
    "accumulate_grad_batches",
    "gradient_clip_val",
    "default_root_dir",
)


@dataclass
class PriorStage:
    """A module to fit before the method itself, for ``max_epochs`` epochs."""

    module: MLRMethod
    max_epochs: int
    name: str = "pretrain"


def trainer_limits(trainer: Trainer) -> dict[str, Any]:
    """Trainer settings that change what a stage learns (they belong in its cache key)."""
    return {
        "world_size": trainer.world_size,
        "max_steps": trainer.max_steps,
        "limit_train_batches": trainer.limit_train_batches,
        "accumulate_grad_batches": trainer.accumulate_grad_batches,
        "precision": str(trainer.precision),
    }


def _strategy_name(strategy: Any) -> Any:
    if strategy is None or isinstance(strategy, str):
        return strategy or "auto"
    return getattr(type(strategy), "strategy_name", "auto")


def stage_trainer(parent: Trainer, init_kwargs: dict[str, Any], stage: PriorStage) -> Trainer:
    """A Trainer for ``stage`` on the same devices as ``parent``, logging next to its runs."""
    kwargs = {k: v for k, v in init_kwargs.items() if k in INHERITED_TRAINER_ARGS}
    parent_name = parent.logger.name if parent.logger is not None else "runs"
    root = kwargs.get("default_root_dir") or parent.default_root_dir
    return Trainer(
        **kwargs,
        strategy=_strategy_name(init_kwargs.get("strategy")),
        max_epochs=stage.max_epochs,
        logger=CSVLogger(save_dir=root, name=f"{parent_name}/{stage.name}"),
        callbacks=[BudgetMeter(stage.name)],
        enable_checkpointing=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )


@contextmanager
def isolated_rng() -> Iterator[None]:
    """Run a stage without moving the caller's random streams, so that the next stage starts
    from the same state whether the prior stage ran or was read from its cache."""
    state = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        yield
    finally:
        random.setstate(state[0])
        np.random.set_state(state[1])
        torch.set_rng_state(state[2])
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def fit_prior_stage(
    parent: Trainer, init_kwargs: dict[str, Any], model: Any, datamodule: MLRDataModule | None
) -> None:
    """Fit the stage ``model`` asks for before its own fit, if any."""
    ask = getattr(model, "prior_stage", None)
    if ask is None or datamodule is None:
        return
    with isolated_rng():  # building the stage's module draws random numbers too
        stage = ask(datamodule, parent)
        if stage is not None:
            stage_trainer(parent, init_kwargs, stage).fit(stage.module, datamodule=datamodule)
            spent = getattr(stage.module, "budget_stages", None) or {}
            model.budget_stages = {**(getattr(model, "budget_stages", None) or {}), **spent}
