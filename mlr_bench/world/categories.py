"""The world's 18 categories: names and synonyms (what text says) and shapes (what pixels show).

Each category is a handful of unit-size parts (polygons, discs, rings) that one drawing call
scales, rotates and paints with PIL primitives. Several pairs are deliberately close at small
sizes (circle/ring/hexagon, square/diamond, triangle/tree/house, star/cross) so that recognising
them takes a model that looks, not just one that counts coloured pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import ImageDraw

Fill = int | tuple[int, int, int]


@dataclass(frozen=True)
class Disc:
    """A filled circle at ``(x, y)`` (unit coordinates, y down)."""

    x: float
    y: float
    r: float


@dataclass(frozen=True)
class Ring:
    """A circle outline of line ``width`` (unit coordinates)."""

    x: float
    y: float
    r: float
    width: float


Part = np.ndarray | Disc | Ring  # an np.ndarray part is a polygon, [K, 2] points


def _poly(*points: tuple[float, float]) -> np.ndarray:
    return np.array(points, dtype=np.float64)


def _rect(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return _poly((x0, y0), (x1, y0), (x1, y1), (x0, y1))


def _regular(k: int, r: float, start_deg: float = -90.0, dy: float = 0.0) -> np.ndarray:
    a = np.deg2rad(start_deg) + np.arange(k) * 2 * np.pi / k
    return np.stack([r * np.cos(a), r * np.sin(a) + dy], axis=1)


def _star(points: int, outer: float, inner: float) -> np.ndarray:
    a = np.deg2rad(-90.0) + np.arange(2 * points) * np.pi / points
    r = np.where(np.arange(2 * points) % 2 == 0, outer, inner)
    return np.stack([r * np.cos(a), r * np.sin(a)], axis=1)


def _heart() -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = 13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)
    return np.stack([x / 32, -(y + 2.5) / 32], axis=1)


def _drop() -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, 40, endpoint=False)
    return np.stack([0.55 * np.sin(t) * np.sin(t / 2), -0.5 * np.cos(t)], axis=1)


def _crescent(r_out: float = 0.5, r_in: float = 0.42, offset: float = 0.26) -> np.ndarray:
    """The outer disc minus a disc shifted right: the long outer arc, then the inner arc back."""
    x0 = (offset**2 + r_out**2 - r_in**2) / (2 * offset)
    y0 = math.sqrt(r_out**2 - x0**2)
    alpha = math.atan2(y0, x0)
    beta = math.atan2(y0, x0 - offset)
    outer = np.linspace(alpha, 2 * np.pi - alpha, 28)
    inner = np.linspace(2 * np.pi - beta, beta, 20)
    xs = np.concatenate([r_out * np.cos(outer), offset + r_in * np.cos(inner)])
    ys = np.concatenate([r_out * np.sin(outer), r_in * np.sin(inner)])
    return np.stack([xs + 0.12, ys], axis=1)


def _ellipse(x: float, y: float, rx: float, ry: float, k: int = 28) -> np.ndarray:
    a = np.linspace(0, 2 * np.pi, k, endpoint=False)
    return np.stack([x + rx * np.cos(a), y + ry * np.sin(a)], axis=1)


def _bell() -> np.ndarray:
    right = [(0.0, -0.42), (0.13, -0.4), (0.21, -0.3), (0.24, -0.12), (0.27, 0.05)]
    right += [(0.33, 0.18), (0.44, 0.27), (0.44, 0.33)]
    left = [(-x, y) for x, y in reversed(right[1:])]
    return _poly(*right, *left)


@dataclass(frozen=True)
class Category:
    """One class: its name, the other words for it, a typical colour and its unit shape."""

    name: str
    synonyms: tuple[str, ...]
    color: str | None
    parts: tuple[Part, ...]

    def draw(
        self,
        draw: ImageDraw.ImageDraw,
        cx: float,
        cy: float,
        size: float,
        rotation: float,
        color: Fill,
    ) -> None:
        """Paint the shape ``size`` px across, centred at ``(cx, cy)``, turned ``rotation``°."""
        a = math.radians(rotation)
        rot = np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]]) * size
        centre = np.array([cx, cy])
        for part in self.parts:
            if isinstance(part, np.ndarray):
                draw.polygon((part @ rot + centre).ravel().tolist(), fill=color)
                continue
            x, y = np.array([part.x, part.y]) @ rot + centre
            r = part.r * size
            box = (x - r, y - r, x + r, y + r)
            if isinstance(part, Disc):
                draw.ellipse(box, fill=color)
            else:
                draw.ellipse(box, outline=color, width=max(1, round(part.width * size)))


_ARROW = _poly((-0.5, -0.09), (0.08, -0.09), (0.08, -0.3), (0.5, 0), (0.08, 0.3), (0.08, 0.09))
_HOUSE = _poly((-0.46, -0.02), (0, -0.48), (0.46, -0.02), (0.34, -0.02), (0.34, 0.45))
_PINE = _poly((0, -0.5), (0.24, -0.16), (0.12, -0.16), (0.38, 0.24), (-0.38, 0.24))
_BOLT = _poly((0.12, -0.5), (-0.3, 0.06), (-0.03, 0.06), (-0.14, 0.5), (0.3, -0.08), (0.03, -0.08))

CATEGORIES: tuple[Category, ...] = (
    Category("circle", ("disc", "dot", "ball"), None, (Disc(0, 0, 0.45),)),
    Category("square", ("box", "block", "tile"), None, (_rect(-0.38, -0.38, 0.38, 0.38),)),
    Category("triangle", ("wedge", "pyramid"), None, (_regular(3, 0.55, -90, dy=0.1),)),
    Category("star", ("pentagram", "star shape"), "yellow", (_star(5, 0.52, 0.22),)),
    Category(
        "cross",
        ("plus", "plus sign"),
        "red",
        (_rect(-0.45, -0.14, 0.45, 0.14), _rect(-0.14, -0.45, 0.14, 0.45)),
    ),
    Category("heart", ("love heart", "valentine"), "red", (_heart(),)),
    Category(
        "diamond", ("rhombus", "lozenge"), None, (_poly((0, -0.5), (0.3, 0), (0, 0.5), (-0.3, 0)),)
    ),
    Category("ring", ("hoop", "donut", "annulus"), None, (Ring(0, 0, 0.43, 0.14),)),
    Category("arrow", ("pointer", "direction marker"), None, (_poly(*_ARROW, (-0.5, 0.09)),)),
    Category("moon", ("crescent", "crescent moon"), "white", (_crescent(),)),
    Category("hexagon", ("hex", "honeycomb cell", "hexagonal shape"), None, (_regular(6, 0.5, 0),)),
    Category(
        "house",
        ("home", "hut", "cottage"),
        "brown",
        (_poly(*_HOUSE, (-0.34, 0.45), (-0.34, -0.02)), _rect(0.16, -0.42, 0.27, -0.18)),
    ),
    Category(
        "tree",
        ("pine", "pine tree", "fir tree"),
        "green",
        (_poly(*_PINE, (-0.12, -0.16), (-0.24, -0.16)), _rect(-0.07, 0.2, 0.07, 0.5)),
    ),
    Category("drop", ("droplet", "raindrop", "teardrop"), "blue", (_drop(),)),
    Category("bolt", ("lightning", "lightning bolt", "thunderbolt"), "yellow", (_BOLT,)),
    Category(
        "key",
        ("door key", "skeleton key"),
        "grey",
        (
            Ring(-0.32, 0, 0.17, 0.09),
            _rect(-0.16, -0.05, 0.5, 0.05),
            _rect(0.28, 0.04, 0.36, 0.18),
            _rect(0.42, 0.04, 0.5, 0.2),
        ),
    ),
    Category(
        "bell",
        ("church bell", "handbell", "chime"),
        "yellow",
        (_bell(), Disc(0, 0.38, 0.08), Disc(0, -0.45, 0.06)),
    ),
    Category(
        "fish",
        ("goldfish", "minnow"),
        "orange",
        (_ellipse(-0.1, 0, 0.36, 0.21), _poly((0.18, 0), (0.5, -0.24), (0.5, 0.24))),
    ),
)

CLASS_NAMES: tuple[str, ...] = tuple(c.name for c in CATEGORIES)
NUM_CLASSES = len(CLASS_NAMES)
#: Class name → every word or phrase that means it, the name first (what a dataset ships).
SYNONYMS: dict[str, list[str]] = {c.name: [c.name, *c.synonyms] for c in CATEGORIES}

#: Scene themes: which categories tend to appear together (co-occurrence, like real datasets).
THEMES: dict[str, tuple[str, ...]] = {
    "geometry": ("circle", "square", "triangle", "hexagon", "diamond"),
    "night": ("star", "moon", "bolt", "drop", "bell"),
    "village": ("house", "tree", "key", "bell", "circle"),
    "love": ("heart", "ring", "diamond", "star", "key"),
    "ocean": ("fish", "drop", "moon", "ring", "triangle"),
    "signs": ("arrow", "cross", "bolt", "square", "hexagon", "triangle"),
}
THEME_INDICES: dict[str, tuple[int, ...]] = {
    t: tuple(CLASS_NAMES.index(n) for n in names) for t, names in THEMES.items()
}

_IRREGULAR_PLURALS = {"fish": "fish", "goldfish": "goldfish", "minnow": "minnows"}


def plural(word: str) -> str:
    """English plural of a name or phrase (last word inflected): box→boxes, fish→fish."""
    head, _, last = word.rpartition(" ")
    if last in _IRREGULAR_PLURALS:
        out = _IRREGULAR_PLURALS[last]
    elif last.endswith(("s", "x", "z", "ch", "sh")):
        out = last + "es"
    elif last.endswith("y") and len(last) > 1 and last[-2] not in "aeiou":
        out = last[:-1] + "ies"
    else:
        out = last + "s"
    return f"{head} {out}" if head else out
