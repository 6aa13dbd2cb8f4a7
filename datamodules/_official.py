"""Shared machinery of the official benchmark loaders (VOC2007, COCO 2014, NUS-WIDE).

Each loader only parses its own list/label files into a :class:`Split` (image paths plus a
{1, 0, -1} target matrix); this module turns splits into evaluation datasets, carves the
validation split, identifies the data for feature caches and handles unreadable images.

Validation: by default a deterministic subset of the *training* side of the dataset, so no
test image steers checkpoint selection. ``legacy_val=True`` reproduces the reference code,
which selects checkpoints on (a subset of) the test images and is therefore optimistic.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn
from PIL import Image
from torch.utils.data import Dataset

from mlr_bench.batch import GENERATED_IMAGES, TEXT, EvalSample
from mlr_bench.datamodule import MLRDataModule, Transform, check_int
from mlr_bench.datamodules.folder import DatasetFormatError
from mlr_bench.features.keys import files_fingerprint
from mlr_bench.generated_data import GeneratedDataError
from mlr_bench.protocol import CLEAN, PROTOCOLS, prompt_names
from mlr_bench.protocol import resolve as resolve_protocol
from mlr_bench.text.corpus import CAPTIONS, PRETRAIN_SENTENCES, SENTENCES, TextCorpus
from mlr_bench.text.corpus_cache import load_corpus
from mlr_bench.text.sources import check_training_corpus
from mlr_bench.text.synonyms import synonym_table

__all__ = ["DatasetFormatError", "OfficialDataModule", "OfficialImages", "Split", "read_lines"]

BadImagePolicy = Literal["error", "skip"]

#: Individually reported unreadable images before only every 100th is reported.
_REPORT_FIRST = 10


@dataclass(frozen=True)
class Split:
    """Parsed image list: ``targets[i]`` (int8 in {1, 0, -1}) labels ``paths[i]``.

    ``digest`` hashes the contents of every list/label file read, so that a cache key changes
    when any of them changes (images are not hashed, too slow for 100k files: the feature
    cache key adds each image's size and mtime, see ``OfficialDataModule.identity``).
    """

    paths: list[Path]
    targets: torch.Tensor
    digest: str

    def __post_init__(self) -> None:
        if self.targets.dtype != torch.int8 or len(self.targets) != len(self.paths):
            raise ValueError("targets must be int8 with one row per path")

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, indices: Sequence[int]) -> Split:
        """The rows ``indices`` in that order (the digest is kept: same source files)."""
        index = torch.as_tensor(list(indices), dtype=torch.long)
        return Split([self.paths[i] for i in indices], self.targets[index].clone(), self.digest)


@rank_zero_only
def rank_zero_print(message: str) -> None:
    print(message, flush=True)


class Digest:
    """Running SHA-256 over the files a split was read from."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()

    def read(self, path: Path, expected: str) -> bytes:
        """Bytes of ``path``, hashed; a missing file says what it should contain."""
        if not path.is_file():
            raise DatasetFormatError(f"{path}: missing; expected {expected}")
        data = path.read_bytes()
        self._hash.update(f"{path.name}:{len(data)};".encode())
        self._hash.update(data)
        return data

    def hexdigest(self) -> str:
        return self._hash.hexdigest()[:20]


def read_lines(path: Path, expected: str, digest: Digest) -> list[tuple[int, str]]:
    """Non-blank lines of a text file as ``(line number, stripped text)``; handles CRLF."""
    try:
        text = digest.read(path, expected).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DatasetFormatError(f"{path}: not UTF-8 text ({exc}); expected {expected}") from exc
    lines = enumerate(text.splitlines(), 1)
    return [(lineno, line.strip()) for lineno, line in lines if line.strip()]


def val_subset(n: int, num_val: int, seed: int) -> list[int]:
    """A seeded, sorted (disk-friendly) choice of ``min(num_val, n)`` of ``n`` positions."""
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(n, size=min(num_val, n), replace=False).tolist())


class OfficialImages(Dataset):
    """Evaluation images with {1, 0, -1} targets and their position as ``index``.

    Unreadable images raise :class:`DatasetFormatError` naming the path, or with
    ``on_bad_image="skip"`` are replaced by a black 224×224 image (so the sample keeps its
    place and index in a map-style dataset) and counted in ``num_bad``: a warning reports the
    first few and then every 100th. Counts are per process (each loader worker has its own).
    """

    def __init__(
        self, split: Split, transform: Transform, on_bad_image: BadImagePolicy = "error"
    ) -> None:
        self.split = split
        self.transform = transform
        self.on_bad_image = on_bad_image
        self.num_bad = 0

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> EvalSample:
        path, bad_before = self.split.paths[i], self.num_bad
        image = self.transform(self._load(path))
        sample: dict[str, Any] = {"image": image, "target": self.split.targets[i], "index": i}
        if self.on_bad_image == "skip":  # which rows are stand-ins (feature caches record it)
            sample["stand_in"] = str(path) if self.num_bad > bad_before else ""
        return sample  # type: ignore[return-value]

    def _load(self, path: Path) -> Image.Image:
        try:
            with Image.open(path) as im:
                return im.convert("RGB")
        except (OSError, ValueError) as exc:
            if self.on_bad_image == "error":
                raise DatasetFormatError(
                    f"{path}: cannot read image ({exc}); pass on_bad_image='skip' to score a "
                    "black image in its place"
                ) from exc
            self._report_bad(path, exc)
            return Image.new("RGB", (224, 224))

    def _report_bad(self, path: Path, exc: Exception) -> None:
        self.num_bad += 1
        if self.num_bad <= _REPORT_FIRST or self.num_bad % 100 == 0:
            warnings.warn(
                f"{path}: cannot read image ({exc}); using a black image instead "
                f"({self.num_bad} unreadable so far in this process)",
                stacklevel=3,
            )


class OfficialDataModule(MLRDataModule):
    """Common arguments and split handling of the official loaders.

    Subclasses define ``class_names`` and the readers :meth:`_read_test`, :meth:`_read_train`
    (training-side list, source of the default validation split), :meth:`_train_files`
    (what that needs on disk) and :meth:`_legacy_val` (the reference code's val from test).
    Lists are parsed on first use and cached, so constructing the object reads nothing.
    """

    def __init__(
        self,
        root: str,
        *,
        protocol: str = CLEAN,
        legacy_val: bool | None = None,
        num_val: int = 2000,
        seed: int = 0,
        on_bad_image: BadImagePolicy = "error",
        captions_file: str | None = None,
        sentences_file: str | None = None,
        pretrain_sentences_file: str | None = None,
        text_on_error: Literal["error", "skip"] = "error",
        reference_synonyms: bool | None = None,
        reference_class_names: bool | None = None,
        drop_test_captions: bool | None = None,
        generated_dir: str | None = None,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        image_size: int | None = None,
        cache_dir: str | None = None,
    ) -> None:
        """
        Args:
            root: the dataset folder (see the subclass).
            protocol: ``clean`` (default) or ``reference``: sets ``legacy_val``,
                ``drop_test_captions``, ``reference_synonyms`` and ``reference_class_names``
                together (see :mod:`mlr_bench.protocol`); each of those given explicitly
                overrides it and is recorded as an override.
            legacy_val: validate on the test subset the reference code uses (optimistic: it
                selects checkpoints on test images). Default: the protocol's.
            num_val: validation images drawn from the training side (when not legacy).
            seed: seed of that draw.
            on_bad_image: "error" stops at an unreadable image; "skip" scores a black image
                in its place and warns.
            captions_file: caption corpus for text-only training (COCO
                ``captions_train2017.json`` for VOC/COCO, Localized Narratives jsonl for
                NUS-WIDE), labelled with this dataset's synonym table.
            sentences_file: LLM sentences (``mlr-bench captions`` jsonl/json, or ``.txt``
                lines).
            pretrain_sentences_file: LLM sentences of a pre-training stage (PVP stage 1, the
                ``pretrain_sentences`` text source; the reference uses a 500k-sentence file for
                stage 1 and a separate 200k one for stage 2). Default: ``sentences_file``.
            text_on_error: a malformed corpus line stops ("error") or is skipped and counted.
            reference_synonyms: add the reference synonym quirks (VOC chair ← bench, NUS
                road ← way) to reproduce TaI-DPT's labels exactly. Default: the protocol's.
            reference_class_names: prompt with the reference code's class names (COCO "motor
                bike", "aeroplane") in prompts, template sentences and mapping banks; results
                keep the dataset's names. Default: the protocol's.
            drop_test_captions: remove the captions that describe test images from the caption
                corpus (COCO: captions_train2017 covers 35,504 of the 40,504 val2014 test
                images). False keeps them, as the reference code does (methods then train on
                human descriptions of the images they are tested on). Default: the
                protocol's (clean: True, reference: False).
            generated_dir: an output folder of ``mlr-bench generate`` (images generated from
                this dataset's captions, with their manifest): the training images of methods
                that train on generated images (T2I-PAL).
        """
        super().__init__(
            batch_size, eval_batch_size, num_workers, image_size, cache_dir, protocol=protocol
        )
        check_int("num_val", num_val, 1)
        explicit = {
            "legacy_val": legacy_val,
            "drop_test_captions": drop_test_captions,
            "reference_synonyms": reference_synonyms,
            "reference_class_names": reference_class_names,
        }
        settings, self.protocol_overrides = resolve_protocol(self.protocol, explicit)
        self.protocol_settings = settings
        self.captions_file = captions_file
        self.sentences_file = sentences_file
        self.pretrain_sentences_file = pretrain_sentences_file
        self.text_on_error = text_on_error
        self.reference_synonyms = settings["reference_synonyms"]
        self.reference_class_names = settings["reference_class_names"]
        self.drop_test_captions = settings["drop_test_captions"]
        self.generated_dir = generated_dir
        if on_bad_image not in ("error", "skip"):
            raise ValueError(f"on_bad_image must be 'error' or 'skip', not {on_bad_image!r}")
        if num_val < 1:
            raise ValueError(f"num_val must be at least 1, not {num_val}")
        self.root = Path(root).expanduser()
        self.legacy_val = settings["legacy_val"]
        self.num_val = num_val
        self.seed = seed
        self.on_bad_image = on_bad_image
        self._splits: dict[str, Split] = {}
        self._raw: Split | None = None
        self._val_warned = False

    #: Training data these datasets can build (from the files/folders given as init arguments).
    provides = frozenset({TEXT, GENERATED_IMAGES})
    #: Name of the synonym table (mlr_bench.text.synonyms) used to label text.
    DATASET: ClassVar[str] = ""
    #: How ``captions_file`` is read: COCO captions json (TaI-DPT, one caption per image for
    #: VOC/COCO) or Localized Narratives jsonl (NUS-WIDE, capped per rarest class).
    CAPTION_KIND: ClassVar[str] = "coco_captions"
    CAPTION_OPTIONS: ClassVar[dict[str, Any]] = {"one_per_image": True}

    #: The official datasets have reference code, so both protocols apply.
    PROTOCOLS: ClassVar[tuple[str, ...]] = PROTOCOLS

    @property
    def prompt_class_names(self) -> list[str]:
        """The reference code's names under ``reference_class_names`` (COCO: "motor bike",
        "aeroplane"), else ``class_names``."""
        return prompt_names(self.DATASET, self.class_names, self.reference_class_names)

    @property
    def synonyms(self) -> dict[str, list[str]]:
        """This project's synonym table (``reference_synonyms`` adds the reference quirks)."""
        _, table = synonym_table(self.DATASET, reference_quirks=self.reference_synonyms)
        return {c: list(dict.fromkeys([c, *table.get(c, [])])) for c in self.class_names}

    def text_corpus(self, source: str) -> TextCorpus:
        """Captions (``captions_file``) or LLM sentences (``sentences_file``; for the
        ``pretrain_sentences`` source ``pretrain_sentences_file`` when given), labelled.

        Sentences in ``.txt`` files (one per line, PVP style) are labelled by the labeler;
        ``.json``/``.jsonl`` files of ``{"labels", "description"}`` (CoMC style) keep their
        requested labels. Parsed corpora are cached on disk next to the feature caches.
        """
        if source == CAPTIONS:
            path, kind, options = self.captions_file, self.CAPTION_KIND, dict(self.CAPTION_OPTIONS)
            arg = "captions_file"
        elif source in (SENTENCES, PRETRAIN_SENTENCES):
            path, arg, options = self.sentences_file, "sentences_file", {}
            if source == PRETRAIN_SENTENCES and self.pretrain_sentences_file:
                path, arg = self.pretrain_sentences_file, "pretrain_sentences_file"
            txt = str(path or "").lower().endswith(".txt")
            kind = "text_lines" if txt else "llm_descriptions"
        else:
            raise ValueError(
                f"unknown text source {source!r}; expected {CAPTIONS!r}, {SENTENCES!r} or "
                f"{PRETRAIN_SENTENCES!r}"
            )
        if not path:
            raise DatasetFormatError(
                f"{type(self).__name__}: training on {source} needs --data.{arg} "
                f"(e.g. COCO captions_train2017.json, Localized Narratives jsonl, or a "
                f"`mlr-bench captions` output)"
            )
        if not Path(path).expanduser().is_file():
            raise DatasetFormatError(f"{path}: missing; expected the {source} file ({arg})")
        if kind != "text_lines":
            options["on_error"] = self.text_on_error
        if source == CAPTIONS and self.drop_test_captions:
            test_ids = self.test_caption_ids()
            if test_ids:
                options["exclude_image_ids"] = test_ids
        options["context_length"] = self.text_context_length()
        loaded = load_corpus(
            kind,
            Path(path).expanduser(),
            self.class_names,
            self.synonyms,
            cache_root=self.store.root,
            **options,
        )
        problems = check_training_corpus(loaded, path, self.class_names)  # raises when empty
        if loaded.dropped or loaded.skipped:
            rank_zero_warn(
                f"{path}: {loaded.dropped} texts without any class dropped, "
                f"{loaded.skipped} malformed entries skipped; {len(loaded.corpus)} kept"
            )
        for problem in problems:
            rank_zero_warn(problem)
        if loaded.excluded:
            rank_zero_print(
                f"{path}: {loaded.excluded:,} captions of test images dropped, "
                f"{len(loaded.corpus):,} kept (--data.drop_test_captions false keeps them)"
            )
        return loaded.corpus

    def test_caption_ids(self) -> frozenset[int] | None:
        """Ids, in the caption file's numbering, of the test images (None: the caption corpus
        describes other images, as for VOC and NUS-WIDE)."""
        return None

    def generated_folder(self) -> Path:
        """``generated_dir``; generating Stable Diffusion images is a separate, long step."""
        if not self.generated_dir:
            name = type(self).__name__.lower()
            raise GeneratedDataError(
                f"{type(self).__name__}: this method trains on generated images, so it needs "
                "--data.generated_dir. Generate them first (a long, resumable GPU step): "
                f"`mlr-bench generate --generator diffusers --model <Stable Diffusion folder> "
                f"--captions <the captions file> --data {name} --out <root>`, then pass the "
                "output folder it creates (<root>/<generator>-<hash>) as --data.generated_dir"
            )
        folder = Path(self.generated_dir).expanduser()
        self._check_generated_captions(folder)
        return folder

    def _check_generated_captions(self, folder: Path) -> None:
        """Refuse images generated from captions of test images under ``drop_test_captions``
        (their settings.json says so, see ``mlr-bench generate --protocol``); warn when a
        folder cannot tell. Only datasets whose caption corpus describes test images ask."""
        if type(self).test_caption_ids is OfficialDataModule.test_caption_ids:
            return
        try:
            record = json.loads((folder / "settings.json").read_text()).get("captions") or {}
        except (OSError, ValueError, AttributeError):
            return  # the generated-data reader reports a broken folder in its own words
        kept = record.get("test_captions")
        if kept == "kept" and self.drop_test_captions:
            raise GeneratedDataError(
                f"{folder}: generated from captions that include those of test images "
                f"(settings.json: {record}); the {self.protocol} protocol drops them. Generate "
                "again with `mlr-bench generate ... --test-annotations <coco>/annotations/"
                "instances_val2014.json`, or run with --protocol reference (or "
                "--data.drop_test_captions false)"
            )
        if kept is None and self.drop_test_captions:
            rank_zero_warn(
                f"{folder}: its settings.json does not say whether captions of test images were "
                "dropped before generating (older mlr-bench, or a JSON-lines caption file): "
                "make sure they were, or the method trains on images of test-image captions"
            )

    # ---- what subclasses provide -----------------------------------------------------------
    def _read_test(self) -> Split:
        raise NotImplementedError

    def _read_train(self) -> Split:
        raise NotImplementedError

    def _train_files(self) -> list[Path]:
        """Files/folders the training-side split needs (checked before reading)."""
        raise NotImplementedError

    def _legacy_val(self, test: Split) -> Split:
        raise NotImplementedError

    def _finish(self, name: str, split: Split) -> Split:
        """Hook run on a freshly built split (NUS drops missing images here)."""
        return split

    # ---- splits ----------------------------------------------------------------------------
    def split(self, name: str) -> Split | None:
        """The parsed ``test`` or ``val`` split (cached), or None when it does not exist."""
        if name not in ("test", "val") or not self.has_split(name):
            return None
        if name not in self._splits:
            self._splits[name] = self._finish(name, self._build(name))
        return self._splits[name]

    def _build(self, name: str) -> Split:
        if name == "test":
            return self._raw_test()
        if self.legacy_val:
            return self._legacy_val(self._raw_test())
        train = self._read_train()
        return train.subset(val_subset(len(train), self.num_val, self.seed))

    def _raw_test(self) -> Split:
        """The test list as read (cached): legacy val is carved from it, as in the reference."""
        if self._raw is None:
            self._raw = self._read_test()
        return self._raw

    def has_split(self, split: str) -> bool:
        """Test always exists; the default val needs the training-side files (warns once)."""
        if split == "test" or (split == "val" and self.legacy_val):
            return True
        if split != "val":
            return False
        missing = [p for p in self._train_files() if not p.exists()]
        if missing and not self._val_warned:
            self._val_warned = True
            rank_zero_warn(
                f"{type(self).__name__}: no validation split: {missing[0]} is missing (the "
                "default val split is carved from the training side). Validation is skipped; "
                "legacy_val=True validates on test images like the reference code "
                "(optimistic)."
            )
        return not missing

    def eval_dataset(self, split: str, transform: Transform) -> OfficialImages | None:
        data = self.split(split)
        return None if data is None else OfficialImages(data, transform, self.on_bad_image)

    def identity(self, split: str) -> dict[str, Any]:
        """Dataset, resolved root, split settings, list-file hash, image count and every
        image's size and mtime (a replaced or restored image changes the key; one ``stat``
        per image, about 1.3 s per 100,000 on a 2-core VM)."""
        data = self.split(split)
        return {
            "datamodule": type(self).__qualname__,
            "root": str(self.root.resolve()),
            "split": split,
            "legacy_val": self.legacy_val,
            "seed": self.seed,
            "num_val": self.num_val,
            "on_bad_image": self.on_bad_image,
            "files": data.digest if data is not None else None,
            "num_images": len(data) if data is not None else 0,
            "images": files_fingerprint(data.paths) if data is not None else None,
        }
