"""A tiny multi-label dataset in the ``folder`` format, for the demo and the tests.

Scenes of coloured shapes on a noisy background, written as PNG files plus ``classes.txt`` and
``val.csv``/``test.csv``. It exercises the whole pipeline (loading, preprocessing, scoring,
evaluation) offline; the built-in synthetic world with its pre-trained micro-CLIP supersedes it
as the demo benchmark.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from mlr_bench.runs import atomic_write_text

CLASSES = ("circle", "square", "triangle", "cross", "bar")
SYNONYMS = {"circle": ["disc", "dot"], "square": ["box"], "bar": ["stripe"]}


def _draw(draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], color) -> None:
    x0, y0, x1, y1 = box
    if shape == "circle":
        draw.ellipse(box, fill=color)
    elif shape == "square":
        draw.rectangle(box, fill=color)
    elif shape == "triangle":
        draw.polygon([((x0 + x1) // 2, y0), (x1, y1), (x0, y1)], fill=color)
    elif shape == "cross":
        w = max(2, (x1 - x0) // 4)
        draw.line([(x0, y0), (x1, y1)], fill=color, width=w)
        draw.line([(x0, y1), (x1, y0)], fill=color, width=w)
    else:  # bar
        draw.rectangle((x0, (y0 + y1) // 2 - 2, x1, (y0 + y1) // 2 + 2), fill=color)


def render_scene(rng: np.random.Generator, size: int = 64) -> tuple[Image.Image, list[str]]:
    """One image with 1–3 distinct shapes; returns the image and its labels."""
    noise = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
    image = Image.fromarray(noise + np.uint8(rng.integers(0, 120)))
    draw = ImageDraw.Draw(image)
    labels = sorted(rng.choice(len(CLASSES), size=rng.integers(1, 4), replace=False).tolist())
    for c in labels:
        s = int(rng.integers(size // 5, size // 2))
        x, y = (int(v) for v in rng.integers(0, size - s, 2))
        _draw(
            draw, CLASSES[c], (x, y, x + s, y + s), tuple(int(v) for v in rng.integers(120, 256, 3))
        )
    return image, [CLASSES[c] for c in labels]


def write_demo_dataset(root: str | Path, n_val: int = 24, n_test: int = 41, seed: int = 0) -> Path:
    """Write the dataset under ``root`` (deterministic for a seed) and return ``root``."""
    root = Path(root)
    (root / "img").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    classes = "".join(
        f"{c}: {', '.join(SYNONYMS[c])}\n" if c in SYNONYMS else f"{c}\n" for c in CLASSES
    )
    atomic_write_text(root / "classes.txt", classes)
    for split, n in (("val", n_val), ("test", n_test)):
        rows = []
        for i in range(n):
            image, labels = render_scene(rng)
            rel = f"img/{split}_{i:04d}.png"
            image.save(root / rel)
            rows.append((rel, ";".join(labels)))
        lines = [["image", "labels"], *rows]
        with (root / f".{split}.csv.tmp").open("w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows(lines)
        (root / f".{split}.csv.tmp").replace(root / f"{split}.csv")
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(write_demo_dataset(args.root, seed=args.seed))


if __name__ == "__main__":
    main()
