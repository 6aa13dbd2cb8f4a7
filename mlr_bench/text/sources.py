"""Readers for the text corpora that text-only methods train on, each giving a labelled corpus.

* COCO captions (TaI-DPT for VOC and COCO; PVP's "clean text"): labels parsed from the text.
* OpenImages Localized Narratives (TaI-DPT for NUS-WIDE): labels parsed, optionally truncated.
* CoMC-style LLM descriptions ``{"labels": [...], "description": ...}``: labels are the requested
  set, *not* parsed from the text (as CoMC does).
* Plain text lines (PVP's LLM sentences): labels parsed.

Texts that name no class are dropped and counted; malformed records raise ``CorpusFormatError``
naming the file and line, or with ``on_error="skip"`` are skipped and counted.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from mlr_bench.errors import MLRBenchError
from mlr_bench.text.corpus import TextCorpus
from mlr_bench.text.labeler import SynonymLabeler, phrase_variants

OnError = Literal["error", "skip"]

COCO_FORMAT = 'a JSON object {"annotations": [{"image_id": int, "id": int, "caption": str}, ...]}'
NARRATIVES_FORMAT = 'JSON lines, each an object with a "caption" string'
LLM_FORMAT = 'a JSON list (or JSON lines) of {"labels": [class names], "description": str}'


class CorpusFormatError(MLRBenchError):
    """A corpus file, or one record in it, is not in the expected format."""

    def __init__(self, path: Path, where: str, problem: str, expected: str) -> None:
        super().__init__(f"{path}, {where}: {problem}; expected {expected}")


@dataclass(frozen=True)
class LoadedCorpus:
    """A labelled corpus, the texts dropped for naming no class, and the malformed records
    skipped (``on_error="skip"``): counts worth reporting, since they change the training set."""

    corpus: TextCorpus
    dropped: int = 0
    skipped: int = 0


def _check_on_error(on_error: str) -> None:
    if on_error not in ("error", "skip"):
        raise ValueError(f"on_error must be 'error' or 'skip', not {on_error!r}")


def _labelled(
    texts: Iterable[str], labeler: SynonymLabeler, skipped: int, cap: int | None
) -> LoadedCorpus:
    result = labeler.label_texts(texts)
    corpus = TextCorpus(result.texts, result.labels)
    return LoadedCorpus(cap_per_class(corpus, cap), result.dropped, skipped)


def cap_per_class(corpus: TextCorpus, cap: int | None) -> TextCorpus:
    """Keep at most ``cap`` texts per class, each counted for its rarest positive class.

    TaI-DPT balances the NUS-WIDE narratives this way: class frequencies over the whole corpus,
    each text assigned to its least frequent class (ties: lower index), texts kept in file order.
    """
    if cap is None:
        return corpus
    if cap < 0:
        raise ValueError(f"cap must be >= 0, not {cap}")
    labels = corpus.labels.astype(bool)
    freq = labels.sum(axis=0)
    # Positive classes get their frequency, the others +inf, so argmin picks the rarest positive.
    rarest = np.where(labels, freq[None, :], np.iinfo(np.int64).max).argmin(axis=1)
    taken = np.zeros(labels.shape[1], dtype=np.int64)
    keep = []
    for i, c in enumerate(rarest):
        if labels[i].any() and taken[c] < cap:
            taken[c] += 1
            keep.append(i)
    return TextCorpus([corpus.texts[i] for i in keep], corpus.labels[keep])


def _read_json(path: Path, expected: str) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CorpusFormatError(
            path, f"line {e.lineno}", f"invalid JSON ({e.msg})", expected
        ) from e


def _json_lines(
    path: Path, on_error: OnError, expected: str, counter: list[int]
) -> Iterator[tuple[int, Any]]:
    """``(line number, parsed object)`` for the non-blank lines; bad JSON raises or is counted."""
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as e:
                if on_error == "error":
                    raise CorpusFormatError(
                        path, f"line {number}", f"invalid JSON ({e.msg})", expected
                    ) from e
                counter[0] += 1


def _string_field(record: Any, field: str) -> str | None:
    value = record.get(field) if isinstance(record, dict) else None
    return value if isinstance(value, str) else None


def read_coco_captions(
    path: str | Path,
    labeler: SynonymLabeler,
    *,
    one_per_image: bool = False,
    on_error: OnError = "error",
    cap: int | None = None,
) -> LoadedCorpus:
    """COCO caption annotations (``captions_train2017.json``), labels parsed from the captions.

    ``one_per_image`` keeps each image's caption with the lowest annotation id (deterministic;
    TaI-DPT uses one caption per train2017 image). Captions are in annotation-id order.
    """
    _check_on_error(on_error)
    path = Path(path)
    data = _read_json(path, COCO_FORMAT)
    annotations = data.get("annotations") if isinstance(data, dict) else None
    if not isinstance(annotations, list):
        raise CorpusFormatError(path, "top level", 'no "annotations" list', COCO_FORMAT)
    records, skipped = [], 0
    for i, ann in enumerate(annotations, start=1):
        caption = _string_field(ann, "caption")
        ids = [ann.get(k) if isinstance(ann, dict) else None for k in ("id", "image_id")]
        if caption is None or not all(isinstance(x, int) for x in ids):
            if on_error == "error":
                raise CorpusFormatError(
                    path, f"annotation {i}", 'missing or bad "id", "image_id" or "caption"',
                    COCO_FORMAT,
                )  # fmt: skip
            skipped += 1
            continue
        records.append((ids[0], ids[1], caption))
    records.sort(key=lambda r: r[0])
    if one_per_image:
        seen: set[int] = set()
        records = [r for r in records if not (r[1] in seen or seen.add(r[1]))]
    return _labelled((r[2].strip() for r in records), labeler, skipped, cap)


def read_localized_narratives(
    path: str | Path,
    labeler: SynonymLabeler,
    *,
    max_words: int | None = None,
    on_error: OnError = "error",
    cap: int | None = None,
) -> LoadedCorpus:
    """OpenImages Localized Narratives (JSON lines with a ``caption``), labels parsed.

    ``max_words`` keeps the first words of each narrative (TaI-DPT: 77) for both the text and
    its labels: narratives are long, and CLIP reads at most 77 tokens anyway.
    """
    _check_on_error(on_error)
    path = Path(path)
    counter = [0]

    def texts() -> Iterator[str]:
        for number, record in _json_lines(path, on_error, NARRATIVES_FORMAT, counter):
            caption = _string_field(record, "caption")
            if caption is None:
                if on_error == "error":
                    raise CorpusFormatError(
                        path, f"line {number}", 'no "caption" string', NARRATIVES_FORMAT
                    )
                counter[0] += 1
                continue
            words = caption.split()
            yield " ".join(words[:max_words] if max_words is not None else words)

    result = labeler.label_texts(texts())
    corpus = cap_per_class(TextCorpus(result.texts, result.labels), cap)
    return LoadedCorpus(corpus, result.dropped, counter[0])


def read_text_lines(
    path: str | Path, labeler: SynonymLabeler, *, cap: int | None = None
) -> LoadedCorpus:
    """One sentence per line (PVP's LLM sentences), labels parsed; blank lines are ignored."""
    with open(path, encoding="utf-8") as f:
        lines = [line.strip() for line in f]
    return _labelled((line for line in lines if line), labeler, 0, cap)


def class_name_index(
    class_names: Sequence[str], synonyms: Mapping[str, Iterable[str]] | None = None
) -> dict[str, set[int]]:
    """Lookup from a written class name (any case, spacing, plural or synonym) to classes.

    Exact class names win over synonyms, so a synonym shared with another class never hides it.
    """
    index: dict[str, set[int]] = {}
    for c, name in enumerate(class_names):
        for phrase in (synonyms or {}).get(name, ()):
            for variant in phrase_variants(phrase):
                index.setdefault(variant, set()).add(c)
    for c, name in enumerate(class_names):
        for variant in phrase_variants(name):
            index[variant] = {c}
    return index


def read_llm_descriptions(
    path: str | Path,
    class_names: Sequence[str],
    synonyms: Mapping[str, Iterable[str]] | None = None,
    *,
    on_error: OnError = "error",
    cap: int | None = None,
) -> LoadedCorpus:
    """CoMC-style LLM descriptions; the labels are the requested class names, not parsed.

    A label naming no class is always an error (it means the file was made for another class
    list); records with an empty label list are dropped and counted.
    """
    _check_on_error(on_error)
    path = Path(path)
    head = path.read_text(encoding="utf-8").lstrip()[:1]
    counter = [0]
    if head == "[":
        data = _read_json(path, LLM_FORMAT)
        records: Iterable[tuple[str, Any]] = ((f"entry {i}", r) for i, r in enumerate(data, 1))
    else:
        records = ((f"line {n}", r) for n, r in _json_lines(path, on_error, LLM_FORMAT, counter))
    index = class_name_index(class_names, synonyms)
    texts, rows, dropped = [], [], 0
    for where, record in records:
        text = _string_field(record, "description")
        names = record.get("labels") if isinstance(record, dict) else None
        if (
            text is None
            or not isinstance(names, list)
            or not all(isinstance(n, str) for n in names)
        ):
            if on_error == "error":
                raise CorpusFormatError(
                    path, where, 'missing or bad "labels" or "description"', LLM_FORMAT
                )
            counter[0] += 1
            continue
        classes: set[int] = set()
        for name in names:
            found = set().union(*(index.get(v, set()) for v in phrase_variants(name)))
            if not found:
                raise CorpusFormatError(
                    path, where, f"label {name!r} names none of the classes", LLM_FORMAT
                )
            classes |= found
        if not classes:
            dropped += 1
            continue
        texts.append(text.strip())
        rows.append(sorted(classes))
    labels = np.zeros((len(texts), len(class_names)), dtype=np.int8)
    for i, classes_i in enumerate(rows):
        labels[i, classes_i] = 1
    return LoadedCorpus(cap_per_class(TextCorpus(texts, labels), cap), dropped, counter[0])
