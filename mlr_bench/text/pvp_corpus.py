"""PVP's LLM corpus recipe: which prompts to ask, and how the answers become a training corpus.

The PVP reference code (github.com/Jinx630/Pseudo-Visual-Prompt, ``pvp_pretrain/data_gen/``)
builds its sentence corpus in three scripts, re-implemented here as small functions:

* ``generate1.py`` asks the LLM about every combination of 1, 2 and 3 class names (in class-list
  order, as ``itertools.combinations`` lists them) for 5 numbered sentences each;
  ``count_combinations`` and ``combination_at`` give that enumeration by request index.
* ``get_train_data.py`` keeps the numbered lines of each answer (``numbered_sentences``) and
  drops lines with a character at or above U+0100, a word longer than 15 characters, or fewer
  than 7 / more than 22 space-separated tokens *counting the "N." marker*, i.e. 6-21 words of
  the sentence itself (``FilterRules``, ``drop_reason``).
* ``wash_data.py`` lowercases, removes duplicates, repairs words glued together and replaces
  "remote" by "remote control" (``clean_corpus``).

The cleaning reproduces the reference's plain substring rules on purpose, quirks included
(its own released sentences show them): "remote control" becomes "remote control control",
and a class word glued to a preceding "a" is split even inside another word ("vacation" with
the class "cat" becomes "va cation"). Each step can be switched off.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from mlr_bench.errors import MLRBenchError

# --- which prompts -----------------------------------------------------------------------------


def parse_label_range(text: str) -> tuple[int, int]:
    """``"1-3"`` -> (1, 3) and ``"2"`` -> (2, 2): how many class names one prompt names."""
    match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", text)
    low, high = (int(match.group(1)), int(match.group(2) or match.group(1))) if match else (0, 0)
    if not match or low < 1 or high < low:
        raise MLRBenchError(
            f"--num-labels {text!r}: expected MIN-MAX with 1 <= MIN <= MAX (e.g. 1-3) or one number"
        )
    return low, high


def count_combinations(n_classes: int, min_k: int, max_k: int) -> int:
    """Number of class sets of ``min_k``..``max_k`` distinct classes (sizes above n count 0)."""
    return sum(math.comb(n_classes, k) for k in range(min_k, max_k + 1))


def combination_at(n_classes: int, min_k: int, max_k: int, index: int) -> tuple[int, ...]:
    """Class indices of request ``index`` without listing the ones before it.

    The order is the reference's: all sets of ``min_k`` classes, then of ``min_k + 1``, ...,
    each size in ``itertools.combinations`` (lexicographic) order. Computing one set directly
    keeps a request a pure function of its index, so a resumed run needs no list in memory.
    """
    if index < 0:
        raise MLRBenchError(f"combination index {index} is negative")
    rest = index
    for k in range(min_k, max_k + 1):
        size = math.comb(n_classes, k)
        if rest < size:
            return _unrank(n_classes, k, rest)
        rest -= size
    total = count_combinations(n_classes, min_k, max_k)
    raise MLRBenchError(
        f"combination index {index} is past the {total} sets of {min_k}-{max_k} of "
        f"{n_classes} classes"
    )


def _unrank(n: int, k: int, rank: int) -> tuple[int, ...]:
    """The ``rank``-th k-subset of range(n) in lexicographic order."""
    picked: list[int] = []
    start = 0
    for remaining in range(k, 0, -1):
        for c in range(start, n):
            with_c = math.comb(n - c - 1, remaining - 1)  # sets that continue with c
            if rank < with_c:
                picked.append(c)
                start = c + 1
                break
            rank -= with_c
    return tuple(picked)


# --- which answers -----------------------------------------------------------------------------

_NUMBERED = re.compile(r"^\s*\d+\.(.*)$")


def numbered_sentences(completion: str) -> tuple[list[str], int]:
    """The numbered lines ("1. A cat ...") of one answer, marker removed and stripped.

    Returns them and the count of other non-blank lines (preambles such as "Sure, here are five
    sentences:"), which the reference skips the same way: it keeps only lines that start with
    a digit and a dot.
    """
    sentences, other = [], 0
    for line in completion.splitlines():
        match = _NUMBERED.match(line)
        if match:
            sentences.append(match.group(1).strip())
        elif line.strip():
            other += 1
    return sentences, other


#: Largest code point each ``--chars`` choice allows; the reference's test is ``ord(c) < 256``.
CHARSETS: dict[str, int | None] = {"latin1": 255, "ascii": 127, "any": None}


@dataclass(frozen=True)
class FilterRules:
    """Which sentences to keep; the defaults are ``get_train_data.py``'s rules.

    Words are whitespace-separated tokens of the sentence without its "N." marker; the
    reference counts the marker as a token, hence its bounds 7 and 22 on the line.
    ``enabled=False`` keeps every sentence (empty ones excepted).
    """

    chars: str = "latin1"
    min_words: int = 6
    max_words: int = 21
    max_word_length: int = 15
    enabled: bool = True

    def __post_init__(self) -> None:
        if self.chars not in CHARSETS:
            raise MLRBenchError(f"--chars {self.chars!r}: expected one of {', '.join(CHARSETS)}")
        if not 0 <= self.min_words <= self.max_words or self.max_word_length < 1:
            raise MLRBenchError(
                f"filter bounds min words {self.min_words}, max words {self.max_words}, max "
                f"word length {self.max_word_length}: expected 0 <= min <= max and length >= 1"
            )


#: Drop reasons, in the order they are tested (the reference's order).
DROP_REASONS = ("empty", "characters", "long word", "too many words", "too few words")


def drop_reason(sentence: str, rules: FilterRules) -> str | None:
    """Why ``sentence`` is dropped (one of ``DROP_REASONS``), or None when it is kept."""
    words = sentence.split()
    if not words:
        return "empty"
    if not rules.enabled:
        return None
    limit = CHARSETS[rules.chars]
    if limit is not None and any(ord(c) > limit for c in sentence):
        return "characters"
    if any(len(w) > rules.max_word_length for w in words):
        return "long word"
    if len(words) > rules.max_words:
        return "too many words"
    if len(words) < rules.min_words:
        return "too few words"
    return None


# --- cleaning ----------------------------------------------------------------------------------

#: ``wash_data.py``'s steps in its order; ``--clean`` picks a subset, the order stays.
CLEAN_STEPS = ("lower", "dedupe", "glued", "remote")


def parse_clean_steps(text: str) -> tuple[str, ...]:
    """``"lower,dedupe"`` -> the chosen steps in the reference's order; ``"none"`` -> ()."""
    names = [s.strip() for s in text.split(",") if s.strip()]
    if names == ["none"]:
        return ()
    unknown = [s for s in names if s not in CLEAN_STEPS]
    if unknown or not names:
        raise MLRBenchError(
            f"--clean {text!r}: expected a comma list of {', '.join(CLEAN_STEPS)}, or none"
        )
    return tuple(s for s in CLEAN_STEPS if s in names)


def _restore_missing_letter(line: str, stem: str, letter: str) -> str:
    """ "aeddy bear" -> "a teddy bear": the first ``stem`` after a letter other than ``letter``
    gets a space and the lost letter (the reference repairs only the first occurrence)."""
    i = line.find(stem)
    if i > 0 and line[i - 1] not in (" ", letter, letter.upper()):
        line = f"{line[:i]} {letter}{line[i:]}"
    return line


def split_glued(line: str, words: Sequence[str]) -> str:
    """The reference's repairs of words run together, as plain substring replacements.

    "teddy" and "potted" missing their first letter after another word, "hairdryer",
    "a"/"A"/"and" glued to a class word ("acat" -> "a cat", also inside other words),
    "anut" -> "a donut" and "firehydrant"; ``words`` are the class words to look for.
    """
    line = _restore_missing_letter(line, "eddy", "t")
    line = _restore_missing_letter(line, "otted", "p")
    line = line.replace("hairdryer", "hair dryer")
    for word in words:
        for prefix in ("a", "A", "and"):
            line = line.replace(prefix + word, f"{prefix} {word}")
    line = line.replace("anut", "a donut")
    return line.replace("firehydrant", "fire hydrant")


def replace_remote(line: str) -> str:
    """Every "remote" becomes "remote control" (so "remotes" -> "remote controls" and "remote
    control" -> "remote control control", as in the reference's own corpus)."""
    return line.replace("remote", "remote control")


@dataclass
class CorpusStats:
    """What happened to the sentences on their way into the corpus, for the user's report."""

    prompts: int = 0
    unnumbered_lines: int = 0
    sentences: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0
    glued_fixed: int = 0
    remote_replaced: int = 0
    written: int = 0

    def summary(self) -> str:
        """One line: counts in, dropped by reason, cleaned, written."""
        dropped = self.dropped
        reasons = ", ".join(f"{dropped[r]} {r}" for r in DROP_REASONS if dropped[r]) or "none"
        return (
            f"{self.sentences} sentences from {self.prompts} prompts "
            f"({self.unnumbered_lines} unnumbered lines skipped); dropped: {reasons}; "
            f"{self.duplicates} duplicates removed; glued words split in {self.glued_fixed}, "
            f"'remote' replaced in {self.remote_replaced}; {self.written} written"
        )


def clean_corpus(
    sentences: Iterable[str], steps: Sequence[str], words: Sequence[str], stats: CorpusStats
) -> list[str]:
    """``wash_data.py``'s steps over the kept sentences, counting what each changed.

    Duplicates are removed before the repairs (as the reference does) and the first occurrence
    is kept, so the output order is the input order (the reference's set order is arbitrary).
    """
    lines = [s.strip() for s in sentences]
    if "lower" in steps:
        lines = [s.lower() for s in lines]
    if "dedupe" in steps:
        unique = list(dict.fromkeys(lines))
        stats.duplicates += len(lines) - len(unique)
        lines = unique
    out = []
    for line in lines:
        if "glued" in steps:
            fixed = split_glued(line, words)
            stats.glued_fixed += fixed != line
            line = fixed
        if "remote" in steps:
            fixed = replace_remote(line)
            stats.remote_replaced += fixed != line
            line = fixed
        out.append(line)
    return out


def glue_words(class_names: Sequence[str]) -> list[str]:
    """Class words for ``split_glued``: underscores read as spaces, lowercase, each once.

    The reference uses every synonym in its synonyms file; we use the class names asked for.
    """
    return list(dict.fromkeys(n.replace("_", " ").lower() for n in class_names))


def build_corpus(
    answers: Iterable[tuple[list[str], int]],
    rules: FilterRules,
    steps: Sequence[str],
    words: Sequence[str],
) -> tuple[list[str], CorpusStats]:
    """Filtered, cleaned corpus lines from each prompt's (sentences, unnumbered lines)."""
    stats = CorpusStats()
    kept: list[str] = []
    for sentences, unnumbered in answers:
        stats.prompts += 1
        stats.unnumbered_lines += unnumbered
        stats.sentences += len(sentences)
        for sentence in sentences:
            reason = drop_reason(sentence, rules)
            if reason is None:
                kept.append(sentence)
            else:
                stats.dropped[reason] += 1
    lines = clean_corpus(kept, steps, words, stats)
    stats.written = len(lines)
    return lines, stats
