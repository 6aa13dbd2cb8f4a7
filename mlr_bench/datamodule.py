"""``MLRDataModule``: the contract every dataset (built-in or plugin) implements.

A datamodule owns the class names (linked into the method by the CLI), the evaluation image sets
and the training data *the chosen method asks for* (``method.requires``), so that a text-only
method never triggers image generation and a zero-shot method never builds a corpus.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from mlr_bench.errors import MLRBenchError
from mlr_bench.transforms import clip_eval_transform

Transform = Callable[[Any], torch.Tensor]


class IncompatibleDataError(MLRBenchError, ValueError):
    """The method needs training data the datamodule cannot build."""


class NoTrainingData(Dataset):
    """One empty item, so that a method that does not train still runs a (no-op) fit epoch.

    Lightning skips validation entirely when the training loader is empty; a single dummy batch
    keeps ``fit`` meaningful for zero-shot methods (it validates and logs ``val/mAP``).
    """

    def __len__(self) -> int:
        return 1

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"nothing": torch.zeros(())}


class MLRDataModule(LightningDataModule):
    """Base class of multi-label datasets.

    Subclasses provide ``class_names`` and :meth:`eval_dataset`; those with training data list
    its kinds in ``provides`` and implement :meth:`train_dataset`.
    """

    #: Training data kinds this datamodule can build (see :mod:`mlr_bench.batch`).
    provides: ClassVar[frozenset[str]] = frozenset()

    def __init__(
        self,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        image_size: int | None = None,
    ) -> None:
        """
        Args:
            batch_size: training batch size.
            eval_batch_size: validation/test batch size (defaults to ``batch_size``).
            num_workers: DataLoader worker processes.
            image_size: evaluation resolution; ``None`` follows the method's backbone.
        """
        super().__init__()
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.image_size = image_size
        self.transform: Transform | None = None

    # ---- what subclasses provide ---------------------------------------------------------
    @property
    def class_names(self) -> list[str]:
        raise NotImplementedError(f"{type(self).__name__} must define class_names")

    @property
    def synonyms(self) -> dict[str, list[str]]:
        """Words that mean each class in text (used to label captions); default: the name."""
        return {c: [c] for c in self.class_names}

    def eval_dataset(self, split: str, transform: Transform) -> Dataset | None:
        """Evaluation set for ``split`` ("val"/"test") yielding EvalSample dicts, or None."""
        raise NotImplementedError(f"{type(self).__name__} must implement eval_dataset(split)")

    def train_dataset(self, kind: str) -> Dataset:
        """Training data of one kind listed in ``provides``."""
        raise NotImplementedError(f"{type(self).__name__} provides no '{kind}' training data")

    # ---- shared machinery ----------------------------------------------------------------
    def _method(self) -> Any:
        trainer = self.trainer
        return trainer.lightning_module if trainer is not None else None

    def resolve_transform(self) -> Transform:
        """Evaluation preprocessing: the backbone's unless ``image_size`` overrides it."""
        if self.image_size is None:
            method = self._method()
            transform = getattr(method, "eval_transform", lambda: None)()
            if transform is not None:
                return transform
        return clip_eval_transform(self.image_size or 224)

    def setup(self, stage: str) -> None:
        self.transform = self.resolve_transform()

    def required_kinds(self) -> frozenset[str]:
        method = self._method()
        required = frozenset(getattr(method, "requires", frozenset()))
        missing = required - self.provides
        if missing:
            provided = ", ".join(sorted(self.provides)) or "nothing"
            raise IncompatibleDataError(
                f"{type(method).__name__} requires {sorted(missing)} training data, which "
                f"{type(self).__name__} does not provide (it provides: {provided})."
            )
        return required

    def train_dataloader(self) -> DataLoader:
        kinds = sorted(self.required_kinds())
        if not kinds:
            return DataLoader(NoTrainingData(), batch_size=1)
        if len(kinds) > 1:
            raise NotImplementedError(
                f"{type(self).__name__} builds one training data kind per method; override "
                f"train_dataloader to combine {kinds}"
            )
        return self._loader(self.train_dataset(kinds[0]), self.batch_size, shuffle=True)

    def _eval_loader(self, split: str) -> DataLoader | list:
        dataset = self.eval_dataset(split, self.transform or self.resolve_transform())
        if dataset is None:
            return []
        return self._loader(dataset, self.eval_batch_size, shuffle=False)

    def val_dataloader(self) -> DataLoader | list:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader | list:
        return self._eval_loader("test")

    def predict_dataloader(self) -> DataLoader | list:
        return self._eval_loader("test")

    def _loader(self, dataset: Dataset, batch_size: int, shuffle: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )


def multi_hot(labels: Sequence[int], difficult: Sequence[int], num_classes: int) -> torch.Tensor:
    """Target vector in {1, 0, -1}: 1 for labels, 0 for difficult ones, -1 elsewhere."""
    target = torch.full((num_classes,), -1, dtype=torch.int8)
    target[list(difficult)] = 0
    target[list(labels)] = 1
    return target
