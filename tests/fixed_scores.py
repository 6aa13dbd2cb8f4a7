"""A method whose scores are a fixed table and a datamodule of fixed targets, for evaluator tests.

Module-level classes so that ``ddp_spawn`` children can unpickle them.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from mlr_bench.datamodule import MLRDataModule
from mlr_bench.method import MLRMethod


def fixed_table(n: int, c: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random tie-free scores and {1, 0, -1} targets with at least one positive per class."""
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=(n, c))
    targets = rng.choice([1, -1, -1, 0], size=(n, c)).astype(np.int8)
    targets[rng.integers(0, n, c), np.arange(c)] = 1
    return scores, targets


class TableImages(Dataset):
    def __init__(self, targets: np.ndarray) -> None:
        self.targets = torch.as_tensor(targets)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> dict:
        return {"image": torch.zeros(3, 4, 4), "target": self.targets[i], "index": i}


class TableData(MLRDataModule):
    """Fixed targets; val and test are the same table."""

    def __init__(self, n: int = 37, c: int = 5, seed: int = 0, batch_size: int = 4) -> None:
        super().__init__(batch_size=batch_size)
        self.n, self.c, self.seed = n, c, seed

    @property
    def class_names(self) -> list[str]:
        return [f"class{i}" for i in range(self.c)]

    def eval_dataset(self, split, transform):
        return TableImages(fixed_table(self.n, self.c, self.seed)[1])


class TableScores(MLRMethod):
    """Scores looked up by dataset index: the evaluator sees exactly the table."""

    def __init__(self, class_names=None, n: int = 37, seed: int = 0) -> None:
        super().__init__(class_names)
        self.save_hyperparameters()
        scores, _ = fixed_table(n, len(self.class_names), seed)
        self.register_buffer("table", torch.as_tensor(scores, dtype=torch.float32))

    def score(self, batch):
        return self.table[batch["index"]]

    def training_step(self, batch, batch_idx):
        return None

    def configure_optimizers(self):
        return None
