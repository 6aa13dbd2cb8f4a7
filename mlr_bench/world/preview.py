"""A PNG contact sheet of world scenes with their captions, for the docs and for eyeballing.

``python -m mlr_bench.world.preview out.png --n 8 --seed 0`` writes one; ``--generated`` adds,
under each scene, the "generated"-style image of its caption (the text-to-image stand-in).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from mlr_bench.world.dataset import generate
from mlr_bench.world.render import render_caption

UPSCALE = 3
COLUMNS = 4
_CAPTION_LINES = 4
_LINE_HEIGHT = 13


def _wrap(text: str, draw: ImageDraw.ImageDraw, font, width: int) -> list[str]:
    lines: list[str] = []
    for word in text.split():
        if lines and draw.textlength(f"{lines[-1]} {word}", font=font) <= width:
            lines[-1] += f" {word}"
        else:
            lines.append(word)
    if len(lines) > _CAPTION_LINES:
        lines = [*lines[: _CAPTION_LINES - 1], lines[_CAPTION_LINES - 1] + " …"]
    return lines


def save_preview(
    path: str | Path, n: int = 8, seed: int = 0, image_size: int = 64, generated: bool = False
) -> Path:
    """Write a grid of ``n`` sample scenes (×3) with their captions underneath; returns the path."""
    split = generate(n, seed=seed, image_size=image_size)
    tile = image_size * UPSCALE
    pad = 6
    images_per_cell = 2 if generated else 1
    cell_w = tile + pad
    cell_h = tile * images_per_cell + _CAPTION_LINES * _LINE_HEIGHT + 2 * pad
    rows = -(-n // COLUMNS)
    sheet = Image.new("RGB", (COLUMNS * cell_w + pad, rows * cell_h + pad), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for i in range(n):
        x = pad + (i % COLUMNS) * cell_w
        y = pad + (i // COLUMNS) * cell_h
        pictures = [split.images[i]]
        if generated:
            rng = np.random.default_rng([seed, i, 1])
            pictures.append(render_caption(split.captions[i], rng, image_size=image_size))
        for j, picture in enumerate(pictures):
            big = Image.fromarray(picture).resize((tile, tile), Image.Resampling.NEAREST)
            sheet.paste(big, (x, y + j * tile))
        text_y = y + tile * images_per_cell + 3
        for k, line in enumerate(_wrap(split.captions[i], draw, font, tile)):
            draw.text((x, text_y + k * _LINE_HEIGHT), line, fill=(20, 20, 20), font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description="Save a preview grid of world scenes.")
    parser.add_argument("path", type=Path)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--generated", action="store_true", help="also show render_caption")
    args = parser.parse_args()
    print(save_preview(args.path, args.n, args.seed, args.image_size, args.generated))


if __name__ == "__main__":
    main()
