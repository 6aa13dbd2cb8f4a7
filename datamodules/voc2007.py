"""PASCAL VOC 2007 in its official devkit layout (20 classes, 4,952 test images).

Files read (relative to ``VOCdevkit/VOC2007``)::

    ImageSets/Main/test.txt               one image id per line
    ImageSets/Main/{cls}_test.txt         "<id> <1|0|-1>" per line (0 = difficult)
    ImageSets/Main/trainval.txt           the same for the training side, source of the
    ImageSets/Main/{cls}_trainval.txt     default validation split
    JPEGImages/<id>.jpg                   the images

Targets keep VOC's three values: 1 positive, 0 difficult, -1 negative.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from mlr_bench.datamodules._official import (
    DatasetFormatError,
    Digest,
    OfficialDataModule,
    Split,
    read_lines,
)

#: The 20 classes in VOC's standard (alphabetical) order, with VOC's raw spellings.
CLASS_NAMES = [
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
]

#: Readable spellings of the glued VOC names (the full synonym lists come later).

_LABELS = {"1": 1, "0": 0, "-1": -1}
_ID_FORMAT = "one image id per line (e.g. '000001')"
_LABEL_FORMAT = "lines '<image id> <1|0|-1>' (e.g. '000001 -1')"


def find_voc2007(root: Path) -> Path:
    """``VOCdevkit/VOC2007`` given it, its ``VOCdevkit`` parent or the folder above that."""
    for candidate in (root, root / "VOC2007", root / "VOCdevkit" / "VOC2007"):
        if (candidate / "ImageSets" / "Main").is_dir():
            return candidate
    raise DatasetFormatError(
        f"{root}: no VOC 2007 devkit found; expected {root}/VOCdevkit/VOC2007/ImageSets/Main "
        "(root may also be the VOCdevkit or VOC2007 folder itself)"
    )


def read_ids(path: Path, digest: Digest) -> list[str]:
    """Image ids of ``{image_set}.txt``, checked for stray fields and duplicates."""
    ids: list[str] = []
    seen: set[str] = set()
    for lineno, line in read_lines(path, _ID_FORMAT, digest):
        fields = line.split()
        if len(fields) != 1:
            raise DatasetFormatError(f"{path}:{lineno}: {line!r}; expected {_ID_FORMAT}")
        if fields[0] in seen:
            raise DatasetFormatError(
                f"{path}:{lineno}: id {fields[0]} is listed twice; expected each id once"
            )
        seen.add(fields[0])
        ids.append(fields[0])
    return ids


def read_class_labels(
    path: Path, index: dict[str, int], id_list: Path, digest: Digest
) -> list[int]:
    """One column of targets from ``{cls}_{image_set}.txt``, in the order of ``index``
    (the ids of ``id_list``)."""
    column: list[int | None] = [None] * len(index)
    lines = read_lines(path, _LABEL_FORMAT, digest)
    for lineno, line in lines:
        fields = line.split()
        if len(fields) != 2 or fields[1] not in _LABELS:
            raise DatasetFormatError(f"{path}:{lineno}: {line!r}; expected {_LABEL_FORMAT}")
        row = index.get(fields[0])
        if row is None:
            raise DatasetFormatError(
                f"{path}:{lineno}: id {fields[0]} is not in {id_list.name}; expected the ids "
                f"of {id_list}"
            )
        if column[row] is not None:
            raise DatasetFormatError(
                f"{path}:{lineno}: id {fields[0]} is listed twice; expected each id once"
            )
        column[row] = _LABELS[fields[1]]
    if len(lines) != len(index):
        last = lines[-1][0] if lines else 0
        missing = next(i for i, r in index.items() if column[r] is None)
        raise DatasetFormatError(
            f"{path}:{last}: {len(lines)} labelled ids but the image set lists {len(index)} "
            f"(first unlabelled: {missing}); expected one line per id of {id_list}"
        )
    return column  # type: ignore[return-value]  # complete: every row was set


def read_image_set(voc: Path, image_set: str) -> Split:
    """Images and {1, 0, -1} targets of ``test`` or ``trainval``."""
    main = voc / "ImageSets" / "Main"
    digest = Digest()
    id_list = main / f"{image_set}.txt"
    ids = read_ids(id_list, digest)
    index = {image_id: i for i, image_id in enumerate(ids)}
    columns = [
        read_class_labels(main / f"{c}_{image_set}.txt", index, id_list, digest)
        for c in CLASS_NAMES
    ]
    paths = [voc / "JPEGImages" / f"{image_id}.jpg" for image_id in ids]
    targets = torch.from_numpy(np.array(columns, dtype=np.int8).T.copy())
    return Split(paths, targets, digest.hexdigest())


class VOC2007(OfficialDataModule):
    """PASCAL VOC 2007 test (4,952 images, 20 classes, difficult = target 0).

    Validation: by default ``num_val`` images drawn (seeded) from ``trainval``; with
    ``legacy_val=True`` the whole test set, as in the TaI-DPT/PVP code; that selects
    checkpoints on test images and is therefore optimistic.
    """

    DATASET = "voc2007"

    def __init__(
        self,
        root: str,
        num_val: int = 500,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            root: folder containing ``VOCdevkit/`` (or ``VOCdevkit`` / ``VOCdevkit/VOC2007``).
            num_val: validation images drawn from the training side (when not
                ``legacy_val``).
            **kwargs: the common options of :class:`OfficialDataModule` (``legacy_val``,
                ``seed``, ``on_bad_image``, ``captions_file``, ``sentences_file``, loaders...).
        """
        super().__init__(root, num_val=num_val, **kwargs)
        self.save_hyperparameters()

    @property
    def class_names(self) -> list[str]:
        return list(CLASS_NAMES)

    @property
    def voc_dir(self) -> Path:
        """The ``VOCdevkit/VOC2007`` folder (resolved on use, not at construction)."""
        return find_voc2007(self.root)

    def _read_test(self) -> Split:
        return read_image_set(self.voc_dir, "test")

    def _read_train(self) -> Split:
        return read_image_set(self.voc_dir, "trainval")

    def _train_files(self) -> list[Path]:
        main = self.voc_dir / "ImageSets" / "Main"
        return [main / "trainval.txt", *(main / f"{c}_trainval.txt" for c in CLASS_NAMES)]

    def _legacy_val(self, test: Split) -> Split:
        return test
