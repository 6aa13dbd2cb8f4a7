"""Reading class mentions (with count, colour and size words) back out of free text.

The text-to-image stand-in needs to know what a caption asks for, and tests need to know what a
caption names. Matching works on whole words, longest phrase first ("lightning bolt" is one
bolt), singular or plural, like the benchmark's synonym labeler.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mlr_bench.world.categories import CLASS_NAMES, SYNONYMS, plural
from mlr_bench.world.palette import COLOR_WORDS

_TOKEN = re.compile(r"[a-z0-9']+")
COUNT_WORDS = {
    "one": 1,
    "single": 1,
    "two": 2,
    "2": 2,
    "pair": 2,
    "couple": 2,
    "some": 2,
    "few": 2,
    "three": 3,
    "3": 3,
    "several": 3,
    "many": 3,
    "four": 4,
    "4": 4,
}
#: Size words → object extent as a fraction of the image side.
SIZE_WORDS = {
    "tiny": 0.16,
    "little": 0.2,
    "small": 0.2,
    "big": 0.34,
    "large": 0.34,
    "huge": 0.38,
}
_GLUE = {"a", "an", "the", "of", "very"}


@dataclass(frozen=True)
class Mention:
    """One class named in a text, with what the words around it say about it."""

    category: int
    count: int
    color: str | None
    size: float | None
    token: int  # index of the mention's first word


def tokenize(text: str) -> list[str]:
    """Lower-case words; punctuation and hyphens separate words."""
    return _TOKEN.findall(text.lower())


def _phrase_table() -> dict[tuple[str, ...], tuple[int, bool]]:
    table: dict[tuple[str, ...], tuple[int, bool]] = {}
    for c, name in enumerate(CLASS_NAMES):
        for phrase in SYNONYMS[name]:
            singular = tuple(tokenize(phrase))
            table.setdefault(singular, (c, False))
            for form in {plural(phrase), phrase + "s"}:
                key = tuple(tokenize(form))
                table.setdefault(key, (c, key != singular))
    return table


_PHRASES = _phrase_table()
_MAX_WORDS = max(len(k) for k in _PHRASES)


def _modifiers(
    tokens: list[str], start: int, stop: int
) -> tuple[int | None, str | None, float | None]:
    """Count, colour and size words directly before a mention (back to a non-modifier word)."""
    count = color = size = None
    for word in reversed(tokens[stop:start]):
        if word in COUNT_WORDS:
            count = COUNT_WORDS[word] if count is None else count
        elif word in COLOR_WORDS:
            color = COLOR_WORDS[word] if color is None else color
        elif word in SIZE_WORDS:
            size = SIZE_WORDS[word] if size is None else size
        elif word not in _GLUE:
            break
    return count, color, size


def find_mentions(text: str) -> list[Mention]:
    """Every class mention in ``text``, in order of appearance."""
    tokens = tokenize(text)
    found: list[Mention] = []
    i, previous_end = 0, 0
    while i < len(tokens):
        for length in range(min(_MAX_WORDS, len(tokens) - i), 0, -1):
            hit = _PHRASES.get(tuple(tokens[i : i + length]))
            if hit:
                break
        else:
            i += 1
            continue
        category, is_plural = hit
        count, color, size = _modifiers(tokens, i, previous_end)
        if count is None:
            count = 2 if is_plural else 1
        found.append(Mention(category, count, color, size, i))
        i = previous_end = i + length
    return found


def mentioned_classes(text: str) -> set[int]:
    """Indices of the classes ``text`` names."""
    return {m.category for m in find_mentions(text)}
