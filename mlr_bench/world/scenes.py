"""What a scene is (objects on a background) and how the world samples one.

A scene is pure data: rendering (``raster.render_scene``) and describing (``captions``) both
read it, so the pixels and the words of one scene always agree. Objects stay localised (at most
40% of the image side) and overlap each other only partly, so every labelled object stays
visible and a dense model can tell where it is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mlr_bench.world.categories import CATEGORIES, NUM_CLASSES, THEME_INDICES, THEMES
from mlr_bench.world.palette import (
    COLOR_NAMES,
    COLORS,
    RGB,
    color_distance,
    jitter,
    nearest_color,
)

#: P(1, 2, 3, 4 objects).
OBJECT_COUNT_P = (0.30, 0.30, 0.25, 0.15)
#: P(an object comes from the scene's theme) — the rest are uniform: co-occurrence, not rules.
THEME_P = 0.75
#: P(one object repeats an earlier category) for scenes of 2+ objects ("two stars").
DUPLICATE_P = 0.10
#: Object size as a fraction of the image side (its extent across).
SIZE_RANGE = (0.18, 0.42)
MAX_ROTATION = 30.0
TYPICAL_COLOR_P = 0.40
COLOR_JITTER = 30.0
#: P(an object is painted close to the background colour: a little lighter or darker).
CAMOUFLAGE_P = 0.08
#: Centres keep this fraction of the summed radii apart: partial occlusion, never total.
MIN_SEPARATION = 0.65

#: Background tints that go with a theme (used half of the time).
_THEME_BACKGROUNDS: dict[str, RGB] = {
    "geometry": (222, 222, 215),
    "night": (25, 30, 70),
    "village": (150, 190, 120),
    "love": (240, 200, 210),
    "ocean": (60, 120, 170),
    "signs": (190, 190, 180),
}
_THEME_NAMES = tuple(THEMES)


@dataclass(frozen=True)
class SceneObject:
    """One drawn instance: category, colour (word and RGB), centre, size and rotation (px, deg)."""

    category: int
    color: str
    rgb: RGB
    x: float
    y: float
    size: float
    rotation: float

    @property
    def name(self) -> str:
        return CATEGORIES[self.category].name


@dataclass(frozen=True)
class Background:
    """A two-colour gradient along ``angle`` (deg) with low-frequency texture of ``texture``."""

    color_a: RGB
    color_b: RGB
    angle: float
    texture: float
    seed: int  # drives texture, clutter and pixel noise, so a scene renders the same every time

    @property
    def mean_rgb(self) -> np.ndarray:
        return np.asarray(self.mean_color)

    @property
    def mean_color(self) -> tuple[float, float, float]:
        (r0, g0, b0), (r1, g1, b1) = self.color_a, self.color_b
        return ((r0 + r1) / 2, (g0 + g1) / 2, (b0 + b1) / 2)


@dataclass(frozen=True)
class Scene:
    """Objects in painting order (later ones may partly cover earlier ones) on a background.

    Positions and sizes are in pixels of a ``canvas``-sized image; rendering at another size
    scales them.
    """

    objects: tuple[SceneObject, ...]
    background: Background
    theme: str
    canvas: int
    style: str = "photo"

    @property
    def categories(self) -> frozenset[int]:
        return frozenset(o.category for o in self.objects)

    def labels(self) -> np.ndarray:
        """Ground-truth multi-hot vector ``[C]`` (int8)."""
        out = np.zeros(NUM_CLASSES, dtype=np.int8)
        out[list(self.categories)] = 1
        return out


def _pick(rng: np.random.Generator, options: list[int] | tuple[int, ...]) -> int:
    return options[int(rng.random() * len(options))]


def _object_count(rng: np.random.Generator) -> int:
    u, acc = rng.random(), 0.0
    for k, p in enumerate(OBJECT_COUNT_P, start=1):
        acc += p
        if u < acc:
            return k
    return len(OBJECT_COUNT_P)


def _choose_categories(rng: np.random.Generator, theme: str, n: int) -> list[int]:
    chosen: list[int] = []
    for _ in range(n):
        themed = [c for c in THEME_INDICES[theme] if c not in chosen]
        pool = themed if themed and rng.random() < THEME_P else None
        if pool is None:
            pool = [c for c in range(NUM_CLASSES) if c not in chosen]
        chosen.append(_pick(rng, pool))
    if n >= 2 and rng.random() < DUPLICATE_P:
        chosen[-1] = _pick(rng, chosen[:-1])
    return chosen


def _background(rng: np.random.Generator, theme: str) -> Background:
    if rng.random() < 0.5:
        base = jitter(_THEME_BACKGROUNDS[theme], rng, 35)
    else:
        base = jitter((130, 130, 130), rng, 100)
    return Background(
        color_a=base,
        color_b=jitter(base, rng, 60),
        angle=rng.random() * 360,
        texture=rng.random() * 30,
        seed=int(rng.random() * 2**53),
    )


def _color(rng: np.random.Generator, category: int, background: Background) -> tuple[str, RGB]:
    typical = CATEGORIES[category].color
    if rng.random() < CAMOUFLAGE_P:  # low contrast, but a careful eye still sees it
        step = 22 + 14 * rng.random()
        sign = 1 if sum(background.mean_color) < 3 * 128 else -1
        rgb = jitter([c + sign * step for c in background.mean_color], rng, 10)
        return nearest_color(rgb), rgb
    if typical is not None and rng.random() < TYPICAL_COLOR_P:
        return typical, jitter(COLORS[typical], rng, COLOR_JITTER)
    name = _pick(rng, COLOR_NAMES)
    if color_distance(COLORS[name], background.mean_color) < 90:
        name = _pick(rng, COLOR_NAMES)  # avoid most accidental camouflage
    return name, jitter(COLORS[name], rng, COLOR_JITTER)


def place(
    rng: np.random.Generator, size: float, placed: list[SceneObject], canvas: int
) -> tuple[float, float, float]:
    """A centre (and maybe a smaller size) that overlaps ``placed`` objects only partly."""
    best = (-1.0, 0.0, 0.0, size)
    for attempt in range(24):
        if attempt and attempt % 8 == 0:
            size *= 0.85
        margin = 0.45 * size
        x = margin + rng.random() * (canvas - 2 * margin)
        y = margin + rng.random() * (canvas - 2 * margin)
        score = min(
            (math.hypot(x - o.x, y - o.y) / ((size + o.size) / 2) for o in placed),
            default=math.inf,
        )
        if score >= MIN_SEPARATION:
            return x, y, size
        if score > best[0]:
            best = (score, x, y, size)
    return best[1], best[2], best[3]


def sample_scene(rng: np.random.Generator, image_size: int = 64) -> Scene:
    """A random scene: 1–4 objects, mostly from one theme, on a theme-tinted background."""
    theme = _THEME_NAMES[int(rng.random() * len(_THEME_NAMES))]
    background = _background(rng, theme)
    objects: list[SceneObject] = []
    lo, hi = SIZE_RANGE
    for category in _choose_categories(rng, theme, _object_count(rng)):
        size = (lo + rng.random() * (hi - lo)) * image_size
        x, y, size = place(rng, size, objects, image_size)
        name, rgb = _color(rng, category, background)
        rotation = (rng.random() * 2 - 1) * MAX_ROTATION
        objects.append(SceneObject(category, name, rgb, x, y, size, rotation))
    return Scene(tuple(objects), background, theme, image_size)
