"""Turning free text into multi-hot labels by matching class synonyms, as text-only methods do.

Text-only MLR methods never see image labels: they label captions or sentences by looking for
words that name a class (TaI-DPT lower-cases, lemmatises and matches class names and synonyms).
This labeler does the same on lemmas: whole words only, multi-word phrases before single words
(also written without the space: "motor bike" → "motorbike"), and every hit is removed from the
text before shorter phrases are tried, so "hot dog" is not also a "dog" and "traffic light" is
not also a "light". Texts that name no class are dropped by ``label_texts`` and counted.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from mlr_bench.text.lemmatize import LEMMATIZER_VERSION, lemma, lemmatize, tokenize

#: Bump when matching changes in a way that changes labels: cached corpora depend on it.
LABELER_VERSION = f"2+{LEMMATIZER_VERSION}"

# Marks a removed hit, so that the words around it never join into a new phrase.
_GAP = "|"


def plural_forms(word: str) -> set[str]:
    """A word and its regular English plural(s): box→boxes, city→cities, leaf→leaves."""
    forms = {word, word + "s"}
    if word.endswith(("s", "x", "z", "ch", "sh")):
        forms.add(word + "es")
    if word.endswith("y") and len(word) > 1 and word[-2] not in "aeiou":
        forms.add(word[:-1] + "ies")
    if word.endswith("f"):
        forms.add(word[:-1] + "ves")
    if word.endswith("fe"):
        forms.add(word[:-2] + "ves")
    return forms


def phrase_variants(phrase: str) -> set[str]:
    """Lemma strings under which a synonym is recognised: as written, pluralised, and (for
    several words) with the spaces removed. Plurals the lemmatiser misses ("tvs") still match."""
    words = tokenize(phrase.replace("_", " "))
    if not words:
        return set()
    variants = set()
    for last in plural_forms(words[-1]):
        written = [*words[:-1], last]
        variants.add(" ".join(lemma(w) for w in written))
        if len(written) > 1:
            variants.add(lemma("".join(written)))
    return variants


def synonym_table_hash(class_names: Sequence[str], synonyms: Mapping[str, Iterable[str]]) -> str:
    """Stable hash of a class list and its synonyms (a cache key: edited tables relabel)."""
    table = [[name, sorted(set(synonyms.get(name, ())))] for name in class_names]
    return hashlib.sha256(json.dumps(table).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class LabeledTexts:
    """Texts that name at least one class, their labels, and how many texts named none."""

    texts: list[str]
    labels: np.ndarray
    dropped: int


class SynonymLabeler:
    """Multi-hot labels ``[N, C]`` (int8, 1 = mentioned) from class synonyms.

    ``synonyms`` maps a class name to its other names; the class name itself always counts. A
    phrase listed under several classes fires all of them.
    """

    def __init__(self, class_names: Sequence[str], synonyms: Mapping[str, Iterable[str]]) -> None:
        self.class_names = list(class_names)
        self.table_hash = synonym_table_hash(self.class_names, synonyms)
        phrase_to_classes: dict[str, set[int]] = {}
        for c, name in enumerate(self.class_names):
            for phrase in {name, *synonyms.get(name, ())}:
                for variant in phrase_variants(phrase):
                    phrase_to_classes.setdefault(variant, set()).add(c)
        self._phrase_to_classes = phrase_to_classes
        # One pattern per phrase length, longest first: longer phrases are found and removed
        # before the words inside them are tried. Within a length, longer strings go first.
        by_length: dict[int, list[str]] = {}
        for phrase in phrase_to_classes:
            by_length.setdefault(phrase.count(" ") + 1, []).append(phrase)
        self._patterns = [
            re.compile(
                r"(?<![^ ])("
                + "|".join(re.escape(p) for p in sorted(by_length[n], key=lambda p: (-len(p), p)))
                + r")(?![^ ])"
            )
            for n in sorted(by_length, reverse=True)
        ]

    def classes_in(self, text: str) -> set[int]:
        """Indices of the classes that ``text`` mentions."""
        found: set[int] = set()

        def hit(match: re.Match[str]) -> str:
            found.update(self._phrase_to_classes[match.group(1)])
            return _GAP

        lemmas = " ".join(lemmatize(text))
        for pattern in self._patterns:
            lemmas = pattern.sub(hit, lemmas)
        return found

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        labels = np.zeros((len(texts), len(self.class_names)), dtype=np.int8)
        for i, text in enumerate(texts):
            labels[i, sorted(self.classes_in(text))] = 1
        return labels

    def label_texts(self, texts: Iterable[str]) -> LabeledTexts:
        """Label texts, keeping those that name a class (in order) and counting the others."""
        kept, rows, dropped = [], [], 0
        for text in texts:
            classes = self.classes_in(text)
            if classes:
                kept.append(text)
                rows.append(sorted(classes))
            else:
                dropped += 1
        labels = np.zeros((len(kept), len(self.class_names)), dtype=np.int8)
        for i, classes in enumerate(rows):
            labels[i, classes] = 1
        return LabeledTexts(kept, labels, dropped)
