"""Losses shared by text-only multi-label methods."""

from __future__ import annotations

from torch import Tensor


def ranking_loss(scores: Tensor, targets: Tensor, margin: float = 1.0) -> Tensor:
    """Multi-label pairwise ranking loss of TaI-DPT, CoMC and PVP.

    For each sample, ``sum over positives p and negatives n of max(0, margin - s_p + s_n)``
    (summed over pairs, not normalised by their number), averaged over the batch. ``targets``
    is multi-hot: > 0 positive, everything else negative.
    """
    positive = targets > 0
    # [B, C_pos, C_neg] hinge on every (positive, negative) pair of the same sample.
    hinge = (margin - scores.unsqueeze(2) + scores.unsqueeze(1)).clamp(min=0)
    pairs = positive.unsqueeze(2) & ~positive.unsqueeze(1)
    return (hinge * pairs).sum(dim=(1, 2)).mean()
