"""Turning free text into multi-hot labels by matching class synonyms, as text-only methods do.

Text-only MLR methods never see image labels: they label captions or sentences by looking for
words that name a class (TaI-DPT matches class names and synonyms after lemmatisation). This
labeler matches whole words and phrases, singular or plural, case-insensitively; longer phrases
win over the words inside them ("traffic light" is not also a "light").
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

import numpy as np


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


def _normalise(text: str) -> str:
    """Lower case, punctuation and hyphens to spaces: texts and synonyms are compared alike."""
    return " ".join(re.sub(r"[^a-z0-9' ]", " ", text.lower()).split())


class SynonymLabeler:
    """Multi-hot labels ``[N, C]`` (int8, 1 = mentioned) from class synonyms."""

    def __init__(self, class_names: Sequence[str], synonyms: Mapping[str, Iterable[str]]) -> None:
        self.class_names = list(class_names)
        phrase_to_class: dict[str, int] = {}
        for c, name in enumerate(self.class_names):
            for phrase in {name, *synonyms.get(name, ())}:
                words = _normalise(phrase.replace("_", " ")).split()
                if not words:
                    continue
                for last in plural_forms(words[-1]):
                    phrase_to_class.setdefault(" ".join([*words[:-1], last]), c)
        # Longest phrases first so that the alternation prefers "traffic light" over "light".
        ordered = sorted(phrase_to_class, key=lambda p: (-len(p), p))
        self._pattern = re.compile(r"\b(" + "|".join(re.escape(p) for p in ordered) + r")\b")
        self._phrase_to_class = phrase_to_class

    def classes_in(self, text: str) -> set[int]:
        """Indices of the classes that ``text`` mentions."""
        return {self._phrase_to_class[m] for m in self._pattern.findall(_normalise(text))}

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        labels = np.zeros((len(texts), len(self.class_names)), dtype=np.int8)
        for i, text in enumerate(texts):
            labels[i, list(self.classes_in(text))] = 1
        return labels
