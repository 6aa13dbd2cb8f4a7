"""Readers for the text corpora that text-only methods train on, each giving a labelled corpus.

* COCO captions (TaI-DPT for VOC and COCO; PVP's "clean text"): labels parsed from the text.
* OpenImages Localized Narratives (TaI-DPT for NUS-WIDE): labels parsed, optionally truncated.
* CoMC-style LLM descriptions ``{"labels": [...], "description": ...}``: labels are the requested
  set, *not* parsed from the text (as CoMC does).
* Plain text lines (PVP's LLM sentences): labels parsed.

Every text is first cut to what the CLIP text encoder reads (``context_length`` tokens, see
:mod:`mlr_bench.text.truncate`), so labels never come from words the model does not see. Texts
that name no class are dropped and counted; malformed records raise ``CorpusFormatError``
naming the file and line (and column or offset), or with ``on_error="skip"`` are skipped and
counted. Files are UTF-8 (a byte-order mark is ignored, CRLF and CR line ends are lines); other
bytes are an error naming the line and byte. :func:`check_training_corpus` turns a corpus in
which nothing is labelled into an error and a nearly empty or degenerate one into warnings.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from mlr_bench.errors import MLRBenchError
from mlr_bench.text.corpus import TextCorpus
from mlr_bench.text.labeler import SynonymLabeler, phrase_variants
from mlr_bench.text.truncate import CLIP_CONTEXT_LENGTH, truncator_for

OnError = Literal["error", "skip"]

COCO_FORMAT = 'a JSON object {"annotations": [{"image_id": int, "id": int, "caption": str}, ...]}'
NARRATIVES_FORMAT = 'JSON lines, each an object with a "caption" string'
LLM_FORMAT = 'a JSON list (or JSON lines) of {"labels": [class names], "description": str}'


class CorpusFormatError(MLRBenchError):
    """A corpus file, or one record in it, is not in the expected format."""

    def __init__(self, path: Path, where: str, problem: str, expected: str) -> None:
        super().__init__(f"{path}, {where}: {problem}; expected {expected}")


class EmptyCorpusError(MLRBenchError):
    """A training corpus in which no text names any class: training would see templates only."""


@dataclass(frozen=True)
class LoadedCorpus:
    """A labelled corpus and what happened to the other texts read: dropped for naming no
    class, malformed and skipped (``on_error="skip"``), removed by the per-class ``cap``, and
    how many were cut to the encoder's context before labelling. Worth reporting: each changes
    the training set."""

    corpus: TextCorpus
    dropped: int = 0
    skipped: int = 0
    capped: int = 0
    truncated: int = 0
    #: texts about excluded images (COCO captions of test images), removed before labelling
    excluded: int = 0

    @property
    def read(self) -> int:
        """Texts (records) read from the file, kept or not."""
        return len(self.corpus) + self.dropped + self.skipped + self.capped + self.excluded


def _check_on_error(on_error: str) -> None:
    if on_error not in ("error", "skip"):
        raise ValueError(f"on_error must be 'error' or 'skip', not {on_error!r}")


def _labelled(
    texts: Iterable[str],
    labeler: SynonymLabeler,
    skipped: Callable[[], int],
    cap: int | None,
    context_length: int | None,
) -> LoadedCorpus:
    """Cut each text to the encoder's context, label it, then cap; ``skipped()`` is read last
    (the reader counts malformed records while ``texts`` is consumed)."""
    truncate = truncator_for(context_length)
    result = labeler.label_texts(texts if truncate is None else map(truncate, texts))
    corpus = TextCorpus(result.texts, result.labels)
    capped = cap_per_class(corpus, cap)
    return LoadedCorpus(
        capped,
        result.dropped,
        skipped(),
        len(corpus) - len(capped),
        0 if truncate is None else truncate.cut,
    )


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


_BOM = b"\xef\xbb\xbf"


def _decode(path: Path, data: bytes, first_line: int, expected: str, offset: int = 0) -> str:
    """``data`` (starting at line ``first_line``, file offset ``offset``) as UTF-8; bad bytes
    are an error naming the line, the byte in it and the file offset."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = first_line + data.count(b"\n", 0, e.start)
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise CorpusFormatError(
            path, f"line {line}, byte {column} (file offset {offset + e.start:,})",
            f"not UTF-8 text (byte 0x{data[e.start]:02x}); re-save the file as UTF-8",
            expected,
        ) from None  # fmt: skip


def _json_error(
    path: Path, where: str, e: json.JSONDecodeError, expected: str, scope: str = "file"
) -> CorpusFormatError:
    """Where the JSON broke: column and character offset in the ``scope`` ("file" or "line"),
    and whether the text simply ends there (a truncated file)."""
    ends = e.pos >= len(e.doc.rstrip()) or e.msg.startswith("Unterminated string")  # at EOF
    hint = f"; the {scope} ends there: is the file truncated (interrupted copy, full disk)?"
    return CorpusFormatError(
        path, where,
        f"invalid JSON at column {e.colno} (character {e.pos:,} of the {scope}'s "
        f"{len(e.doc):,}): {e.msg}" + (hint if ends else ""),
        expected,
    )  # fmt: skip


def read_json_file(path: str | Path, expected: str) -> Any:
    """A whole-file JSON document; empty, non-UTF-8 or invalid JSON is a ``CorpusFormatError``
    naming the line, column and character offset."""
    path = Path(path)
    data = path.read_bytes()
    bom = len(_BOM) if data.startswith(_BOM) else 0
    if not data[bom:].strip():
        raise CorpusFormatError(path, "the whole file", "the file is empty", expected)
    text = _decode(path, data[bom:], 1, expected, bom)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise _json_error(path, f"line {e.lineno}", e, expected) from None


def iter_text_lines(
    path: str | Path,
    expected: str,
    on_bad: Callable[[CorpusFormatError], None] | None = None,
) -> Iterator[tuple[int, str]]:
    """``(line number, line)`` of a UTF-8 text file, line ends removed, streamed (files of
    millions of lines). A byte-order mark is dropped; LF, CRLF and CR all end a line. A line
    that is not UTF-8 raises, or is passed to ``on_bad`` and left out."""
    path = Path(path)
    number, offset = 0, 0
    with open(path, "rb") as f:
        for raw in f:
            start = offset
            offset += len(raw)
            if number == 0 and raw.startswith(_BOM):
                raw, start = raw[len(_BOM) :], start + len(_BOM)
            raw = raw.removesuffix(b"\n")
            parts = raw.split(b"\r") if b"\r" in raw else [raw]
            if len(parts) > 1 and parts[-1] == b"":
                parts.pop()  # CRLF or a final CR: it ends the line, it starts no other
            for part in parts:
                number += 1
                try:
                    yield number, _decode(path, part, number, expected, start)
                except CorpusFormatError as e:
                    if on_bad is None:
                        raise
                    on_bad(e)
                start += len(part) + 1


def _json_lines(
    path: Path, on_error: OnError, expected: str, counter: list[int]
) -> Iterator[tuple[int, Any]]:
    """``(line number, parsed object)`` for the non-blank lines; bad lines raise or are counted."""

    def count(_: CorpusFormatError) -> None:
        counter[0] += 1

    for number, line in iter_text_lines(path, expected, None if on_error == "error" else count):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as e:
            if on_error == "error":
                raise _json_error(path, f"line {number}", e, expected, "line") from None
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
    context_length: int | None = CLIP_CONTEXT_LENGTH,
    exclude_image_ids: Iterable[int] | None = None,
) -> LoadedCorpus:
    """COCO caption annotations (``captions_train2017.json``), labels parsed from the captions.

    ``one_per_image`` keeps each image's caption with the lowest annotation id (deterministic;
    TaI-DPT uses one caption per train2017 image). Captions are in annotation-id order, cut to
    ``context_length`` CLIP tokens before labelling. Captions of ``exclude_image_ids`` (COCO
    image ids: train2017 holds most val2014 images, the COCO 2014 test set) are removed first
    and counted in ``excluded``.
    """
    _check_on_error(on_error)
    path = Path(path)
    data = read_json_file(path, COCO_FORMAT)
    annotations = data.get("annotations") if isinstance(data, dict) else None
    if not isinstance(annotations, list):
        raise CorpusFormatError(path, "top level", 'no "annotations" list', COCO_FORMAT)
    records, skipped = [], 0
    for i, ann in enumerate(annotations, start=1):
        caption = _string_field(ann, "caption")
        ids = [ann.get(k) if isinstance(ann, dict) else None for k in ("id", "image_id")]
        if caption is None or not all(_is_int(x) for x in ids):
            if on_error == "error":
                raise CorpusFormatError(
                    path, f"annotation {i}", 'missing or bad "id", "image_id" or "caption"',
                    COCO_FORMAT,
                )  # fmt: skip
            skipped += 1
            continue
        records.append((ids[0], ids[1], caption))
    records.sort(key=lambda r: r[0])
    excluded_ids = frozenset(exclude_image_ids or ())
    kept = [r for r in records if r[1] not in excluded_ids]
    if one_per_image:  # one per remaining image; excluded counts captions of excluded images
        seen: set[int] = set()
        kept = [r for r in kept if not (r[1] in seen or seen.add(r[1]))]
        excluded = len({r[1] for r in records} & excluded_ids)
    else:
        excluded = len(records) - len(kept)
    texts = (r[2].strip() for r in kept)
    loaded = _labelled(texts, labeler, lambda: skipped, cap, context_length)
    return dataclasses.replace(loaded, excluded=excluded)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def read_localized_narratives(
    path: str | Path,
    labeler: SynonymLabeler,
    *,
    max_words: int | None = None,
    on_error: OnError = "error",
    cap: int | None = None,
    context_length: int | None = CLIP_CONTEXT_LENGTH,
) -> LoadedCorpus:
    """OpenImages Localized Narratives (JSON lines with a ``caption``), labels parsed.

    ``max_words`` keeps the first words of each narrative (TaI-DPT: 77); the result is then cut
    to ``context_length`` CLIP tokens (77 words are often more than 75 tokens), and only what
    is left is labelled.
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

    return _labelled(texts(), labeler, lambda: counter[0], cap, context_length)


def read_text_lines(
    path: str | Path,
    labeler: SynonymLabeler,
    *,
    cap: int | None = None,
    context_length: int | None = CLIP_CONTEXT_LENGTH,
) -> LoadedCorpus:
    """One sentence per line (PVP's LLM sentences), labels parsed from the part of each line
    the encoder reads (``context_length`` CLIP tokens); blank lines are ignored.

    A file whose first line is a JSON object is refused: it is a ``{"labels", "description"}``
    file named ``.txt``, whose JSON keys would be labelled as words.
    """
    path = Path(path)
    expected = "UTF-8 text, one sentence per line"

    def texts() -> Iterator[str]:
        first = True
        for number, line in iter_text_lines(path, expected):
            line = line.strip()
            if not line:
                continue
            if first and line.startswith("{"):
                try:
                    looks_like_json = isinstance(json.loads(line), dict)
                except json.JSONDecodeError:
                    looks_like_json = False
                if looks_like_json:
                    raise CorpusFormatError(
                        path, f"line {number}",
                        "a JSON object, not a sentence (JSON lines must be named .jsonl or "
                        ".json, so that their labels are read instead of parsed)",
                        expected,
                    )  # fmt: skip
            first = False
            yield line

    return _labelled(texts(), labeler, lambda: 0, cap, context_length)


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


def _first_char(path: Path) -> str:
    """The first non-blank character of a file (a byte-order mark skipped), or ''."""
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    return head.removeprefix(_BOM).lstrip()[:1].decode("ascii", errors="replace")


def read_llm_descriptions(
    path: str | Path,
    class_names: Sequence[str],
    synonyms: Mapping[str, Iterable[str]] | None = None,
    *,
    on_error: OnError = "error",
    cap: int | None = None,
    context_length: int | None = CLIP_CONTEXT_LENGTH,
) -> LoadedCorpus:
    """CoMC-style LLM descriptions; the labels are the requested class names, not parsed.

    A label naming no class is always an error (it means the file was made for another class
    list); records with an empty label list are dropped and counted, an empty description is
    malformed. A description longer than ``context_length`` CLIP tokens is cut, and a
    requested label whose class the labeler finds only in the cut-off part is removed (the
    model never reads that mention); the record is dropped when no label is left.
    """
    _check_on_error(on_error)
    path = Path(path)
    counter = [0]
    if _first_char(path) == "[":
        data = read_json_file(path, LLM_FORMAT)
        records: Iterable[tuple[str, Any]] = ((f"entry {i}", r) for i, r in enumerate(data, 1))
    else:
        records = ((f"line {n}", r) for n, r in _json_lines(path, on_error, LLM_FORMAT, counter))
    index = class_name_index(class_names, synonyms)
    truncate = truncator_for(context_length)
    labeler: SynonymLabeler | None = None
    texts, rows, dropped = [], [], 0
    for where, record in records:
        text = _string_field(record, "description")
        names = record.get("labels") if isinstance(record, dict) else None
        problem = None
        if (
            text is None
            or not isinstance(names, list)
            or not all(isinstance(n, str) for n in names)
        ):
            problem = 'missing or bad "labels" or "description"'
        elif not text.strip():
            problem = 'empty "description"'
        if problem is not None:
            if on_error == "error":
                raise CorpusFormatError(path, where, problem, LLM_FORMAT)
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
        text = text.strip()
        if truncate is not None and classes:
            kept = truncate(text)
            if kept != text:
                labeler = labeler or SynonymLabeler(class_names, synonyms or {})
                only_cut = labeler.classes_in(text) - labeler.classes_in(kept)
                classes = classes - only_cut if kept else set()
                text = kept
        if not classes:
            dropped += 1
            continue
        texts.append(text)
        rows.append(sorted(classes))
    labels = np.zeros((len(texts), len(class_names)), dtype=np.int8)
    for i, classes_i in enumerate(rows):
        labels[i, classes_i] = 1
    corpus = TextCorpus(texts, labels)
    capped = cap_per_class(corpus, cap)
    truncated = 0 if truncate is None else truncate.cut
    return LoadedCorpus(capped, dropped, counter[0], len(corpus) - len(capped), truncated)


def check_training_corpus(
    loaded: LoadedCorpus, source: str | Path, class_names: Sequence[str]
) -> list[str]:
    """Refuse a corpus in which no text names a class, and describe worrying ones.

    Raises :class:`EmptyCorpusError` (naming ``source`` and the counts) when no text was kept:
    training would run on template sentences alone and look like it worked. Returns warnings
    (the caller emits them) for: fewer than 1 % of the texts read kept; texts cut to the
    encoder's context; classes that no text names; and mostly repeated texts.
    """
    n, read = len(loaded.corpus), loaded.read
    counts = (
        f"{read:,} texts read: {n:,} kept, {loaded.dropped:,} naming no class, "
        f"{loaded.skipped:,} malformed and skipped"
        + (f", {loaded.capped:,} over the per-class cap" if loaded.capped else "")
    )
    if n == 0:
        hint = (
            "The file holds no text."
            if read == 0
            else "Is it the corpus of another dataset, or in another language?"
        )
        raise EmptyCorpusError(
            f"{source}: no text names any of the {len(class_names)} classes ({counts}). {hint} "
            "Training on it would use the template sentences alone. Classes are matched by "
            f"name and synonyms, e.g. {', '.join(repr(c) for c in list(class_names)[:5])}."
        )
    warnings_: list[str] = []
    if n + loaded.capped < 0.01 * read:
        warnings_.append(
            f"{source}: only {n + loaded.capped:,} of {read:,} texts name a class "
            f"({100 * (n + loaded.capped) / read:.2f} %; {counts}). Is it the right corpus "
            "for this dataset?"
        )
    if loaded.truncated:
        warnings_.append(
            f"{source}: {loaded.truncated:,} texts are longer than the text encoder's context "
            "and were cut before labelling (labels come only from the part the encoder reads)"
        )
    missing = [
        c for c, k in zip(class_names, loaded.corpus.labels.sum(axis=0), strict=True) if k == 0
    ]
    if missing:
        warnings_.append(
            f"{source}: {len(missing)} of {len(class_names)} classes are named by no kept text "
            f"({', '.join(missing[:10])}{', ...' if len(missing) > 10 else ''}); they train on "
            "template sentences only"
        )
    distinct = Counter(loaded.corpus.texts)
    if n >= 10 and len(distinct) < 0.5 * n:
        text, times = distinct.most_common(1)[0]
        warnings_.append(
            f"{source}: only {len(distinct):,} distinct texts among the {n:,} kept (the most "
            f"repeated, {times:,} times: {text[:80]!r}); repeated texts weigh their labels more"
        )
    return warnings_
