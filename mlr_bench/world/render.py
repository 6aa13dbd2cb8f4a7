"""The text-to-image stand-in for Stable Diffusion: a caption in, a "generated" image out.

Methods that train on synthesised images (text → image → classifier) get what they would get
from a diffusion model: the named objects, in the named colours and sizes, at random places, but
in a clean, saturated, soft style that differs from the noisy test photos — the domain gap such
methods must live with. Unnamed details (position, exact shade) are invented.
"""

from __future__ import annotations

import numpy as np

from mlr_bench.world.categories import CATEGORIES
from mlr_bench.world.mentions import find_mentions
from mlr_bench.world.palette import COLOR_NAMES, COLORS, color_distance, jitter
from mlr_bench.world.raster import render_scene
from mlr_bench.world.scenes import Background, Scene, SceneObject, place

#: At most this many objects per generated image, and per mention.
MAX_OBJECTS = 6
MAX_PER_MENTION = 3
#: Generated objects are larger and straighter than photo objects: diffusion models centre
#: and enlarge what the prompt asks for.
GENERATED_SIZE_RANGE = (0.22, 0.40)
GENERATED_ROTATION = 15.0
TYPICAL_COLOR_P = 0.6


def _clean_background(rng: np.random.Generator) -> Background:
    base = jitter((200, 200, 200), rng, 55)
    return Background(
        base, jitter(base, rng, 45), rng.random() * 360, 0.0, int(rng.random() * 2**53)
    )


def _object_color(
    rng: np.random.Generator, category: int, asked: str | None, background: Background
) -> tuple[str, tuple[int, int, int]]:
    name = asked
    if name is None:
        typical = CATEGORIES[category].color
        use_typical = typical is not None and rng.random() < TYPICAL_COLOR_P
        name = typical if use_typical else COLOR_NAMES[int(rng.random() * len(COLOR_NAMES))]
        if color_distance(COLORS[name], background.mean_color) < 100:
            name = "black" if sum(background.mean_color) > 3 * 128 else "white"  # stay visible
    return name, jitter(COLORS[name], rng, 20)


def scene_from_caption(caption: str, rng: np.random.Generator, image_size: int = 64) -> Scene:
    """The scene a caption asks for (style "generated"); no class named → an empty scene."""
    background = _clean_background(rng)
    objects: list[SceneObject] = []
    lo, hi = GENERATED_SIZE_RANGE
    for mention in find_mentions(caption):
        for _ in range(min(mention.count, MAX_PER_MENTION)):
            if len(objects) >= MAX_OBJECTS:
                break
            frac = mention.size if mention.size is not None else lo + rng.random() * (hi - lo)
            size = frac * (0.9 + 0.2 * rng.random()) * image_size
            x, y, size = place(rng, size, objects, image_size)
            name, rgb = _object_color(rng, mention.category, mention.color, background)
            rotation = (rng.random() * 2 - 1) * GENERATED_ROTATION
            objects.append(SceneObject(mention.category, name, rgb, x, y, size, rotation))
    return Scene(tuple(objects), background, "generated", image_size, style="generated")


def render_caption(caption: str, rng: np.random.Generator, image_size: int = 64) -> np.ndarray:
    """A "generated"-style image ``[H, W, 3]`` uint8 of what ``caption`` names."""
    return render_scene(scene_from_caption(caption, rng, image_size), rng=rng)
