"""Seeded splits of the world: images, ground-truth labels, captions and the scenes behind them.

Item ``i`` of a split with seed ``s`` comes from its own generator ``default_rng([s, i])``: the
scene first, then its captions, while texture and noise come from a seed stored in the scene.
So an item never depends on how many items were asked for, and ``generate_captions`` gives
exactly the first caption ``generate`` gives for the same seed, without rendering a pixel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mlr_bench.world.captions import caption_scene
from mlr_bench.world.categories import NUM_CLASSES
from mlr_bench.world.raster import render_scene
from mlr_bench.world.scenes import Scene, sample_scene


@dataclass
class WorldSplit:
    """``images`` uint8 ``[N, H, W, 3]``, ``labels`` int8 ``[N, C]``, ``captions`` (``N * k``:
    image ``i`` owns ``captions[i*k:(i+1)*k]``), ``scenes``; ``masks`` bool ``[N, C, H, W]`` if
    asked for.
    """

    images: np.ndarray
    labels: np.ndarray
    captions: list[str]
    scenes: list[Scene]
    masks: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.images)

    @property
    def captions_per_image(self) -> int:
        return len(self.captions) // max(1, len(self.images))


def _item_rng(seed: int, i: int) -> np.random.Generator:
    return np.random.default_rng([seed, i])


def generate(
    n: int,
    seed: int,
    image_size: int = 64,
    captions_per_image: int = 1,
    with_masks: bool = False,
) -> WorldSplit:
    """Render ``n`` photo-style scenes with labels and ``captions_per_image`` captions each."""
    if n < 0 or captions_per_image < 1:
        raise ValueError("need n >= 0 and captions_per_image >= 1")
    images = np.empty((n, image_size, image_size, 3), dtype=np.uint8)
    labels = np.zeros((n, NUM_CLASSES), dtype=np.int8)
    masks = np.zeros((n, NUM_CLASSES, image_size, image_size), bool) if with_masks else None
    captions: list[str] = []
    scenes: list[Scene] = []
    for i in range(n):
        rng = _item_rng(seed, i)
        scene = sample_scene(rng, image_size)
        captions.extend(caption_scene(scene, rng) for _ in range(captions_per_image))
        if masks is not None:
            images[i], masks[i] = render_scene(scene, return_masks=True)
        else:
            images[i] = render_scene(scene)
        labels[i] = scene.labels()
        scenes.append(scene)
    return WorldSplit(images, labels, captions, scenes, masks)


def generate_captions(n: int, seed: int, image_size: int = 64) -> tuple[list[str], np.ndarray]:
    """``n`` captions of fresh scenes and the scenes' true labels ``[n, C]``, without rendering."""
    captions: list[str] = []
    labels = np.zeros((n, NUM_CLASSES), dtype=np.int8)
    for i in range(n):
        rng = _item_rng(seed, i)
        scene = sample_scene(rng, image_size)
        captions.append(caption_scene(scene, rng))
        labels[i] = scene.labels()
    return captions, labels
