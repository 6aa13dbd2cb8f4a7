"""Learning-rate schedules of the reference code bases, as Lightning scheduler configs."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

#: Changes whenever the per-epoch lrs change, so that artifacts trained under a schedule (PVP's
#: cached stage-1 prompts) are keyed by it. 2: the cosine starts after the warm-up (Dassl).
SCHEDULE_VERSION = 2


def warmup_cosine_factor(
    epoch: int, max_epochs: int, warmup_epochs: int, warmup_ratio: float
) -> float:
    """Dassl's ``cosine`` + ``constant`` warm-up, per epoch, as a factor of the base lr.

    Epochs ``< warmup_epochs`` run at the constant ``warmup_ratio`` (1e-5 / lr in the
    references). Dassl (``dassl/optim/lr_scheduler.py``, ``WARMUP_RECOUNT=True``, its default
    and the references') wraps a ``CosineAnnealingLR(T_max=max_epochs)`` created at epoch 0: the
    first epoch after the warm-up hands over the cosine's untouched lr (the full base lr), and
    each later epoch steps the cosine once. So epoch ``e >= warmup_epochs`` runs at
    ``(1 + cos(pi * (e - warmup_epochs) / max_epochs)) / 2`` of the base: the cosine starts when
    the warm-up ends and never reaches 0 within the run (at 20 epochs, 1 warm-up: 1e-5, then
    1e-4, 9.94e-5, ..., 2.45e-6 in the last epoch for a base of 1e-4).
    """
    if epoch < warmup_epochs:
        return warmup_ratio
    return 0.5 * (1.0 + math.cos(math.pi * min(epoch - warmup_epochs, max_epochs) / max_epochs))


def warmup_cosine(
    optimizer: Optimizer,
    max_epochs: int | None,
    warmup_epochs: int = 1,
    warmup_lr: float | Sequence[float] = 1e-5,
) -> dict[str, Any]:
    """Per-epoch warm-up + cosine schedule for ``configure_optimizers``.

    ``max_epochs`` is the trainer's (the cosine spans the whole run); None or -1 (unbounded
    training) falls back to the references' 20 epochs. ``warmup_lr`` may give one warm-up lr
    per parameter group (PVP warms its adapters at 5× their base lr, its prompts at 1×).
    """
    max_epochs = max_epochs if max_epochs not in (None, -1) else 20
    groups = optimizer.param_groups
    warm = [warmup_lr] * len(groups) if isinstance(warmup_lr, int | float) else list(warmup_lr)
    if len(warm) != len(groups):
        raise ValueError(f"{len(warm)} warm-up lrs for {len(groups)} parameter groups")
    ratios = [w / g["lr"] if g["lr"] else 1.0 for w, g in zip(warm, groups, strict=True)]
    factors = [lambda e, r=r: warmup_cosine_factor(e, max_epochs, warmup_epochs, r) for r in ratios]
    return {"scheduler": LambdaLR(optimizer, factors), "interval": "epoch"}
