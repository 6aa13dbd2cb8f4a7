"""What a text-to-image generator is, what it is asked for, and where its images go.

A generator is identified by ``id`` plus ``settings()``; together with the number of images per
caption they name the output folder, so changing any of them never mixes images from different
set-ups. Each image's seed is a pure function of (caption id, k), so a batch, a resumed run and
any number of ranks all ask for the same images.
"""

from __future__ import annotations

import hashlib
import json
import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from mlr_bench.errors import MLRBenchError

#: Bumped when the folder layout or manifest fields change incompatibly.
FORMAT_VERSION = 1


class GenerationError(MLRBenchError):
    """Bad generation input or an output folder that does not fit the request."""


@dataclass(frozen=True)
class CaptionItem:
    """One generation request: a caption, its stable id and its class names."""

    caption_id: str
    text: str
    labels: tuple[str, ...]


@dataclass(frozen=True)
class GeneratedImage:
    """One manifest entry: image ``k`` of caption ``caption_id`` at ``path``."""

    caption_id: str
    k: int
    text: str
    labels: tuple[str, ...]
    seed: int
    path: Path
    generator: str


def image_seed(caption_id: str, k: int) -> int:
    """Seed of image ``k`` of a caption: blake2b of both, 63 bits (fits torch and numpy)."""
    digest = hashlib.blake2b(f"{caption_id}\0{k}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & (2**63 - 1)


class TextToImage(ABC):
    """A text-to-image model: ``generate(prompts, seeds)`` gives one image per prompt.

    Implementations must make image ``i`` depend only on ``prompts[i]``, ``seeds[i]`` and the
    settings (not on its batch neighbours), up to the numerical noise of batched kernels.
    """

    #: Stable name of the generator (part of the folder name and of every manifest entry).
    id: str
    #: File format of the saved images: "png" or "jpeg".
    image_format: str = "png"
    #: Quality of JPEG files (ignored for PNG).
    jpeg_quality: int = 95
    #: fsync every image before listing it. Without it a kill is still safe (the page cache
    #: survives); only a power loss could leave a listed image empty. Cheap generators skip it.
    durable: ClassVar[bool] = True

    @abstractmethod
    def settings(self) -> dict[str, Any]:
        """Everything that changes the images (JSON-serialisable)."""

    @abstractmethod
    def generate(
        self, prompts: Sequence[str], seeds: Sequence[int]
    ) -> list[Image.Image | np.ndarray]:
        """One RGB image per prompt (PIL image or ``[H, W, 3]`` uint8 array)."""

    @property
    def extension(self) -> str:
        return "jpg" if self.image_format == "jpeg" else "png"

    def encode(self, image: Image.Image | np.ndarray) -> bytes:
        """The image file's bytes (deterministic for identical pixels)."""
        import io

        if isinstance(image, np.ndarray):
            image = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8))
        buffer = io.BytesIO()
        if self.image_format == "jpeg":
            image.convert("RGB").save(buffer, format="JPEG", quality=self.jpeg_quality)
        else:
            image.convert("RGB").save(buffer, format="PNG")
        return buffer.getvalue()


def check_image_format(image_format: str) -> str:
    fmt = {"png": "png", "jpeg": "jpeg", "jpg": "jpeg"}.get(str(image_format).lower())
    if fmt is None:
        raise GenerationError(f"image_format must be 'png' or 'jpeg', not {image_format!r}")
    return fmt


def folder_identity(
    generator: TextToImage, images_per_caption: int, captions: dict[str, Any] | None = None
) -> dict[str, Any]:
    """What ``settings.json`` holds and the folder hash covers. ``captions`` says which
    captions of a dataset's test images were left out (COCO under the clean protocol): a
    folder generated from them is another folder."""
    identity = {
        "generator": generator.id,
        "settings": generator.settings(),
        "images_per_caption": int(images_per_caption),
        "format_version": FORMAT_VERSION,
    }
    return identity | ({"captions": captions} if captions else {})


def output_folder(
    generator: TextToImage,
    out_root: str | Path,
    images_per_caption: int = 1,
    captions: dict[str, Any] | None = None,
) -> Path:
    """``<out_root>/<slug>-<hash of (generator id, settings, images_per_caption, captions)>``."""
    identity = folder_identity(generator, images_per_caption, captions)
    text = json.dumps(identity, sort_keys=True, separators=(",", ":"), default=str)
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", generator.id).strip("-.")[:60] or "generator"
    return Path(out_root).expanduser() / f"{slug}-{digest}"
