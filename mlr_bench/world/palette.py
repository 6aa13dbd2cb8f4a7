"""Named colours of the world: captions say "red", pixels need RGB, and both must agree."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

RGB = tuple[int, int, int]

#: The colour words captions use, with the RGB a renderer paints for them.
COLORS: dict[str, RGB] = {
    "red": (205, 35, 40),
    "green": (45, 150, 60),
    "blue": (35, 75, 205),
    "yellow": (240, 210, 35),
    "orange": (240, 130, 25),
    "purple": (125, 45, 170),
    "pink": (245, 135, 185),
    "white": (245, 245, 240),
    "black": (25, 25, 30),
    "grey": (128, 128, 128),
    "brown": (120, 75, 35),
}
COLOR_NAMES: tuple[str, ...] = tuple(COLORS)
_COLOR_TABLE = np.array([COLORS[c] for c in COLOR_NAMES], dtype=np.float32)

#: Words free text may use for a colour (render_caption understands them all).
COLOR_WORDS: dict[str, str] = {
    **{c: c for c in COLOR_NAMES},
    "gray": "grey",
    "golden": "yellow",
    "gold": "yellow",
    "silver": "grey",
    "crimson": "red",
    "scarlet": "red",
    "navy": "blue",
    "violet": "purple",
}


def nearest_color(rgb: tuple[float, float, float] | np.ndarray) -> str:
    """The colour word a person would most likely use for ``rgb`` (nearest named colour)."""
    d = ((_COLOR_TABLE - np.asarray(rgb, dtype=np.float32)) ** 2).sum(axis=1)
    return COLOR_NAMES[int(d.argmin())]


def jitter(rgb: Sequence[float] | np.ndarray, rng: np.random.Generator, amount: float) -> RGB:
    """``rgb`` moved by up to ``amount`` per channel, so no two objects share an exact colour."""
    u0, u1, u2 = rng.random(3).tolist()  # plain floats: runs per object, numpy would be slower
    r, g, b = (float(c) for c in rgb)
    return (
        min(255, max(0, round(r + (2 * u0 - 1) * amount))),
        min(255, max(0, round(g + (2 * u1 - 1) * amount))),
        min(255, max(0, round(b + (2 * u2 - 1) * amount))),
    )


def color_distance(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    """Sum of absolute channel differences (how easily two colours are told apart)."""
    return float(sum(abs(float(x) - float(y)) for x, y in zip(a, b, strict=True)))
