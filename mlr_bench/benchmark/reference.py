"""Published numbers shown beside the benchmark's own, read from ``reference_numbers.json``.

Kept as data, not code, so a number is corrected (or verified) without touching the report.

Each number carries the setting it was obtained in (:class:`Setting`: backbone, test
resolution and crop, prompt protocol, test-set size, checkpoint selection, seeds) and its
source (a paper and table, or a code repository). The leaderboard puts a number beside a cell
only when the cell's own setting matches it (:meth:`Reported.mismatches`):

* the backbone, always;
* the test resolution and the crop (mlr-bench resizes the shorter side and centre-crops at the
  data module's ``image_size``, the backbone's own size by default), where the source states
  them;
* the number of test images, where the source states it (e.g. NUS-WIDE's 107,859 listed test
  images vs a filtered 83,898);
* the method arguments that define the protocol (``method_args``, e.g. zero-shot CLIP's
  ``templates``: single prompt vs 80-template ensemble).

Checkpoint selection, seeds and the training text are not matched: they are shown with the
number. A cell's setting is read from its ``results_test.json`` (``results_file`` in the
benchmark record); a record without a readable one is matched on backbone and weights alone,
and the leaderboard says so.

The file's format (a JSON object)::

    {"note": str, "sources": {id: str},
     "numbers": [{"method", "dataset", "mAP", "status", "kind", "run_by", "source", "where",
                  "setting": {"backbone", "resolution", "crop", "preprocessing", "prompts",
                              "method_args", "test_images", "checkpoint", "selected_on_test",
                              "seeds", "inferred", "note"}}]}

The older flat entries (``"backbone"`` beside ``"mAP"``, ``"setting"`` a plain string) still
load: the string becomes the setting's ``note``.
"""

from __future__ import annotations

import importlib
import json
import math
from dataclasses import dataclass, fields
from functools import cache
from pathlib import Path
from typing import Any

from mlr_bench.errors import MLRBenchError

REFERENCE_FILE = Path(__file__).with_name("reference_numbers.json")
#: Evidence levels shown as "reported"; anything else is listed as unverified.
VERIFIED = ("log", "seen")
#: Who produced a number: the method's official code (published logs), the method's own paper,
#: or someone else running the method (or zero-shot CLIP) in their own paper.
KINDS = ("official code logs", "paper", "third-party re-run")
THIRD_PARTY = "third-party re-run"
#: Separates a leaderboard column's dataset from its backbone when a dataset ran on several.
BACKBONE_MARK = " · "


def column_dataset(column: str) -> str:
    """The dataset of a leaderboard column (``voc2007 [reference] · RN50`` -> ``voc2007``)."""
    return column.split(BACKBONE_MARK, 1)[0].split(" [", 1)[0]


#: Native input size (px) of the CLIP backbones a published number may name; a cell run
#: without ``--data.image_size`` was tested at its backbone's size.
NATIVE_RESOLUTION = {
    "RN50": 224, "RN101": 224, "RN50x4": 288, "RN50x16": 384, "RN50x64": 448,
    "ViT-B-32": 224, "ViT-B-16": 224, "ViT-L-14": 224, "ViT-L-14-336": 336,
}  # fmt: skip


@dataclass(frozen=True)
class Setting:
    """How a published number was obtained. ``None``: the source does not say."""

    backbone: str
    #: Test input size in px (after resizing; the crop size when cropped).
    resolution: int | None = None
    #: ``True``: resize the shorter side, then centre-crop (mlr-bench's only preprocessing);
    #: ``False``: resize the whole image without cropping.
    crop: bool | None = None
    preprocessing: str = ""
    #: Prompt protocol in words (learned prompts, single prompt, 80-template ensemble, ...).
    prompts: str = ""
    #: mlr-bench method arguments that reproduce the protocol, as ``(name, value)`` pairs: a
    #: cell run with another value is not comparable.
    method_args: tuple[tuple[str, Any], ...] = ()
    test_images: int | None = None
    #: Checkpoint selection in words, and whether test images chose the checkpoint.
    checkpoint: str = ""
    selected_on_test: bool | None = None
    seeds: int | None = None
    #: Setting fields inferred by whoever traced the number rather than stated by its source.
    inferred: tuple[str, ...] = ()
    note: str = ""

    def describe(self) -> str:
        """One line: backbone, preprocessing, prompts, test images, checkpoint, seeds."""

        def mark(*names: str) -> str:
            return " (inferred)" if set(names) & set(self.inferred) else ""

        parts = [self.backbone + mark("backbone")]
        if self.preprocessing:
            parts.append(f"preprocessing{mark('resolution', 'crop')}: {self.preprocessing}")
        if self.prompts:
            parts.append(f"prompts: {self.prompts}")
        images = f"{self.test_images:,}" if self.test_images is not None else "not stated"
        parts.append(f"test images: {images}")
        if self.checkpoint:
            parts.append(f"checkpoint{mark('selected_on_test')}: {self.checkpoint}")
        if self.seeds is not None:
            parts.append(f"{self.seeds} seed{'s' if self.seeds != 1 else ''}")
        if self.note:
            parts.append(self.note)
        return "; ".join(parts)

    def __str__(self) -> str:
        return self.describe()


@dataclass(frozen=True)
class CellSetting:
    """What one benchmark cell (one seed) ran with; ``None`` where its record does not say."""

    backbone: str | None
    resolution: int | None = None
    crop: bool | None = None
    test_images: int | None = None
    method_args: dict[str, Any] | None = None

    @property
    def known(self) -> bool:
        """Whether the cell's results file was read (its preprocessing is known)."""
        return self.crop is not None


@dataclass(frozen=True)
class Reported:
    """One published mAP with the setting it was obtained in and where it comes from."""

    method: str
    dataset: str
    mAP: float
    status: str
    source: str
    setting: Setting
    kind: str = "paper"
    #: Who ran it, for a third-party re-run.
    run_by: str = ""
    #: Where in the source: a table (and column), or a file of a repository.
    where: str = ""

    @property
    def backbone(self) -> str:
        return self.setting.backbone

    @property
    def verified(self) -> bool:
        return self.status in VERIFIED

    def origin(self) -> str:
        """``third-party re-run by X`` / ``official code logs`` / ``paper``, and where."""
        who = f"{self.kind} by {self.run_by}" if self.run_by else self.kind
        return f"{who}; {self.where}" if self.where else who

    def mismatches(self, cell: CellSetting) -> list[str]:
        """Why the cell is not comparable with this number (empty: it is). A field the source
        does not state, or the cell's record does not hold, is not a mismatch."""
        s, why = self.setting, []
        if cell.backbone != s.backbone:
            why.append(f"run with {cell.backbone}, reported for {s.backbone}")
        if None not in (s.resolution, cell.resolution) and s.resolution != cell.resolution:
            why.append(f"tested at {cell.resolution} px, reported at {s.resolution} px")
        if None not in (s.crop, cell.crop) and s.crop != cell.crop:
            crops = ("centre crop", "resize without crop")
            why.append(f"tested with {crops[not cell.crop]}, reported with {crops[not s.crop]}")
        if None not in (s.test_images, cell.test_images) and s.test_images != cell.test_images:
            why.append(f"tested on {cell.test_images:,} images, reported on {s.test_images:,}")
        for name, value in s.method_args:
            ran = (cell.method_args or {}).get(name, value)
            if ran != value:
                why.append(f"run with {name}={ran}, reported with {name}={value}")
        return why


@dataclass(frozen=True)
class ReferenceTable:
    numbers: tuple[Reported, ...]
    sources: dict[str, str]
    note: str

    def for_cell(self, method: str, dataset: str) -> list[Reported]:
        """The numbers of ``method`` on ``dataset``; a leaderboard column qualified by its
        protocol or backbone (``voc2007 [reference] · RN50``) names its dataset first."""
        dataset = column_dataset(dataset)
        return [r for r in self.numbers if r.method == method and r.dataset == dataset]


_SETTING_FIELDS = {f.name for f in fields(Setting)}
_ENTRY_FIELDS = {f.name for f in fields(Reported)} - {"setting"}


def parse_entry(entry: dict[str, Any]) -> Reported:
    """One ``numbers`` entry; the older flat form (``backbone`` at the top, ``setting`` a
    string) is read as a setting with only its backbone and note."""
    entry = dict(entry)
    setting = entry.pop("setting", None)
    if isinstance(setting, dict):
        setting = dict(setting)
        if "backbone" in entry:
            setting.setdefault("backbone", entry.pop("backbone"))
    else:
        setting = {"backbone": entry.pop("backbone"), "note": str(setting or "")}
    unknown = sorted((set(setting) - _SETTING_FIELDS) | (set(entry) - _ENTRY_FIELDS))
    if unknown:
        raise TypeError(f"unknown field(s) {', '.join(unknown)} in {entry}")
    setting["method_args"] = tuple(dict(setting.get("method_args") or {}).items())
    setting["inferred"] = tuple(setting.get("inferred") or ())
    reported = Reported(**entry, setting=Setting(**setting))
    if not isinstance(reported.mAP, int | float) or not math.isfinite(reported.mAP):
        raise ValueError(f"mAP must be a number in {entry}")
    if reported.kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)} in {entry}")
    if reported.kind == THIRD_PARTY and not reported.run_by:
        raise ValueError(f"a third-party re-run names who ran it (run_by) in {entry}")
    return reported


@cache
def load_reference(path: Path = REFERENCE_FILE) -> ReferenceTable:
    """Parse the reference file; a malformed entry names the file and the entry."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        numbers = tuple(parse_entry(entry) for entry in data["numbers"])
        sources = dict(data["sources"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise MLRBenchError(
            f"{path}: expected {{'note', 'sources', 'numbers': [{{method, dataset, mAP, status, "
            f"kind, source, where, setting: {{backbone, resolution, crop, ...}}}}]}}: {exc}"
        ) from None
    unknown = sorted({r.source for r in numbers} - sources.keys())
    if unknown:
        raise MLRBenchError(f"{path}: numbers cite undefined sources: {', '.join(unknown)}")
    return ReferenceTable(numbers, sources, str(data.get("note", "")))


def cell_setting(record: dict[str, Any]) -> CellSetting:
    """A benchmark record's setting: its backbone, and from its ``results_file`` (the
    ``results_test.json`` it was read from) the test resolution, crop, number of test images
    and method arguments. Unreadable or absent file: the backbone alone."""
    backbone = record.get("backbone")
    backbone = None if backbone is None else str(backbone)
    path = record.get("results_file")
    try:
        results = json.loads(Path(path).read_text(encoding="utf-8")) if path else None
    except (OSError, ValueError):
        results = None
    if not isinstance(results, dict):
        return CellSetting(backbone)
    data, method = (_init_args(results.get(key)) for key in ("data", "method"))
    # mlr-bench's evaluation resizes the shorter side and centre-crops, unless the method
    # brings its own preprocessing without a crop (TagCLIP: ``input_size``, None = native)
    crop = bool(getattr(_method_class(results.get("method")), "eval_center_crop", True))
    native = NATIVE_RESOLUTION.get(str(backbone)) if crop else method.get("input_size")
    size = data.get("image_size") or native
    samples = results.get("num_samples")
    return CellSetting(
        backbone,
        resolution=int(size) if size else None,
        crop=crop,
        test_images=int(samples) if isinstance(samples, int) else None,
        method_args=dict(method),
    )


def _method_class(described: Any) -> Any:
    """The class a results file's ``method`` names; None when it does not import."""
    path = described.get("class_path") if isinstance(described, dict) else None
    if not isinstance(path, str) or "." not in path:
        return None
    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name, None)
    except Exception:  # a plugin that is gone: judge the cell without its class
        return None


def _init_args(described: Any) -> dict[str, Any]:
    """``init_args`` of a ``{"class_path", "init_args"}`` description; ``{}`` if malformed."""
    args = described.get("init_args") if isinstance(described, dict) else None
    return args if isinstance(args, dict) else {}
