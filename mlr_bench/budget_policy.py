"""The budget policy: every method trains the same fraction of its reference optimizer steps.

Methods compared at their reference *epochs* on a small corpus get very different shares of
their reference budgets (their reference corpora differ by 10x). ``--trainer.budget_fraction
F`` instead gives each training stage ``F`` x the optimizer steps of the method's reference
recipe on that dataset (:func:`mlr_bench.budget.reference_for`; the world borrows COCO 2014's),
and derives its epochs from the corpus it actually trains on::

    epochs = max(1, round(F * reference_steps / steps_per_epoch))

Epochs, not a step cap, keep every schedule whole (warm-up, the full cosine, PVP's stage-1
hand-off ratio). A method trained in stages names each stage's text in
``budget_plan()`` (see :class:`StagePlan`); the others train one ``train`` stage on their
``text_request()`` and required data kinds.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mlr_bench.batch import TEXT
from mlr_bench.errors import MLRBenchError
from mlr_bench.text.corpus import TextRequest


class BudgetPolicyError(MLRBenchError):
    """The budget policy cannot be applied (no reference recipe, a conflicting setting)."""


@dataclass
class StagePlan:
    """One training stage as the policy sees it.

    ``name`` is the stage's key in the reference recipe (``train``, ``pretrain``); ``request``
    the text it trains on; ``set_epochs`` applies the derived epochs (None: the trainer's
    ``max_epochs``, i.e. the method's own fit).
    """

    name: str
    request: TextRequest
    set_epochs: Callable[[int], None] | None = None


def _plan(model: Any) -> list[StagePlan]:
    plan = getattr(model, "budget_plan", None)
    if callable(plan):
        return list(plan())
    request = model.text_request() if hasattr(model, "text_request") else TextRequest()
    return [StagePlan("train", request)]


def steps_per_epoch(datamodule: Any, model: Any, request: TextRequest, world_size: int) -> int:
    """Optimizer steps of one epoch of the stage that reads ``request``: ceil over each rank's
    share (DistributedSampler pads to ceil(n / ranks)) of the largest data kind (several kinds
    run in "max_size_cycle" mode), at the datamodule's batch size, without drop_last."""
    kinds = sorted(getattr(model, "requires", frozenset({TEXT})))
    sizes = []
    for kind in kinds:
        if kind == TEXT:
            sizes.append(len(datamodule.corpus_for(request)))
        else:
            sizes.append(datamodule.train_size(kind))
    per_rank = math.ceil(max(sizes) / max(1, world_size))
    return math.ceil(per_rank / datamodule.batch_size)


def apply_budget_fraction(
    trainer: Any, model: Any, datamodule: Any, fraction: float
) -> dict[str, Any] | None:
    """Set each stage's epochs to train ``fraction`` of the reference steps; the policy record
    (kept in ``results.json`` → ``budget.policy``), or None for a method with nothing to train.
    """
    from mlr_bench import registry
    from mlr_bench.budget import reference_for

    if not any(p.requires_grad for p in model.parameters()):
        return None
    method = registry.name_for_class("method", type(model))
    dataset = registry.name_for_class("data", type(datamodule))
    reference, anchor = reference_for(str(method), str(dataset))
    if reference is None or not reference["stages"]:
        raise BudgetPolicyError(
            f"--trainer.budget_fraction {fraction}: no reference recipe of {method!r} on "
            f"{dataset!r} is known (docs/budgets.md lists them), so no fraction of it can be "
            "derived; set --trainer.max_epochs instead"
        )
    datamodule.attach(model)  # corpora are cut to the model's tokenizer
    stages: dict[str, Any] = {}
    for stage in _plan(model):
        ref_steps = reference["stages"].get(stage.name)
        if ref_steps is None:
            raise BudgetPolicyError(
                f"{method}: its stage {stage.name!r} has no reference step count on {anchor}"
            )
        per_epoch = steps_per_epoch(datamodule, model, stage.request, trainer.world_size)
        epochs = max(1, round(fraction * ref_steps / per_epoch))
        if stage.set_epochs is None:
            trainer.fit_loop.max_epochs = epochs
        else:
            stage.set_epochs(epochs)
        stages[stage.name] = {
            "reference_steps": ref_steps,
            "steps_per_epoch": per_epoch,
            "epochs": epochs,
            "planned_steps": epochs * per_epoch,
        }
    planned = ", ".join(
        f"{name} {s['epochs']} epochs x {s['steps_per_epoch']} steps "
        f"(reference {s['reference_steps']:,})"
        for name, s in stages.items()
    )
    print(f"budget policy: {fraction:g} of {method}'s reference steps on {anchor}: {planned}")
    return {"budget_fraction": fraction, "reference_dataset": anchor, "stages": stages}
