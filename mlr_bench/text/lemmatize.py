"""Tokenising and lemmatising English text for synonym matching, behind one small interface.

Labels are parsed by comparing lemmas, so "two dogs" names the dog class and "mice" names the
mouse class. The lemmatiser is ``simplemma`` (pure Python, data bundled, works offline). It has no
part-of-speech tagger, so it would read "training" as "train" and "tied" as "tie"; the reference
(TaI-DPT) tags parts of speech and treats most such words as nouns or adjectives. We keep words
ending in -ing/-ed/-er as written instead, so participles and comparatives never become class
nouns by accident. Class synonyms go through the same function, so both sides always agree.
"""

from __future__ import annotations

import re
from functools import lru_cache

import simplemma

#: Bump when tokenising or lemmatising changes: cached labels depend on it.
LEMMATIZER_VERSION = "simplemma-en-1"

_TOKEN = re.compile(r"[a-z0-9]+")
_KEEP_SUFFIXES = ("ing", "ed", "er")
#: Plural nouns the lemmatiser reads as verbs ("leaves" → "leave").
_OVERRIDES = {"leaves": "leaf", "wolves": "wolf", "knives": "knife", "shelves": "shelf"}


def tokenize(text: str) -> list[str]:
    """Lower-case word tokens; punctuation, hyphens and apostrophes split words."""
    return _TOKEN.findall(text.lower())


@lru_cache(maxsize=200_000)
def lemma(token: str) -> str:
    """The noun-preferring lemma of one lower-case token (cached: vocabularies are small)."""
    if token in _OVERRIDES:
        return _OVERRIDES[token]
    if token.endswith(_KEEP_SUFFIXES) or not token.isalpha():
        return token
    return simplemma.lemmatize(token, lang="en").lower()


def lemmatize(text: str) -> list[str]:
    """Lemmas of the words of ``text``, in order."""
    return [lemma(t) for t in tokenize(text)]
