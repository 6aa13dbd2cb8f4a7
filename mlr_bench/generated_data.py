"""Generated training images (the ``generated_images`` kind): manifest → frozen feature cache.

Text-to-image methods (T2I-PAL) train on images synthesised from captions, labelled with their
caption's classes. The images live in a folder written by :mod:`mlr_bench.generation` (the
world's renderer or Stable Diffusion via ``mlr-bench generate``) with a manifest; CLIP is frozen,
so their features are computed once into the same kind of cache as evaluation images (global,
global without positional embedding, dense, plus the multi-hot target), keyed by the backbone,
the preprocessing and the folder's identity (its name, a hash of its manifest and every image
file's size and mtime).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from mlr_bench.clip import CLIPBackbone
from mlr_bench.errors import MLRBenchError
from mlr_bench.features import FeatureCache, FeatureStore, image_features
from mlr_bench.features.keys import files_fingerprint
from mlr_bench.text.corpus import TextCorpus

if TYPE_CHECKING:
    from mlr_bench.generation import CaptionItem, GeneratedImage


class GeneratedDataError(MLRBenchError, ValueError):
    """Generated training images are missing or do not fit the dataset (labels, files)."""


def caption_items(
    corpus: TextCorpus, class_names: Sequence[str], limit: int | None = None
) -> list[CaptionItem]:
    """The first ``limit`` captions that name at least one class, as generation requests.

    Captions without a class would give images without a positive label (no ranking signal),
    so they are skipped, as TaI-DPT drops them from its corpora. ``caption_id`` is the caption's
    position in the corpus.
    """
    from mlr_bench.generation import CaptionItem

    items: list[CaptionItem] = []
    for i, (text, row) in enumerate(zip(corpus.texts, corpus.labels, strict=True)):
        if limit is not None and len(items) >= limit:
            break
        labels = tuple(class_names[c] for c in np.flatnonzero(np.asarray(row) > 0))
        if labels:
            items.append(CaptionItem(caption_id=f"{i:07d}", text=text, labels=labels))
    return items


def items_digest(items: Sequence[CaptionItem]) -> str:
    """Content hash of generation requests (names the world's output folder)."""
    h = hashlib.sha256()
    for item in items:
        h.update(f"{item.caption_id}\0{item.text}\0{'|'.join(item.labels)}\n".encode())
    return h.hexdigest()[:16]


def manifest_targets(
    images: Sequence[GeneratedImage], class_names: Sequence[str], folder: Path
) -> np.ndarray:
    """Multi-hot ``[N, C]`` int8 targets of the manifest's label names; unknown names fail."""
    index = {name: c for c, name in enumerate(class_names)}
    targets = np.zeros((len(images), len(class_names)), dtype=np.int8)
    for row, image in enumerate(images):
        for label in image.labels:
            if label not in index:
                raise GeneratedDataError(
                    f"{folder}: manifest entry {image.caption_id!r} (k={image.k}) has label "
                    f"{label!r}, which is not a class of this dataset; expected one of "
                    f"{list(class_names)} (was the folder generated for another dataset?)"
                )
            targets[row, index[label]] = 1
    return targets


def manifest_digest(images: Sequence[GeneratedImage]) -> str:
    """Hash of everything that defines the generated images (ids, prompts, seeds, labels)."""
    h = hashlib.sha256()
    for im in images:
        fields = (im.caption_id, im.k, im.text, "|".join(im.labels), im.seed, im.generator)
        h.update("\0".join(map(str, fields)).encode() + b"\n")
        h.update(Path(im.path).name.encode() + b"\n")
    return h.hexdigest()[:20]


class GeneratedImages(Dataset):
    """Generated images with their caption targets, as evaluation-style samples."""

    def __init__(
        self,
        images: Sequence[GeneratedImage],
        targets: np.ndarray,
        folder: Path,
        transform: Callable[[Any], torch.Tensor],
    ) -> None:
        self.images = list(images)
        self.targets = torch.from_numpy(targets)
        self.folder = folder
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def path(self, i: int) -> Path:
        path = Path(self.images[i].path)
        return path if path.is_absolute() else self.folder / path

    def __getitem__(self, i: int) -> dict[str, Any]:
        path = self.path(i)
        try:
            with Image.open(path) as im:
                image = im.convert("RGB")
        except (OSError, ValueError) as exc:
            raise GeneratedDataError(
                f"{path}: cannot read generated image ({exc}); expected the image listed in "
                f"{self.folder}'s manifest (re-run the generation to complete the folder)"
            ) from exc
        return {"image": self.transform(image), "target": self.targets[i], "index": i}


def read_generated(folder: Path) -> list[GeneratedImage]:
    """The manifest of a generation folder; a missing or empty one is a clear error."""
    from mlr_bench.generation import read_manifest

    if not folder.is_dir():
        raise GeneratedDataError(
            f"{folder}: no such folder; expected the output folder of `mlr-bench generate`"
        )
    images = read_manifest(folder)
    if not images:
        raise GeneratedDataError(f"{folder}: the manifest lists no generated image")
    return images


def generated_image_features(
    store: FeatureStore,
    backbone: CLIPBackbone,
    folder: Path,
    class_names: Sequence[str],
    transform: Callable[[Any], torch.Tensor],
    batch_size: int = 64,
    num_workers: int = 0,
    device: torch.device | str | None = None,
) -> FeatureCache:
    """Frozen features + targets of a generation folder's images (built once, then reused)."""
    folder = Path(folder).expanduser()
    images = read_generated(folder)
    targets = manifest_targets(images, class_names, folder)
    dataset = GeneratedImages(images, targets, folder, transform)
    identity = {
        "kind": "generated_images",
        "folder": folder.resolve().name,
        "manifest": manifest_digest(images),
        "num_images": len(images),
        "classes": list(class_names),
        # a regenerated or hand-replaced image keeps its manifest line: size + mtime tell
        "files": files_fingerprint((dataset.path(i) for i in range(len(dataset))), folder),
    }
    return image_features(
        store,
        backbone,
        lambda: dataset,
        transform,
        identity,
        batch_size=batch_size,
        num_workers=num_workers,
        device=device,
        desc="image features (generated)",
    )
