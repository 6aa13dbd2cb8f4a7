"""NUS-WIDE in its official layout (81 concepts, 107,859 test images, no filtering).

Files read (relative to ``root``)::

    Concepts81.txt                               one concept per line (class order)
    ImageList/TestImagelist.txt                  Windows paths, e.g. "actor\\0001_2124494179.jpg"
    TrainTestLabels/Labels_<concept>_Test.txt    one 0/1 per line, in image-list order
    ImageList/TrainImagelist.txt                 the same for the training side, source of the
    TrainTestLabels/Labels_<concept>_Train.txt   default validation split
    Flickr/<concept>/<file>                      the images

Targets: 1 positive, -1 negative (NUS has no "difficult").
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from mlr_bench.datamodules._official import (
    DatasetFormatError,
    Digest,
    OfficialDataModule,
    Split,
    read_lines,
)

log = logging.getLogger(__name__)

MissingPolicy = Literal["error", "skip"]

_SIDES = {"test": "Test", "train": "Train"}
#: Missing image paths quoted in messages.
_SHOW_MISSING = 5


def read_concepts(path: Path) -> list[str]:
    """The 81 concept names in file order."""
    names: list[str] = []
    for lineno, line in read_lines(path, "one concept name per line", Digest()):
        if line in names:
            raise DatasetFormatError(
                f"{path}:{lineno}: concept {line!r} is listed twice; expected each concept once"
            )
        names.append(line)
    if not names:
        raise DatasetFormatError(f"{path}: no concepts; expected one concept name per line")
    return names


def read_image_list(path: Path, flickr: Path, digest: Digest) -> list[Path]:
    """Image paths of an ``ImageList/*Imagelist.txt`` (backslashes → ``Flickr/...``)."""
    expected = r"one relative image path per line, e.g. 'actor\0001_2124494179.jpg'"
    paths: list[Path] = []
    for lineno, line in read_lines(path, expected, digest):
        parts = [p for p in line.replace("\\", "/").split("/") if p]
        if len(parts) < 2 or ".." in parts:
            raise DatasetFormatError(f"{path}:{lineno}: {line!r}; expected {expected}")
        paths.append(flickr.joinpath(*parts))
    return paths


def read_label_column(path: Path, length: int, digest: Digest) -> list[int]:
    """One concept's targets (1 → 1, 0 → -1); must have exactly ``length`` lines."""
    lines = read_lines(path, "one 0 or 1 per line, in image-list order", digest)
    column: list[int] = []
    for lineno, line in lines:
        if line not in ("0", "1"):
            raise DatasetFormatError(f"{path}:{lineno}: {line!r}; expected 0 or 1 per line")
        column.append(1 if line == "1" else -1)
    if len(column) != length:
        last = lines[-1][0] if lines else 0
        raise DatasetFormatError(
            f"{path}:{last}: {len(column)} labels but the image list has {length} images; "
            "expected one 0/1 line per listed image"
        )
    return column


def read_side(root: Path, concepts: list[str], side: str) -> Split:
    """Images and targets of the ``test`` or ``train`` side."""
    digest = Digest()
    digest.read(root / "Concepts81.txt", "one concept name per line")
    paths = read_image_list(
        root / "ImageList" / f"{_SIDES[side]}Imagelist.txt", root / "Flickr", digest
    )
    labels = root / "TrainTestLabels"
    columns = [
        read_label_column(labels / f"Labels_{c}_{_SIDES[side]}.txt", len(paths), digest)
        for c in concepts
    ]
    targets = torch.from_numpy(np.array(columns, dtype=np.int8).T.copy())
    return Split(paths, targets, digest.hexdigest())


class NUSWIDE(OfficialDataModule):
    """NUS-WIDE: the official 107,859-image test split over 81 concepts.

    Missing images (the public copies are often incomplete) are counted when a split is first
    read: ``missing="error"`` raises naming how many and the first few paths;
    ``missing="skip"`` drops them with a warning giving the count. ``missing_counts[split]``
    holds the number dropped.

    Validation: by default ``num_val`` images drawn (seeded) from the training list; with
    ``legacy_val=True`` every 20th test image (``test[0::20]``), as in the TaI-DPT/PVP code;
    that selects checkpoints on test images and is therefore optimistic.
    """

    DATASET = "nuswide"
    CAPTION_KIND = "localized_narratives"
    #: TaI-DPT: narratives truncated to 77 words, at most 1,000 per (rarest) class.
    CAPTION_OPTIONS: ClassVar[dict[str, Any]] = {"max_words": 77, "cap": 1000}

    def __init__(
        self,
        root: str,
        num_val: int = 2000,
        missing: MissingPolicy = "error",
        **kwargs: Any,
    ) -> None:
        """
        Args:
            root: the NUS-WIDE folder (Concepts81.txt, ImageList/, TrainTestLabels/, Flickr/).
            num_val: validation images drawn from the training side (when not
                ``legacy_val``).
            missing: listed images absent under Flickr/: "error" or "skip" (dropped, warned).
            **kwargs: the common options of :class:`OfficialDataModule` (``legacy_val``,
                ``seed``, ``on_bad_image``, ``captions_file``, ``sentences_file``, loaders...).
        """
        super().__init__(root, num_val=num_val, **kwargs)
        if missing not in ("error", "skip"):
            raise ValueError(f"missing must be 'error' or 'skip', not {missing!r}")
        self.missing = missing
        self.missing_counts: dict[str, int] = {}
        self._concepts: list[str] | None = None
        self.save_hyperparameters()

    @property
    def class_names(self) -> list[str]:
        """The concepts of ``Concepts81.txt`` in file order."""
        if self._concepts is None:
            self._concepts = read_concepts(self.root / "Concepts81.txt")
        return list(self._concepts)

    def _read_test(self) -> Split:
        return read_side(self.root, self.class_names, "test")

    def _read_train(self) -> Split:
        return read_side(self.root, self.class_names, "train")

    def _train_files(self) -> list[Path]:
        labels = self.root / "TrainTestLabels"
        return [
            self.root / "ImageList" / "TrainImagelist.txt",
            *(labels / f"Labels_{c}_Train.txt" for c in self.class_names),
        ]

    def _legacy_val(self, test: Split) -> Split:
        return test.subset(range(0, len(test), 20))

    def _finish(self, name: str, split: Split) -> Split:
        """Apply the ``missing`` policy to the listed images of a split."""
        absent = [i for i, path in enumerate(split.paths) if not path.is_file()]
        self.missing_counts[name] = len(absent)
        if not absent:
            return split
        shown = ", ".join(str(split.paths[i]) for i in absent[:_SHOW_MISSING])
        summary = f"{len(absent)} of {len(split)} {name} images are missing (first: {shown})"
        if self.missing == "error":
            raise DatasetFormatError(
                f"{self.root / 'Flickr'}: {summary}; pass missing='skip' to evaluate without them"
            )
        log.warning("NUS-WIDE: %s; they are left out of the %s split", summary, name)
        dropped = set(absent)
        return split.subset([i for i in range(len(split)) if i not in dropped])

    def identity(self, split: str) -> dict[str, object]:
        """As for every official loader, plus how missing images were handled."""
        ident = super().identity(split)
        return {**ident, "missing": self.missing, "num_missing": self.missing_counts.get(split)}
