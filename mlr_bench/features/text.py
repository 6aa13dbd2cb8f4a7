"""Frozen text features of a training corpus: per-token features, cached once.

The text encoder is frozen, so a caption's features never change during training: TaI-DPT,
CoMC and PVP read them from this cache and only their prompts go through the text transformer.

Layout (``TEXT_LAYOUT``): ragged. Only each text's real tokens (SOS .. EOT) are kept, one text
after the other, in ``token_feats [T, S]`` with ``offset [N + 1]`` (text ``i`` is rows
``offset[i]:offset[i + 1]``), so the size follows the corpus's mean length instead of its
longest text times N. The EOT embedding is the last row of each text (CLIP's ``eot`` is that
token's projection), so it is not stored twice. Where the tokens are taken is the *storage*:

- ``"pre_projection"``: CLIP's ``ln_final`` output (width W, e.g. 512 for RN50), projected and
  L2-normalised when read (``x @ text_projection``, float32). Half the bytes where W < D
  (RN50: D = 1024): 500k PVP sentences take ~10 GB instead of ~20 GB (padded: ~30-40 GB).
- ``"projected"``: the joint-space, L2-normalised tokens (width D), read as they are.
- ``"auto"`` (default): ``pre_projection`` where it saves bytes (W < D), else ``projected``
  (ViT-B-16, W = D = 512, would only pay the projection).

Batches are padded to their own longest text. In training under a Lightning ``Trainer`` the
projection runs on the training device after the batch is moved there (the datamodule's
``on_after_batch_transfer`` calls :func:`finish_text_batch`): on a CPU worker it would cost
~0.5 s per 512-text RN50 batch, on a GPU well under a millisecond.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset
from tqdm import tqdm

from mlr_bench.clip import CLIPBackbone
from mlr_bench.clip.backbone import TextFeatures
from mlr_bench.features.keys import backbone_key
from mlr_bench.features.store import ArraySpec, FeatureCache, FeatureStore
from mlr_bench.text.corpus import TextCorpus

#: The parts a method may ask for: the sentence embedding and/or every token's embedding.
TEXT_PARTS = frozenset({"eot", "tokens"})
#: The on-disk layout, part of the cache key: a cache written in another layout (the padded
#: ``tokens [N, L, D]`` of earlier versions) has another key, so it is never misread.
TEXT_LAYOUT = "ragged-1"
#: Where cached tokens are taken (see the module docstring); ``auto`` picks per backbone.
TEXT_STORAGES = ("auto", "pre_projection", "projected")
#: A build whose stored tokens, read back, differ from the encoder's by more than this
#: (relative L2, per token) warns: fp16 rounding gives about 3e-4.
STORED_ERROR_WARN = 2e-3
#: Batch key of tokens still to be projected (``[B, L, W]``, fp16): a deferred batch.
HIDDEN = "text_hidden"

log = logging.getLogger(__name__)


def corpus_hash(corpus: TextCorpus) -> str:
    """Content hash of texts and labels: the corpus's identity in a cache key."""
    h = hashlib.sha256()
    for text in corpus.texts:
        h.update(text.encode())
        h.update(b"\0")
    h.update(np.ascontiguousarray(corpus.labels).tobytes())
    return h.hexdigest()[:20]


# ---- projection ----------------------------------------------------------------------------
def text_projection(backbone: CLIPBackbone) -> tuple[Tensor, Tensor | None]:
    """CLIP's text projection as (weight ``[W, D]``, bias ``[D]`` or None), whether open_clip
    holds it as a matrix or as an ``nn.Linear``."""
    proj = backbone.clip.text_projection
    if isinstance(proj, nn.Linear):
        return proj.weight.detach().T, None if proj.bias is None else proj.bias.detach()
    return proj.detach(), None


def project_tokens(hidden: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``ln_final`` outputs ``[..., W]`` to joint-space, L2-normalised float32 ``[..., D]``
    (the steps ``CLIPBackbone.encode_embedded_text`` runs after ``ln_final``)."""
    x = hidden.float() @ weight.to(hidden.device, torch.float32)
    if bias is not None:
        x = x + bias.to(hidden.device, torch.float32)
    return F.normalize(x, dim=-1)


def resolve_storage(backbone: CLIPBackbone, storage: str) -> str:
    """``auto`` → ``pre_projection`` where the text width is below the embedding (RN50: 512 <
    1024), else ``projected``; explicit choices are checked."""
    if storage not in TEXT_STORAGES:
        raise ValueError(f"unknown text cache storage {storage!r}; expected one of {TEXT_STORAGES}")
    if storage != "auto":
        return storage
    has_ln = isinstance(getattr(backbone.clip, "ln_final", None), nn.Module)
    return "pre_projection" if has_ln and backbone.text_width < backbone.embed_dim else "projected"


def token_lengths(token_ids: Tensor) -> Tensor:
    """Tokens of each text up to and including EOT (the highest id, so ``argmax``)."""
    return token_ids.argmax(dim=-1) + 1


def ragged_offsets(lengths: np.ndarray) -> np.ndarray:
    """``offset [N + 1]`` (int64): text ``i`` occupies rows ``offset[i]:offset[i + 1]``."""
    return np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]).astype(np.int64)


# ---- building ------------------------------------------------------------------------------
def text_cache_specs(
    lengths: np.ndarray,
    num_classes: int,
    backbone: CLIPBackbone,
    parts: frozenset[str],
    storage: str,
    dtype: str,
) -> dict[str, ArraySpec]:
    """Array shapes of a text cache; ``T = lengths.sum()`` sizes the ragged tokens, so the
    free-space check before a build sees the real size."""
    n, dim = len(lengths), backbone.embed_dim
    out = {"target": ArraySpec((n, num_classes), "int8")}
    if "tokens" not in parts:
        out["eot"] = ArraySpec((n, dim), dtype)
        return out
    width = backbone.text_width if storage == "pre_projection" else dim
    out["offset"] = ArraySpec((n + 1,), "int64")
    out["token_feats"] = ArraySpec((int(lengths.sum()), width), dtype)
    if storage == "pre_projection":
        weight, bias = text_projection(backbone)
        out["projection"] = ArraySpec(tuple(weight.shape), "float32")
        if bias is not None:
            out["projection_bias"] = ArraySpec(tuple(bias.shape), "float32")
    return out


def _encode(backbone: CLIPBackbone, ids: Tensor, storage: str) -> tuple[TextFeatures, Tensor]:
    """The encoder's features of a batch and the per-token rows to store ``[B, L, S]``: for
    ``pre_projection``, ``ln_final``'s output, caught by a hook so the backbone's own path runs."""
    caught: list[Tensor] = []
    hook = None
    if storage == "pre_projection":
        hook = backbone.clip.ln_final.register_forward_hook(lambda m, i, out: caught.append(out))
    try:
        feats = backbone.encode_text_tokens(ids)
    finally:
        if hook is not None:
            hook.remove()
    return feats, caught[-1] if caught else feats.tokens


def stored_error(stored: Tensor, live: Tensor, projection: tuple | None) -> float:
    """Largest relative L2 error of stored token rows, read back as a batch reads them, against
    the encoder's joint-space tokens ``live``: what the storage's rounding costs."""
    got = project_tokens(stored, *projection) if projection is not None else stored.float()
    live = live.float()
    return float(((got - live).norm(dim=-1) / live.norm(dim=-1).clamp_min(1e-12)).max())


@torch.no_grad()
def text_features(
    store: FeatureStore,
    backbone: CLIPBackbone,
    corpus: TextCorpus,
    parts: frozenset[str] = TEXT_PARTS,
    batch_size: int = 256,
    dtype: str = "float16",
    device: torch.device | str | None = None,
    storage: str = "auto",
) -> FeatureCache:
    """Cached features of a corpus (built if missing): ``target [N, C]``, plus ``eot [N, D]``
    when only EOT is asked for, or the ragged ``token_feats [T, S]`` + ``offset [N + 1]``
    (and ``projection`` for ``pre_projection`` storage) when tokens are. Read them with
    :class:`TextFeatureDataset`."""
    unknown = set(parts) - TEXT_PARTS
    if unknown:
        raise ValueError(
            f"unknown text feature parts {sorted(unknown)}; expected {sorted(TEXT_PARTS)}"
        )
    storage = resolve_storage(backbone, storage) if "tokens" in parts else "projected"
    key = {
        "kind": "text",
        "backbone": backbone_key(backbone),
        "corpus": corpus_hash(corpus),
        "size": len(corpus),
        "parts": sorted(parts),
        "dtype": dtype,
        "layout": TEXT_LAYOUT,
        "storage": storage,
    }
    device = torch.device(device) if device is not None else backbone.device
    tokenized: list[Tensor] = []  # tokenising is work a warm cache skips

    def specs() -> dict[str, ArraySpec]:
        tokenized.append(backbone.tokenizer(corpus.texts))  # [N, context]
        lengths = token_lengths(tokenized[0]).numpy()
        return text_cache_specs(lengths, corpus.labels.shape[1], backbone, parts, storage, dtype)

    def fill(arrays: dict[str, np.ndarray]) -> dict[str, float] | None:
        """Writes the arrays; records the largest error of the stored tokens (``info``)."""
        token_ids = tokenized[0]
        arrays["target"][:] = corpus.labels
        offset = ragged_offsets(token_lengths(token_ids).numpy())
        if "offset" in arrays:
            arrays["offset"][:] = offset
        if "projection" in arrays:
            weight, bias = text_projection(backbone)
            arrays["projection"][:] = weight.float().cpu().numpy()
            if bias is not None:
                arrays["projection_bias"][:] = bias.float().cpu().numpy()
        previous, worst = backbone.device, 0.0
        backbone.to(device)
        projection = text_projection(backbone) if storage == "pre_projection" else None
        try:
            starts = range(0, len(corpus), batch_size)
            for start in tqdm(starts, desc="text features", unit="batch", mininterval=2):
                ids = token_ids[start : start + batch_size].to(device)
                feats, tokens = _encode(backbone, ids, storage)
                if "eot" in arrays:
                    arrays["eot"][start : start + len(ids)] = feats.eot.cpu().numpy()
                if "token_feats" in arrays:
                    valid = ids[:, : tokens.shape[1]] != 0  # SOS .. EOT
                    stored = tokens[valid].to(getattr(torch, dtype))
                    rows = slice(offset[start], offset[start + len(ids)])
                    arrays["token_feats"][rows] = stored.cpu().numpy()
                    live = feats.tokens[valid]
                    worst = max(worst, stored_error(stored, live, projection))
        finally:
            backbone.to(previous)
        if worst > STORED_ERROR_WARN:
            log.warning(
                "text cache (%s, %s): stored tokens differ from the encoder's by up to %.1e "
                "(relative; fp16 rounding alone gives about 3e-4): storage='projected' or "
                "dtype='float32' keeps them closer",
                storage,
                dtype,
                worst,
            )
        return {"token_rel_error_max": worst} if "token_feats" in arrays else None

    return store.get_or_build(key, specs, fill, check=_check_layout)


def _check_layout(cache: FeatureCache) -> str | None:
    """A cache under this key must hold this layout's arrays (else it is rebuilt, not read)."""
    tokens = "tokens" in cache.key.get("parts", ())
    needed = {"target"} | ({"offset", "token_feats"} if tokens else {"eot"})
    if cache.key.get("storage") == "pre_projection" and tokens:
        needed.add("projection")
    missing = needed - set(cache.arrays)
    return f"it lacks the {sorted(missing)} arrays of layout {TEXT_LAYOUT}" if missing else None


# ---- reading -------------------------------------------------------------------------------
class TextFeatureDataset(Dataset):
    """Training samples of a text feature cache: ``eot [D]``, ``tokens [L, D]`` + ``mask
    [L]`` (float32; L = the longest text *of the batch*), ``target``, ``index``.

    The DataLoader reads a batch at once through ``__getitems__`` (one memory-mapped slice per
    text, nothing read for the rest of the corpus), pads it to its longest text and returns
    equal-shape samples that the default collate stacks. With ``defer_projection`` a
    ``pre_projection`` cache yields ``text_hidden [L, W]`` (fp16) instead of ``tokens``/``eot``:
    :func:`finish_text_batch` projects the batch on the training device.
    """

    def __init__(self, cache: FeatureCache, defer_projection: bool = False) -> None:
        self.cache = cache
        self.defer_projection = defer_projection
        self.tokens = "token_feats" in cache
        self.pre_projection = "projection" in cache
        self.projection: tuple[Tensor, Tensor | None] | None = None
        if self.pre_projection:
            bias = cache.arrays.get("projection_bias")
            self.projection = (
                torch.from_numpy(np.array(cache["projection"])),
                None if bias is None else torch.from_numpy(np.array(bias)),
            )

    def __len__(self) -> int:
        return len(self.cache["target"])

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.__getitems__([i])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        batch = self.read_batch(indices)
        return [
            {k: (int(v[b]) if k == "index" else v[b]) for k, v in batch.items()}
            for b in range(len(indices))
        ]

    def read_batch(self, indices: Sequence[int]) -> dict[str, Tensor]:
        """The collated batch of ``indices``: what a DataLoader yields, without the copy."""
        idx = np.asarray(indices, dtype=np.int64)
        batch = {
            "target": torch.from_numpy(np.asarray(self.cache["target"][idx])),
            "index": torch.from_numpy(idx),
        }
        if not self.tokens:
            batch["eot"] = torch.from_numpy(np.asarray(self.cache["eot"][idx], dtype=np.float32))
            return batch
        rows, mask = self._ragged_rows(idx)
        batch["mask"] = mask
        if self.pre_projection and self.defer_projection:
            hidden = torch.zeros(*mask.shape, rows.shape[-1], dtype=rows.dtype)
            hidden[mask] = rows
            batch[HIDDEN] = hidden
            return batch
        if self.pre_projection:
            rows = project_tokens(rows, *self.projection)
        batch.update(_pad_tokens(rows.float(), mask))
        return batch

    def _ragged_rows(self, idx: np.ndarray) -> tuple[Tensor, Tensor]:
        """The texts' tokens concatenated ``[sum(len), S]`` and their mask ``[B, max len]``."""
        offset, feats = self.cache["offset"], self.cache["token_feats"]
        starts, ends = np.asarray(offset[idx]), np.asarray(offset[idx + 1])
        rows = np.concatenate([feats[s:e] for s, e in zip(starts, ends, strict=True)])
        lengths = torch.from_numpy(ends - starts)
        mask = torch.arange(int(lengths.max())) < lengths[:, None]
        return torch.from_numpy(rows), mask

    def __getstate__(self) -> dict[str, Any]:
        """Workers and DDP processes reopen the memory maps instead of copying the arrays."""
        state = dict(self.__dict__)
        state["cache"] = self.cache.path
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        path = state.pop("cache")
        self.__dict__.update(state, cache=FeatureCache.load(path))


def _pad_tokens(rows: Tensor, mask: Tensor) -> dict[str, Tensor]:
    """``tokens [B, L, D]`` (zeros on padding) and ``eot [B, D]`` (each text's last token)."""
    tokens = rows.new_zeros(*mask.shape, rows.shape[-1])
    tokens[mask] = rows
    eot = tokens[torch.arange(len(mask), device=mask.device), mask.sum(dim=1) - 1]
    return {"tokens": tokens, "eot": eot}


def finish_text_batch(batch: Any, backbone: CLIPBackbone | None) -> Any:
    """Project the deferred text batches inside ``batch`` (a training batch or ``{kind:
    batch}``) with the backbone's text projection, where the batch now lives; anything
    else is returned unchanged."""
    if isinstance(batch, dict) and HIDDEN in batch:
        if backbone is None:
            raise RuntimeError("a deferred text batch needs the method's backbone to project it")
        out = {k: v for k, v in batch.items() if k != HIDDEN}
        mask = batch["mask"]
        rows = project_tokens(batch[HIDDEN][mask], *text_projection(backbone))
        out.update(_pad_tokens(rows, mask))
        return out
    if isinstance(batch, dict):
        return {k: finish_text_batch(v, backbone) for k, v in batch.items()}
    if isinstance(batch, list | tuple) and not hasattr(batch, "_fields"):
        return type(batch)(finish_text_batch(v, backbone) for v in batch)
    return batch
