"""Fingerprints of what changes frozen features: the backbone's weights and the preprocessing."""

from __future__ import annotations

import hashlib
from typing import Any

import torch

from mlr_bench.clip import CLIPBackbone


def weights_hash(module: torch.nn.Module) -> str:
    """Hash of the actual weights (names, shapes, dtypes, bytes), however they were loaded.

    Hashing the tensors rather than a file path means a re-downloaded, converted or moved
    checkpoint with the same numbers keeps its caches, and any changed number invalidates them.
    """
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:20]


def backbone_key(backbone: CLIPBackbone) -> dict[str, Any]:
    """Backbone part of a cache key; the weights hash is computed once per backbone object."""
    cached = getattr(backbone, "_weights_hash", None)
    if cached is None:
        cached = weights_hash(backbone.clip)
        backbone._weights_hash = cached
    return {"model": backbone.model_name, "weights": cached}


def transform_key(transform: Any) -> str:
    """Preprocessing part of a cache key: torchvision transforms print all their parameters."""
    return " ".join(repr(transform).split())
