"""Frozen image features of an evaluation set: global (both poolings) and dense, cached once.

Every method that scores from frozen features reads the same cache, so a second evaluation, a
second seed or a second method never runs the image encoder again.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from mlr_bench.clip import CLIPBackbone
from mlr_bench.features.keys import backbone_key, transform_key
from mlr_bench.features.store import ArraySpec, FeatureCache, FeatureStore

#: Arrays of an image feature cache: CLIP's pooled embedding, the TaI-DPT pooling without
#: positional embedding, per-location embeddings and the targets.
IMAGE_ARRAYS = ("global", "global_no_pos", "dense", "target")
#: Stand-in files named in a cache's metadata (the count is always exact).
STAND_IN_LIMIT = 1000
#: Stand-in files named in the warning.
STAND_IN_SHOWN = 3


def image_feature_key(
    backbone: CLIPBackbone, transform: Any, data: dict[str, Any], dtype: str
) -> dict[str, Any]:
    return {
        "kind": "image",
        "backbone": backbone_key(backbone),
        "preprocess": transform_key(transform),
        "data": data,
        "dtype": dtype,
    }


@torch.no_grad()
def image_features(
    store: FeatureStore,
    backbone: CLIPBackbone,
    dataset: Callable[[], Dataset],
    transform: Any,
    data: dict[str, Any],
    batch_size: int = 64,
    num_workers: int = 0,
    dtype: str = "float16",
    device: torch.device | str | None = None,
    desc: str = "image features",
) -> FeatureCache:
    """The cached features of ``dataset()`` (``EvalSample`` items), built if missing.

    ``dataset`` is a factory, called only when the cache must be built (loading or rendering
    the images is work a warm cache skips). ``data`` identifies the images (dataset, split,
    files with their sizes and mtimes, seed...); with the backbone weights, the preprocessing
    ``transform`` and ``dtype`` it forms the cache key.

    Samples may carry ``stand_in``: the path of an unreadable image replaced by a stand-in
    (empty for a real one). Those are recorded in the cache's metadata and every run that uses
    the cache warns about them, not only the run that built it; once such a file can be read,
    the cache is rebuilt.
    """
    key = image_feature_key(backbone, transform, data, dtype)
    device = torch.device(device) if device is not None else backbone.device

    built: list[Dataset] = []

    def specs() -> dict[str, ArraySpec]:
        built.append(dataset())
        sample = built[0][0]
        with _on(backbone, device):
            feats = backbone.encode_image_dense(sample["image"][None].to(device))
        n, (h, w), dim = len(built[0]), feats.grid, feats.dense.shape[-1]
        return {
            "global": ArraySpec((n, dim), dtype),
            "global_no_pos": ArraySpec((n, dim), dtype),
            "dense": ArraySpec((n, h * w, dim), dtype),
            "target": ArraySpec((n, int(sample["target"].numel())), "int8"),
        }

    def fill(arrays: dict[str, np.ndarray]) -> dict[str, Any]:
        loader = DataLoader(built[0], batch_size=batch_size, num_workers=num_workers)
        stand_ins: list[tuple[int, str]] = []
        with _on(backbone, device):
            for batch in tqdm(loader, desc=desc, unit="batch", mininterval=2):
                images = batch["image"].to(device)
                rows = batch["index"].numpy()
                feats = backbone.encode_image_dense(images, global_pool="clip")
                arrays["global"][rows] = feats.global_.cpu().numpy()
                arrays["global_no_pos"][rows] = feats.global_other.cpu().numpy()
                arrays["dense"][rows] = feats.dense.cpu().numpy()
                arrays["target"][rows] = batch["target"].numpy()
                for row, path in zip(rows.tolist(), batch.get("stand_in", ()), strict=False):
                    if path:
                        stand_ins.append((int(row), str(path)))
        stand_ins.sort()
        return {
            "num_images": len(built[0]),
            "stand_ins": {
                "count": len(stand_ins),
                "rows": [row for row, _ in stand_ins[:STAND_IN_LIMIT]],
                "files": [path for _, path in stand_ins[:STAND_IN_LIMIT]],
            },
        }

    cache = store.get_or_build(key, specs, fill, check=_readable_stand_ins)
    warn_stand_ins(cache)
    return cache


def stand_ins(cache: FeatureCache) -> Mapping[str, Any]:
    """``{"count", "rows", "files"}`` of the images a cache holds stand-in features for."""
    recorded = cache.info.get("stand_ins") or {}
    return recorded if isinstance(recorded, Mapping) else {}


def image_readable(path: str) -> bool:
    """Whether the image decodes now (as the datasets read it: opened and converted to RGB)."""
    try:
        with Image.open(path) as im:
            im.convert("RGB")
    except Exception:  # any decoder failure means "still unreadable"
        return False
    return True


def _readable_stand_ins(cache: FeatureCache) -> str | None:
    """A cache whose stand-in images can be read now is stale even though no file's size or
    mtime changed (a permission fixed with chmod, a storage hiccup at build time)."""
    readable = [f for f in stand_ins(cache).get("files", []) if image_readable(f)]
    if not readable:
        return None
    return (
        f"{len(readable)} image(s) it holds black stand-ins for can be read now, e.g. {readable[0]}"
    )


def warn_stand_ins(cache: FeatureCache) -> None:
    """Warn, on every run that uses ``cache``, that some of its rows are stand-in features."""
    recorded = stand_ins(cache)
    count = int(recorded.get("count", 0))
    if count <= 0:
        return
    files = list(recorded.get("files", []))
    shown = ", ".join(files[:STAND_IN_SHOWN])
    more = f" and {count - STAND_IN_SHOWN} more" if count > STAND_IN_SHOWN else ""
    total = cache.info.get("num_images", len(cache))
    rank_zero_warn(
        f"{count} of {total} images in the feature cache {cache.path} are black stand-ins "
        f"for files that could not be read when it was built (on_bad_image='skip'): "
        f"{shown}{more}. Their scores are meaningless; fix or restore these files (a changed "
        "or now readable file is re-encoded on the next run)."
    )


class _on:
    """Temporarily move the backbone to ``device`` (feature building may run before setup)."""

    def __init__(self, backbone: CLIPBackbone, device: torch.device) -> None:
        self.backbone, self.device, self.previous = backbone, device, backbone.device

    def __enter__(self) -> None:
        self.backbone.to(self.device)

    def __exit__(self, *exc: object) -> None:
        self.backbone.to(self.previous)


class ImageFeatureDataset(Dataset):
    """Evaluation samples read from an image feature cache instead of image files."""

    def __init__(self, cache: FeatureCache) -> None:
        self.cache = cache

    def __len__(self) -> int:
        return len(self.cache["target"])

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = {
            name: torch.from_numpy(np.asarray(self.cache[name][i], dtype=np.float32))
            for name in ("global", "global_no_pos", "dense")
        }
        item["target"] = torch.from_numpy(np.array(self.cache["target"][i]))
        item["index"] = i
        return item
