"""Generated training text of realistic length that names the datasets' classes.

The rehearsal needs corpora as large as the real ones (COCO captions, Localized Narratives, LLM
sentences) so that reading, labelling, tokenising and caching run at full size. Content does not
matter to the costs, length and class mentions do: every text is filler words around 1-k class
phrases (a class name or one of its synonyms from the project's own tables, so the labeler finds
them). Filler words that any dataset's labeler would read as a class are removed once, so a text
names exactly the classes it was built from. Everything depends only on the seed.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cache, lru_cache

import numpy as np

from mlr_bench.text.labeler import SynonymLabeler
from mlr_bench.text.synonyms import synonym_table
from scale import DATASETS

_FILLER_TEXT = """
a an the this that some two three several many few small large big little old young new red
blue green yellow white black brown gray orange-ish wooden metal plastic bright dark shiny
sitting standing walking lying holding looking resting waiting parked placed leaning hanging
next near beside behind under over on in at with from into onto across along around between
of and while where very quite slightly together outside inside corner middle left right front
top bottom side view close up background foreground image picture photo scene shot frame day
afternoon morning evening light shadow surface floor wall ground corner area space spot edge
pile stack row group pair set bunch part piece kind sort looks seems appears shows features
contains captured taken there here is are was were has have being been its their his her
towards against during after before about around quite just also still even only really
colorful empty crowded busy quiet calm sunny cloudy rainy wet dry clean messy tidy simple
"""
_FILLER = _FILLER_TEXT.split()

_NARRATIVE_OPENERS = (
    "in this image we can see",
    "in this picture i can see",
    "this is an image of",
    "in the front of the image there is",
    "here we can see",
)


@dataclass(frozen=True)
class TextShape:
    """Words per text and class mentions per text (inclusive ranges)."""

    min_words: int
    max_words: int
    min_classes: int
    max_classes: int


CAPTION = TextShape(8, 20, 1, 3)
NARRATIVE = TextShape(30, 80, 1, 4)
SENTENCE = TextShape(7, 22, 1, 3)  # PVP: LLM sentences with 1-3 classes
DESCRIPTION = TextShape(8, 25, 1, 5)  # CoMC: "a brief sentence" about 1-5 classes


@lru_cache(maxsize=1)
def filler_words() -> tuple[str, ...]:
    """Filler that names no class of any dataset (checked with the real labelers)."""
    labelers = [labeler(d) for d in DATASETS]
    return tuple(w for w in _FILLER if not any(lab.classes_in(w) for lab in labelers))


@cache
def class_table(dataset: str) -> tuple[list[str], dict[str, list[str]]]:
    """Class names and the synonym lists the datamodule labels with (class name first)."""
    names, table = synonym_table(dataset)
    return names, {c: list(dict.fromkeys([c, *table.get(c, [])])) for c in names}


@cache
def labeler(dataset: str) -> SynonymLabeler:
    names, synonyms = class_table(dataset)
    return SynonymLabeler(names, synonyms)


@cache
def class_phrases(dataset: str) -> tuple[tuple[str, ...], ...]:
    """Per class, the phrases a generated text may name it by: its synonyms that the labeler
    reads as exactly that class (a phrase shared with another class would add a label)."""
    names, synonyms = class_table(dataset)
    lab = labeler(dataset)
    phrases = []
    for c, name in enumerate(names):
        usable = [p for p in synonyms[name] if lab.classes_in(p) == {c}]
        phrases.append(tuple(usable or [name]))
    return tuple(phrases)


def class_weights(
    num_classes: int, seed: int, top: int | None = None, skew: float = 0.8
) -> np.ndarray:
    """A long-tailed class prior (Zipf-like over a seeded ranking); class ``top`` (``person``
    in every dataset here, as in the real label statistics) is made the most frequent."""
    ranks = np.random.default_rng(seed).permutation(num_classes)
    if top is not None:
        ranks[ranks == 0], ranks[top] = ranks[top], 0
    weights = 1.0 / (ranks + 1.0) ** skew
    return weights / weights.sum()


def person_index(dataset: str) -> int | None:
    names, _ = class_table(dataset)
    return names.index("person") if "person" in names else None


def draw_classes(
    rng: np.random.Generator, weights: np.ndarray, counts: np.ndarray
) -> list[list[int]]:
    """For each row, ``counts[i]`` distinct classes drawn by ``weights`` (Gumbel top-k)."""
    keys = np.log(weights)[None, :] + rng.gumbel(size=(len(counts), len(weights)))
    order = np.argsort(-keys, axis=1)
    return [order[i, : counts[i]].tolist() for i in range(len(counts))]


def generate_texts(
    dataset: str, n: int, shape: TextShape, seed: int, opener: bool = False
) -> Iterator[tuple[str, list[int]]]:
    """``n`` texts and the classes each was built to name, made in chunks so that memory stays
    flat; ``opener`` starts each with a Localized Narratives opening ("in this image we can
    see"). Word counts include the class phrases and the opener."""
    names, _ = class_table(dataset)
    phrases = class_phrases(dataset)
    weights = class_weights(len(names), seed, person_index(dataset))
    filler = np.array(filler_words(), dtype=object)
    rng = np.random.default_rng([seed, 7919])
    chunk = 20_000
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        lengths = rng.integers(shape.min_words, shape.max_words + 1, m)
        counts = np.minimum(rng.integers(shape.min_classes, shape.max_classes + 1, m), len(names))
        picks = draw_classes(rng, weights, counts)
        words = filler[rng.integers(0, len(filler), (m, shape.max_words))]
        slots = rng.random((m, shape.max_classes))
        which = rng.integers(0, 1 << 30, (m, shape.max_classes))
        openers = rng.integers(0, len(_NARRATIVE_OPENERS), m)
        for i in range(m):
            chosen = [
                phrases[c][int(which[i, k]) % len(phrases[c])] for k, c in enumerate(picks[i])
            ]
            head = _NARRATIVE_OPENERS[openers[i]] if opener else ""
            used = sum(p.count(" ") + 1 for p in chosen) + (head.count(" ") + 1 if head else 0)
            body = insert_phrases(
                list(words[i, : max(int(lengths[i]) - used, 1)]), chosen, slots[i]
            )
            yield (f"{head} {body}" if head else body), picks[i]


def insert_phrases(words: list[str], phrases: Sequence[str], slots: Sequence[float]) -> str:
    """Filler words with each phrase inserted at its slot (a fraction of the length so far)."""
    for phrase, slot in zip(phrases, slots, strict=False):
        words.insert(int(slot * (len(words) + 1)), phrase)
    return " ".join(words)
