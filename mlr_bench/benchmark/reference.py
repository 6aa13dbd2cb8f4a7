"""Published numbers shown beside the benchmark's own, read from ``reference_numbers.json``.

Kept as data, not code, so a number is corrected (or verified) without touching the report.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from mlr_bench.errors import MLRBenchError

REFERENCE_FILE = Path(__file__).with_name("reference_numbers.json")
#: Evidence levels shown as "reported"; anything else is listed as unverified.
VERIFIED = ("log", "seen")


@dataclass(frozen=True)
class Reported:
    """One published mAP with where it comes from."""

    method: str
    dataset: str
    backbone: str
    mAP: float
    status: str
    source: str
    setting: str = ""

    @property
    def verified(self) -> bool:
        return self.status in VERIFIED


@dataclass(frozen=True)
class ReferenceTable:
    numbers: tuple[Reported, ...]
    sources: dict[str, str]
    note: str

    def for_cell(self, method: str, dataset: str) -> list[Reported]:
        return [r for r in self.numbers if r.method == method and r.dataset == dataset]


@cache
def load_reference(path: Path = REFERENCE_FILE) -> ReferenceTable:
    """Parse the reference file; a malformed entry names the file and the entry."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        numbers = tuple(Reported(**entry) for entry in data["numbers"])
        sources = dict(data["sources"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise MLRBenchError(
            f"{path}: expected {{'note', 'sources', 'numbers': [{{method, dataset, backbone, "
            f"mAP, status, source}}]}}: {exc}"
        ) from None
    unknown = sorted({r.source for r in numbers} - sources.keys())
    if unknown:
        raise MLRBenchError(f"{path}: numbers cite undefined sources: {', '.join(unknown)}")
    return ReferenceTable(numbers, sources, str(data.get("note", "")))
