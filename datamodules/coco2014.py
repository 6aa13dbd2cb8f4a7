"""MS-COCO 2014 in its official layout (80 classes, 40,504 val2014 images as the test set).

Files read (relative to ``root``)::

    annotations/instances_val2014.json     test: every image, with or without annotations
    val2014/<file_name>
    annotations/instances_train2014.json   training side, source of the default val split
    train2014/<file_name>

Class order = order of ``categories`` in the json; names = their ``name``. Plain ``json``
(no pycocotools). Problems name the file and the JSON location (e.g. ``annotations[12]``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from mlr_bench.datamodules._official import (
    DatasetFormatError,
    Digest,
    OfficialDataModule,
    Split,
)

_FORMAT = (
    "a COCO instances json with 'categories' [{id, name}], 'images' [{id, file_name}] and "
    "'annotations' [{image_id, category_id}]"
)


#: Per-annotation geometry, unused here and most of the file: dropped while parsing, so that
#: instances_train2014.json (~330 MB) peaks near 1 GB instead of 3 GB.
GEOMETRY_KEYS = ("segmentation", "bbox", "area")


def _without_geometry(obj: dict[str, Any]) -> dict[str, Any]:
    for key in GEOMETRY_KEYS:
        obj.pop(key, None)
    return obj


def load_json(path: Path, digest: Digest) -> dict[str, Any]:
    """The parsed instances file; errors give line, column and character offset (the file is
    one long line as COCO ships it), and say when the text just ends (a truncated file)."""
    data = digest.read(path, _FORMAT)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DatasetFormatError(
            f"{path}: not UTF-8 text (byte 0x{data[exc.start]:02x} at file offset "
            f"{exc.start:,}); expected {_FORMAT}"
        ) from None
    del data  # the bytes and the objects are never held together (peak memory)
    try:
        content = json.loads(text, object_hook=_without_geometry)
    except json.JSONDecodeError as exc:
        ends = exc.pos >= len(exc.doc.rstrip()) or exc.msg.startswith("Unterminated string")
        raise DatasetFormatError(
            f"{path}:{exc.lineno}:{exc.colno}: invalid JSON at character {exc.pos:,} of "
            f"{len(exc.doc):,} ({exc.msg})"
            + ("; the file ends there: is it truncated (interrupted download)?" if ends else "")
            + f"; expected {_FORMAT}"
        ) from None
    if not isinstance(content, dict):
        raise DatasetFormatError(f"{path}: top level is not an object; expected {_FORMAT}")
    return content


def entries(path: Path, content: dict[str, Any], key: str, fields: tuple[str, ...]) -> list[dict]:
    """``content[key]``, checked to be a list of objects having ``fields``."""
    items = content.get(key)
    if not isinstance(items, list):
        raise DatasetFormatError(f"{path}: no '{key}' list; expected {_FORMAT}")
    for i, item in enumerate(items):
        if not isinstance(item, dict) or any(f not in item for f in fields):
            raise DatasetFormatError(
                f"{path}: {key}[{i}] = {str(item)[:80]}; expected an object with {fields}"
            )
    return items


def category_names(path: Path, content: dict[str, Any]) -> tuple[list[str], dict[Any, int]]:
    """Class names in json order and the map from category id to class index."""
    categories = entries(path, content, "categories", ("id", "name"))
    index: dict[Any, int] = {}
    for i, cat in enumerate(categories):
        if cat["id"] in index:
            raise DatasetFormatError(
                f"{path}: categories[{i}]: id {cat['id']} is listed twice; expected unique ids"
            )
        index[cat["id"]] = i
    return [str(cat["name"]) for cat in categories], index


def read_instances(
    path: Path, image_dir: Path, class_names: list[str] | None = None
) -> tuple[list[str], Split, list[Any]]:
    """Class names, every image of an instances json with targets (1 present, -1 absent), and
    the images' COCO ids (in split order).

    ``class_names`` (the test file's) must match this file's categories when given.
    """
    digest = Digest()
    content = load_json(path, digest)
    names, cat_index = category_names(path, content)
    if class_names is not None and names != class_names:
        raise DatasetFormatError(
            f"{path}: categories differ from the test annotations' ({len(names)} vs "
            f"{len(class_names)} classes); expected the same category list"
        )
    images = entries(path, content, "images", ("id", "file_name"))
    row = {image["id"]: i for i, image in enumerate(images)}
    targets = torch.full((len(images), len(names)), -1, dtype=torch.int8)
    pairs = []
    for i, ann in enumerate(entries(path, content, "annotations", ("image_id", "category_id"))):
        if ann["category_id"] not in cat_index:
            raise DatasetFormatError(
                f"{path}: annotations[{i}]: unknown category_id {ann['category_id']}; expected "
                "an id listed in 'categories'"
            )
        if ann["image_id"] not in row:
            raise DatasetFormatError(
                f"{path}: annotations[{i}]: unknown image_id {ann['image_id']}; expected an id "
                "listed in 'images'"
            )
        pairs.append((row[ann["image_id"]], cat_index[ann["category_id"]]))
    if pairs:
        rows, cols = torch.tensor(pairs, dtype=torch.long).T
        targets[rows, cols] = 1
    paths = [image_dir / str(image["file_name"]) for image in images]
    return names, Split(paths, targets, digest.hexdigest()), [image["id"] for image in images]


class COCO2014(OfficialDataModule):
    """MS-COCO 2014: test = all 40,504 val2014 images (unannotated ones are all-negative rows).

    Validation: by default ``num_val`` images drawn (seeded) from train2014; with
    ``legacy_val=True`` every 10th test image (``test[0::10]``), as in the TaI-DPT/CoMC code;
    that selects checkpoints on test images and is therefore optimistic.
    """

    DATASET = "coco2014"

    def __init__(
        self,
        root: str,
        num_val: int = 2000,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            root: folder holding ``annotations/`` and ``val2014/`` (and ``train2014/``).
            num_val: validation images drawn from the training side (when not
                ``legacy_val``).
            **kwargs: the common options of :class:`OfficialDataModule` (``legacy_val``,
                ``seed``, ``on_bad_image``, ``captions_file``, ``sentences_file``, loaders...).
        """
        super().__init__(root, num_val=num_val, **kwargs)
        self.save_hyperparameters()
        self._names: list[str] | None = None
        self._test_ids: frozenset[int] = frozenset()

    @property
    def test_json(self) -> Path:
        return self.root / "annotations" / "instances_val2014.json"

    @property
    def train_json(self) -> Path:
        return self.root / "annotations" / "instances_train2014.json"

    @property
    def class_names(self) -> list[str]:
        """The ``categories`` names of ``instances_val2014.json`` in file order.

        Reading them parses the test json, whose split is kept for :meth:`eval_dataset`.
        """
        if self._names is None:
            self._raw_test()
        assert self._names is not None
        return list(self._names)

    def _read_test(self) -> Split:
        self._names, split, ids = read_instances(self.test_json, self.root / "val2014")
        self._test_ids = frozenset(ids)
        return split

    def test_caption_ids(self) -> frozenset[int]:
        """val2014 image ids: COCO keeps an image's id across releases, so they are the ids
        of these images' captions in captions_train2017.json."""
        self._raw_test()
        return self._test_ids

    def _read_train(self) -> Split:
        return read_instances(self.train_json, self.root / "train2014", self.class_names)[1]

    def _train_files(self) -> list[Path]:
        return [self.train_json, self.root / "train2014"]

    def _legacy_val(self, test: Split) -> Split:
        return test.subset(range(0, len(test), 10))
