"""A multi-label dataset in a plain folder: the quickest way to evaluate on your own images.

Layout (all paths relative to ``root``)::

    classes.txt        one class per line; optional synonyms after a colon: "dog: puppy, hound"
    test.csv           header "image,labels[,difficult]"; labels and difficult are
    val.csv            ';'-separated class names, e.g. "img/001.jpg,dog;person,cat"
    img/...            the images (any format PIL reads)
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image
from torch.utils.data import Dataset

from mlr_bench.batch import EvalSample
from mlr_bench.datamodule import MLRDataModule, Transform, multi_hot
from mlr_bench.errors import MLRBenchError


class DatasetFormatError(MLRBenchError, ValueError):
    """A dataset file does not follow the expected format; the message names file and line."""


@dataclass(frozen=True)
class LabelledImage:
    path: Path
    labels: tuple[int, ...]
    difficult: tuple[int, ...]


def read_classes(path: Path) -> tuple[list[str], dict[str, list[str]]]:
    """Class names and synonyms from ``classes.txt``."""
    if not path.is_file():
        raise DatasetFormatError(f"{path}: missing; expected one class name per line")
    names: list[str] = []
    synonyms: dict[str, list[str]] = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        name, _, syns = line.partition(":")
        name = name.strip()
        if not name:
            continue
        if name in synonyms:
            raise DatasetFormatError(f"{path}:{lineno}: class '{name}' is listed twice")
        names.append(name)
        synonyms[name] = [name] + [s.strip() for s in syns.split(",") if s.strip()]
    if not names:
        raise DatasetFormatError(f"{path}: no class names; expected one class name per line")
    return names, synonyms


def read_split(path: Path, class_names: list[str]) -> list[LabelledImage]:
    """Parse ``<split>.csv``; every problem names the file, the line and the expected format."""
    index = {c: i for i, c in enumerate(class_names)}
    root = path.parent
    items: list[LabelledImage] = []
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:2]] != ["image", "labels"]:
            raise DatasetFormatError(
                f"{path}:1: header {header!r}; expected 'image,labels' or 'image,labels,difficult'"
            )
        for row in reader:
            lineno = reader.line_num
            if not row:
                continue
            if len(row) not in (2, 3):
                raise DatasetFormatError(
                    f"{path}:{lineno}: {len(row)} fields; expected image,labels[,difficult]"
                )

            def ids(field: str, lineno: int = lineno) -> tuple[int, ...]:
                names = [n.strip() for n in field.split(";") if n.strip()]
                unknown = [n for n in names if n not in index]
                if unknown:
                    raise DatasetFormatError(
                        f"{path}:{lineno}: unknown class {unknown[0]!r}; expected names from "
                        f"{root / 'classes.txt'}"
                    )
                return tuple(index[n] for n in names)

            image = root / row[0].strip()
            items.append(LabelledImage(image, ids(row[1]), ids(row[2]) if len(row) == 3 else ()))
    return items


class FolderImages(Dataset):
    """Evaluation images with {1, 0, -1} targets and their position as ``index``."""

    def __init__(self, items: list[LabelledImage], num_classes: int, transform: Transform) -> None:
        self.items = items
        self.num_classes = num_classes
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> EvalSample:
        item = self.items[i]
        try:
            with Image.open(item.path) as im:
                image = self.transform(im)
        except (OSError, ValueError) as exc:
            raise DatasetFormatError(f"{item.path}: cannot read image ({exc})") from exc
        target = multi_hot(item.labels, item.difficult, self.num_classes)
        return {"image": image, "target": target, "index": i}


class MultiLabelFolder(MLRDataModule):
    """Your own images: classes.txt + val.csv/test.csv listing each image's labels."""

    def __init__(
        self,
        root: str,
        val_split: str | None = "val",
        test_split: str = "test",
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        image_size: int | None = None,
        cache_dir: str | None = None,
        protocol: str = "clean",
    ) -> None:
        """
        Args:
            root: folder holding classes.txt and the split CSV files.
            protocol: only ``clean`` (no reference code exists whose choices ``reference``
                would reproduce; see :mod:`mlr_bench.protocol`).
            val_split: name of the validation CSV (without .csv); None disables validation.
            test_split: name of the test CSV (without .csv).
        """
        super().__init__(
            batch_size, eval_batch_size, num_workers, image_size, cache_dir, protocol=protocol
        )
        self.save_hyperparameters()
        self.root = Path(root).expanduser()
        self._class_names, self._synonyms = read_classes(self.root / "classes.txt")
        self.splits = {"val": val_split, "test": test_split}

    @property
    def class_names(self) -> list[str]:
        return list(self._class_names)

    @property
    def synonyms(self) -> dict[str, list[str]]:
        return {c: list(s) for c, s in self._synonyms.items()}

    def has_split(self, split: str) -> bool:
        return self.splits.get(split) is not None

    def identity(self, split: str) -> dict[str, Any]:
        """The class list, the split's CSV and every listed image's size and mtime: editing,
        adding or replacing any of them changes the cache key."""
        h = hashlib.sha256((self.root / "classes.txt").read_bytes())
        csv = self.root / f"{self.splits[split]}.csv"
        h.update(csv.read_bytes())
        for item in read_split(csv, self._class_names):
            st = item.path.stat() if item.path.exists() else None
            h.update(f"{item.path}:{st and st.st_size}:{st and st.st_mtime_ns};".encode())
        return {
            "datamodule": "MultiLabelFolder",
            "root": str(self.root.resolve()),
            "split": split,
            "files": h.hexdigest()[:20],
        }

    def eval_dataset(self, split: str, transform: Transform) -> FolderImages | None:
        name = self.splits.get(split)
        if name is None:
            return None
        path = self.root / f"{name}.csv"
        if not path.is_file():
            raise DatasetFormatError(
                f"{path}: missing; expected a CSV with header 'image,labels[,difficult]'"
            )
        items = read_split(path, self._class_names)
        return FolderImages(items, len(self._class_names), transform)
