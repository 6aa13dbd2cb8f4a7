"""Frozen text features of a training corpus: EOT embeddings and per-token features, cached once.

The text encoder is frozen, so a caption's features never change during training: TaI-DPT,
CoMC and PVP read them from this cache and only their prompts go through the text transformer.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from mlr_bench.clip import CLIPBackbone
from mlr_bench.features.keys import backbone_key
from mlr_bench.features.store import ArraySpec, FeatureCache, FeatureStore
from mlr_bench.text.corpus import TextCorpus

#: The parts a method may ask for: the sentence embedding and/or every token's embedding.
TEXT_PARTS = frozenset({"eot", "tokens"})


def corpus_hash(corpus: TextCorpus) -> str:
    """Content hash of texts and labels: the corpus's identity in a cache key."""
    h = hashlib.sha256()
    for text in corpus.texts:
        h.update(text.encode())
        h.update(b"\0")
    h.update(np.ascontiguousarray(corpus.labels).tobytes())
    return h.hexdigest()[:20]


@torch.no_grad()
def text_features(
    store: FeatureStore,
    backbone: CLIPBackbone,
    corpus: TextCorpus,
    parts: frozenset[str] = TEXT_PARTS,
    batch_size: int = 256,
    dtype: str = "float16",
    device: torch.device | str | None = None,
) -> FeatureCache:
    """Cached ``eot [N, D]``, ``tokens [N, L, D]`` (L = longest text in tokens), ``length [N]``
    (tokens up to and including EOT) and ``target [N, C]`` of a corpus; built if missing."""
    unknown = set(parts) - TEXT_PARTS
    if unknown:
        raise ValueError(
            f"unknown text feature parts {sorted(unknown)}; expected {sorted(TEXT_PARTS)}"
        )
    key = {
        "kind": "text",
        "backbone": backbone_key(backbone),
        "corpus": corpus_hash(corpus),
        "size": len(corpus),
        "parts": sorted(parts),
        "dtype": dtype,
    }
    device = torch.device(device) if device is not None else backbone.device
    tokenized: list[torch.Tensor] = []  # tokenising is work a warm cache skips

    def specs() -> dict[str, ArraySpec]:
        tokenized.append(backbone.tokenizer(corpus.texts))  # [N, context]
        lengths = tokenized[0].argmax(dim=-1) + 1
        n, dim, longest = len(corpus), backbone.embed_dim, int(lengths.max())
        out = {"length": ArraySpec((n,), "int16"), "target": ArraySpec(corpus.labels.shape, "int8")}
        if "eot" in parts:
            out["eot"] = ArraySpec((n, dim), dtype)
        if "tokens" in parts:
            out["tokens"] = ArraySpec((n, longest, dim), dtype)
        return out

    def fill(arrays: dict[str, np.ndarray]) -> None:
        token_ids = tokenized[0]
        arrays["length"][:] = (token_ids.argmax(dim=-1) + 1).numpy()
        arrays["target"][:] = corpus.labels
        previous = backbone.device
        backbone.to(device)
        try:
            starts = range(0, len(corpus), batch_size)
            for start in tqdm(starts, desc="text features", unit="batch", mininterval=2):
                ids = token_ids[start : start + batch_size].to(device)
                feats = backbone.encode_text_tokens(ids)
                rows = slice(start, start + len(ids))
                if "eot" in arrays:
                    arrays["eot"][rows] = feats.eot.cpu().numpy()
                if "tokens" in arrays:
                    width = arrays["tokens"].shape[1]
                    arrays["tokens"][rows] = feats.tokens[:, :width].cpu().numpy()
        finally:
            backbone.to(previous)

    return store.get_or_build(key, specs, fill)


class TextFeatureDataset(Dataset):
    """Training samples from a text feature cache: ``eot``, ``tokens`` + ``mask``, ``target``."""

    def __init__(self, cache: FeatureCache) -> None:
        self.cache = cache
        self.width = cache["tokens"].shape[1] if "tokens" in cache else 0

    def __len__(self) -> int:
        return len(self.cache["target"])

    def __getitem__(self, i: int) -> dict[str, Any]:
        item: dict[str, Any] = {"target": torch.from_numpy(np.array(self.cache["target"][i]))}
        if "eot" in self.cache:
            item["eot"] = torch.from_numpy(np.asarray(self.cache["eot"][i], dtype=np.float32))
        if "tokens" in self.cache:
            item["tokens"] = torch.from_numpy(np.asarray(self.cache["tokens"][i], dtype=np.float32))
            item["mask"] = torch.arange(self.width) < int(self.cache["length"][i])
        item["index"] = i
        return item
