"""The world's text-to-image stand-in: renders the scene a caption describes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from mlr_bench.generation.base import GenerationError, TextToImage

#: Bump when ``render_caption`` changes what it draws for a given caption and seed.
RENDERER_VERSION = 1


class WorldRenderer(TextToImage):
    """``mlr_bench.world.render_caption`` with a numpy RNG seeded from the image seed.

    Stands in for Stable Diffusion on the built-in synthetic world (offline, ~3 ms an image).
    Images are PNG; they are cheap to regenerate, so they are not fsynced (kill-safe anyway).
    """

    id = "world-renderer"
    durable: ClassVar[bool] = False

    def __init__(self, image_size: int = 96) -> None:
        if int(image_size) < 8:
            raise GenerationError(f"image_size must be at least 8 pixels, not {image_size}")
        self.image_size = int(image_size)

    def settings(self) -> dict[str, Any]:
        return {"image_size": self.image_size, "renderer_version": RENDERER_VERSION}

    def generate(self, prompts: Sequence[str], seeds: Sequence[int]) -> list[np.ndarray]:
        from mlr_bench.world import render_caption

        return [
            render_caption(text, np.random.default_rng(seed), image_size=self.image_size)
            for text, seed in zip(prompts, seeds, strict=True)
        ]
