"""Turning a scene into pixels, in the "photo" style of test images or the "generated" style.

Shapes are drawn once, at twice the resolution, as object ids into a single 8-bit map (painting
order = occlusion order). Averaging that map's 2×2 blocks gives each object's antialiased
coverage; colours, shading, background and noise are then mixed with numpy, and an object's mask
is where it covers at least half of a pixel. "photo" adds a textured background, clutter strokes
and pixel noise; "generated" (the text-to-image stand-in) is clean, saturated and soft, as real
generated images differ from real photos.
"""

from __future__ import annotations

import math
from functools import cache

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from mlr_bench.world.categories import CATEGORIES, NUM_CLASSES
from mlr_bench.world.scenes import Scene

STYLES = ("photo", "generated")
SUPERSAMPLE = 2
#: Gaussian pixel noise of the photo style (σ, in 0–255 units; each image draws 0.7–1.3×).
PHOTO_NOISE = 12.0
#: Generated style: colours pushed this much further from grey, then blurred this much (px @64).
GENERATED_SATURATION = 1.35
GENERATED_BLUR = 0.7
_CLUTTER_ID = 100  # ids ≥ this in the id map are clutter, not objects


@cache
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates ``(x, y)`` in [0, 1], shape ``[size, size]``."""
    c = (np.arange(size, dtype=np.float32) + 0.5) / size
    return np.broadcast_to(c[None, :], (size, size)), np.broadcast_to(c[:, None], (size, size))


def _coverage(hits: np.ndarray) -> np.ndarray:
    """Fraction of each output pixel's k×k sub-pixels where ``hits`` (antialiasing)."""
    k = SUPERSAMPLE
    hits = hits.view(np.uint8)
    total = sum(hits[i::k, j::k] for i in range(k) for j in range(k))
    return total.astype(np.float32) * (1 / (k * k))


def _saturate(rgb: np.ndarray, factor: float) -> np.ndarray:
    grey = rgb.mean(axis=-1, keepdims=True)
    return np.clip(grey + (rgb - grey) * factor, 0, 255)


def _background(scene: Scene, size: int, style: str, rng: np.random.Generator) -> np.ndarray:
    bg = scene.background
    xs, ys = _grid(size)
    a = math.radians(bg.angle)
    t = ((xs - 0.5) * math.cos(a) + (ys - 0.5) * math.sin(a)) / math.sqrt(2) + 0.5
    ca = np.asarray(bg.color_a, np.float32)
    cb = np.asarray(bg.color_b, np.float32)
    if style == "generated":
        ca, cb = _saturate(ca, GENERATED_SATURATION), _saturate(cb, GENERATED_SATURATION)
    out = ca + (cb - ca) * t[..., None]
    if style == "photo" and bg.texture > 0:
        coarse = rng.standard_normal((5, 5)).astype(np.float32)
        smooth = Image.fromarray(coarse, mode="F").resize((size, size), Image.Resampling.BICUBIC)
        tint = 1 + 0.15 * rng.standard_normal(3).astype(np.float32)
        out = out + bg.texture * np.asarray(smooth)[..., None] * tint
    return out


def _clutter(draw: ImageDraw.ImageDraw, rng: np.random.Generator, big: int, fill: int) -> None:
    """A short scribble, speck or arc: visual noise that is no category."""
    k = SUPERSAMPLE
    x, y = rng.random(2) * big
    kind = rng.random()
    if kind < 0.45:
        points = [(x, y)]
        for _ in range(1 + int(rng.random() * 3)):
            a = rng.random() * 2 * math.pi
            step = (0.05 + 0.12 * rng.random()) * big
            x, y = x + step * math.cos(a), y + step * math.sin(a)
            points.append((x, y))
        draw.line(points, fill=fill, width=k * (1 + int(rng.random() * 2)), joint="curve")
    elif kind < 0.75:
        r = k * (0.6 + 1.2 * rng.random())
        draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)
    else:
        r = (0.04 + 0.08 * rng.random()) * big
        start = rng.random() * 360
        end = start + 40 + rng.random() * 120
        draw.arc((x - r, y - r, x + r, y + r), start, end, fill=fill, width=k)


def _clutter_rgb(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    if rng.random() < 0.5:  # darker or lighter than the background: dust and scratches
        shift = (rng.random() * 2 - 1) * 110
        return np.clip(scene.background.mean_rgb + shift + rng.random(3) * 30, 0, 255)
    return rng.random(3) * 255


def _shading(
    obj_x: float, obj_y: float, obj_size: float, size: int, style: str, rng: np.random.Generator
) -> np.ndarray:
    """Per-pixel brightness of one object: a lit side (photo) or a glossy spot (generated)."""
    xs, ys = _grid(size)
    dx, dy = xs * size - obj_x, ys * size - obj_y
    if style == "photo":
        a = rng.random() * 2 * math.pi
        ramp = (dx * math.cos(a) + dy * math.sin(a)) / max(obj_size, 1.0)
        return np.clip(1 + 0.35 * rng.random() * ramp, 0.7, 1.3)
    hx, hy = -0.18 * obj_size, -0.18 * obj_size  # highlight up-left of the centre
    d = np.hypot(dx - hx, dy - hy) / max(obj_size, 1.0)
    return 1.18 - 0.3 * np.clip(d, 0, 1)


def render_scene(
    scene: Scene,
    image_size: int | None = None,
    style: str | None = None,
    rng: np.random.Generator | None = None,
    return_masks: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Pixels ``[H, W, 3]`` uint8 of ``scene`` (and, with ``return_masks``, masks ``[C, H, W]``).

    ``image_size`` defaults to the scene's canvas, ``style`` to the scene's style. The texture,
    clutter and noise come from ``rng``, by default one seeded by the scene, so rendering is
    deterministic. A category's mask holds the pixels its objects still cover after occlusion.
    """
    size = image_size or scene.canvas
    style = style or scene.style
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}; expected one of {STYLES}")
    rng = rng if rng is not None else np.random.default_rng(scene.background.seed)
    photo = style == "photo"
    k = SUPERSAMPLE
    big = size * k
    scale = big / scene.canvas

    id_image = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(id_image)
    n_clutter = 3 + int(rng.random() * 3) if photo else 0
    for j in range(n_clutter):
        _clutter(draw, rng, big, _CLUTTER_ID + j)
    for j, obj in enumerate(scene.objects):
        CATEGORIES[obj.category].draw(
            draw, obj.x * scale, obj.y * scale, obj.size * scale, obj.rotation, j + 1
        )
    if photo and rng.random() < 0.3:  # the odd scratch across an object
        _clutter(draw, rng, big, _CLUTTER_ID + n_clutter)
        n_clutter += 1
    ids = np.asarray(id_image)

    image = _background(scene, size, style, rng)
    covered = np.zeros((size, size), np.float32)
    paint = np.zeros((size, size, 3), np.float32)
    masks = np.zeros((NUM_CLASSES, size, size), dtype=bool) if return_masks else None
    f = size / scene.canvas
    for j, obj in enumerate(scene.objects):
        cov = _coverage(ids == j + 1)
        rgb = np.asarray(obj.rgb, np.float32)
        if not photo:
            rgb = _saturate(rgb, GENERATED_SATURATION)
        shade = _shading(obj.x * f, obj.y * f, obj.size * f, size, style, rng)
        covered += cov
        paint += (cov * shade)[..., None] * rgb
        if masks is not None:
            masks[obj.category] |= cov >= 0.5
    if n_clutter:
        lut = np.zeros((256, 3), np.float32)
        for j in range(n_clutter):
            lut[_CLUTTER_ID + j] = _clutter_rgb(scene, rng)
        covered += _coverage(ids >= _CLUTTER_ID)
        sub = lut[ids]
        paint += sum(sub[i::k, j::k] for i in range(k) for j in range(k)) * (1 / (k * k))
    image = image * (1 - covered)[..., None] + paint
    if photo:
        sigma = PHOTO_NOISE * (0.7 + 0.6 * rng.random())
        image += rng.standard_normal(image.shape, dtype=np.float32) * sigma
    out = np.clip(image + 0.5, 0, 255).astype(np.uint8)
    if not photo:
        radius = GENERATED_BLUR * size / 64
        out = np.asarray(Image.fromarray(out).filter(ImageFilter.GaussianBlur(radius)))
    return (out, masks) if return_masks else out
