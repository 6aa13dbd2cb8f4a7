"""``MLRMethod``: the contract every method (built-in or plugin) implements.

A method holds only its own small trainable parameters (prompts, adapters, classifiers) next to a
frozen CLIP backbone, turns an evaluation batch into raw scores ``[B, C]`` and leaves all metric
computation to the shared :class:`~mlr_bench.eval.evaluator.Evaluator`, so that every method is
scored by exactly the same code.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import torch
from lightning.pytorch import Callback, LightningModule
from torch import Tensor

from mlr_bench.batch import EvalBatch


class MLRMethod(LightningModule):
    """Base class of multi-label recognition methods.

    Subclasses implement :meth:`score` and, if they learn anything, ``training_step`` and
    ``configure_optimizers``. Validation, test and predict steps are shared.
    """

    #: Training data kinds this method consumes (e.g. ``{"text"}``, ``{"generated_images"}``).
    #: The datamodule builds only these; an empty set means the method does not train.
    requires: ClassVar[frozenset[str]] = frozenset()
    #: Trainer arguments the method needs whatever the user configured (e.g. a zero-shot
    #: method trains for exactly one no-op epoch). Applied by the CLI when it builds the Trainer.
    trainer_overrides: ClassVar[Mapping[str, Any]] = {}
    #: State-dict prefixes of frozen modules; they are left out of checkpoints, which then hold
    #: only what the method learned (small files, no copy of CLIP per run).
    frozen_prefixes: ClassVar[tuple[str, ...]] = ("backbone.",)

    def __init__(self, class_names: Sequence[str] | None = None) -> None:
        super().__init__()
        self.class_names: list[str] = list(class_names or [])
        # Checkpoints omit frozen weights, so loading them must not demand those keys.
        self.strict_loading = False

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    # ---- the method-specific part -------------------------------------------------------
    def score(self, batch: EvalBatch) -> Tensor:
        """Raw scores ``[B, C]`` for an evaluation batch; higher means more likely present."""
        raise NotImplementedError(f"{type(self).__name__} must implement score(batch)")

    def eval_transform(self) -> Callable[[Any], Tensor] | None:
        """Image preprocessing the backbone expects; ``None`` lets the datamodule choose."""
        return None

    # ---- shared evaluation steps ---------------------------------------------------------
    def _scored(self, batch: EvalBatch) -> dict[str, Tensor]:
        if not self.class_names:
            raise RuntimeError(
                f"{type(self).__name__} has no class_names: pass them, or run it through the "
                "CLI/trainer with a datamodule (class names are linked from --data)."
            )
        scores = self.score(batch)
        expected = (batch["image"].shape[0], self.num_classes)
        if tuple(scores.shape) != expected:
            raise RuntimeError(
                f"{type(self).__name__}.score returned shape {tuple(scores.shape)}, "
                f"expected [batch, classes] = {list(expected)}"
            )
        return {
            "scores": scores.detach().float(),
            "target": batch["target"],
            "index": batch["index"],
        }

    def validation_step(self, batch: EvalBatch, batch_idx: int) -> dict[str, Tensor]:
        return self._scored(batch)

    def test_step(self, batch: EvalBatch, batch_idx: int) -> dict[str, Tensor]:
        return self._scored(batch)

    def predict_step(self, batch: EvalBatch, batch_idx: int, dataloader_idx: int = 0) -> dict:
        out = self._scored(batch)
        return {"index": out["index"], "scores": out["scores"]}

    # ---- plumbing --------------------------------------------------------------------------
    def configure_callbacks(self) -> list[Callback]:
        """Attach the shared evaluator and prediction writer unless the user configured them."""
        from mlr_bench.eval.evaluator import Evaluator
        from mlr_bench.eval.predictions import PredictionWriter

        configured = self._trainer.callbacks if self._trainer is not None else []
        return [
            cls()
            for cls in (Evaluator, PredictionWriter)
            if not any(isinstance(c, cls) for c in configured)
        ]

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        state = super().state_dict(*args, **kwargs)
        prefix = kwargs.get("prefix", args[1] if len(args) > 1 else "")
        frozen = tuple(prefix + p for p in self.frozen_prefixes)
        for key in [k for k in state if k.startswith(frozen)]:
            del state[key]
        return state

    def train(self, mode: bool = True) -> MLRMethod:
        """Keep frozen modules in eval mode (no dropout/BN updates) whatever Lightning asks."""
        super().train(mode)
        for name, module in self.named_children():
            if f"{name}." in self.frozen_prefixes:
                module.eval()
        return self


def freeze(module: torch.nn.Module) -> torch.nn.Module:
    """Put a module in eval mode with ``requires_grad=False`` on all its weights."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module
