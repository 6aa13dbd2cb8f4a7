"""Describing scenes in varied English, as web alt-text and an LLM would.

Captions are what a contrastive model learns the class words from, and the text-only methods'
training corpus, so they carry the usual imperfections: a present object goes unmentioned now
and then (p=0.25 each, never all of them), an absent one is named now and then (p=0.04), words
are synonyms or plurals, and style phrases that name no class are mixed in.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mlr_bench.world.categories import CLASS_NAMES, NUM_CLASSES, SYNONYMS, plural
from mlr_bench.world.palette import nearest_color
from mlr_bench.world.scenes import Scene, SceneObject

MENTION_P = 0.75
NOISE_MENTION_P = 0.04
COLOR_P = 0.5
SIZE_P = 0.3
POSITION_P = 0.25
SYNONYM_P = 0.4
DISTRACTOR_P = 0.35
BACKGROUND_P = 0.15
MAX_WORDS_BEFORE_EXTRAS = 18

OPENERS = (
    "a photo of {}",
    "a picture of {}",
    "an image of {}",
    "clipart of {}",
    "an icon set with {}",
    "a drawing showing {}",
    "a sketch of {}",
    "a simple illustration of {}",
    "there is {} in this image",
    "{}",
    "{}",
    "this picture shows {}",
    "a scene with {}",
    "a sticker of {}",
    "a graphic featuring {}",
    "i can see {}",
    "a painting of {}",
    "a cartoon of {}",
    "a close-up photo of {}",
    "an old photo of {}",
    "a blurry photo of {}",
    "{} in a picture",
    "a poster with {}",
    "a doodle of {}",
    "an illustration with {}",
    "a low quality photo of {}",
)
DISTRACTORS = (
    "on a dusty background",
    "vector art",
    "simple",
    "low resolution",
    "with some scribbles",
    "digital art",
    "flat design",
    "hand-drawn",
    "grainy",
    "high contrast",
    "with a few specks",
    "minimalist",
    "children's book style",
    "noisy image",
    "colorful",
    "pastel tones",
    "with scratches",
    "isolated",
    "stock image",
    "cropped",
)
_JOINERS = (" and ", " and ", " with ", " together with ", " as well as ", " next to ")
_GENERIC_NOUNS = ("icons", "shapes", "objects", "things", "symbols")
_COUNT_WORDS = {2: ("two", "2", "a pair of"), 3: ("three", "3"), 4: ("four", "4")}
_SIZE_WORDS = ((0.19, ("tiny", "very small")), (0.25, ("small", "little")))
_BIG_WORDS = ((0.36, ("huge", "large")), (0.31, ("big", "large")))


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.random() * len(options))]


def _with_article(head: str) -> str:
    return ("an " if head[0] in "aeiou" else "a ") + head


def _size_word(frac: float, rng: np.random.Generator) -> str | None:
    """A size adjective for an object spanning ``frac`` of the image, if one clearly applies."""
    for limit, words in _SIZE_WORDS:
        if frac < limit:
            return _pick(rng, words)
    for limit, words in _BIG_WORDS:
        if frac > limit:
            return _pick(rng, words)
    return None


def position_phrase(obj: SceneObject, canvas: int, rng: np.random.Generator) -> str:
    """Where an object is, in words ("in the top left corner", "on the right", ...)."""
    x, y = obj.x / canvas, obj.y / canvas
    col = "left" if x < 0.36 else "right" if x > 0.64 else None
    row = "top" if y < 0.36 else "bottom" if y > 0.64 else None
    if col and row:
        forms = ("in the {r} {c} corner", "in the {r} {c}", "at the {r} {c}")
    elif col:
        forms = ("on the {c}", "on the {c} side", "to the {c}")
    elif row:
        forms = ("at the {r}", "near the {r}", "at the {r} of the image")
    else:
        forms = ("in the middle", "in the center", "in the centre")
    return _pick(rng, forms).format(r=row, c=col)


def relation(a: SceneObject, b: SceneObject, canvas: int, rng: np.random.Generator) -> str:
    """A spatial preposition that is true of ``a`` relative to ``b``."""
    dx, dy = a.x - b.x, a.y - b.y
    near = 0.15 * canvas
    if rng.random() < 0.3 or max(abs(dx), abs(dy)) < near:
        return _pick(rng, ("next to", "beside", "near", "close to"))
    if abs(dy) > abs(dx):
        return "above" if dy < 0 else "below"
    return _pick(rng, ("to the left of", "left of")) if dx < 0 else "to the right of"


def _noun(rng: np.random.Generator, category: int) -> str:
    words = SYNONYMS[CLASS_NAMES[category]]
    return _pick(rng, words[1:]) if rng.random() < SYNONYM_P else words[0]


def noun_phrase(
    objs: Sequence[SceneObject], canvas: int, rng: np.random.Generator, where: bool = True
) -> str:
    """One category's phrase: "a small red star", "two hearts", "the moon on the left"."""
    first, n = objs[0], len(objs)
    noun = _noun(rng, first.category)
    adjectives = []
    if rng.random() < SIZE_P:
        word = _size_word(first.size / canvas, rng)
        if word:
            adjectives.append(word)
    if rng.random() < COLOR_P and all(o.color == first.color for o in objs):
        adjectives.append(first.color)
    if n == 1:
        head = " ".join([*adjectives, noun])
        u = rng.random()
        phrase = _with_article(head) if u < 0.8 else f"one {head}" if u < 0.88 else f"the {head}"
        if where and rng.random() < POSITION_P:
            phrase += " " + position_phrase(first, canvas, rng)
        return phrase
    head = " ".join([*adjectives, plural(noun)])
    u = rng.random()
    if u < 0.6:
        return f"{_pick(rng, _COUNT_WORDS[min(n, 4)])} {head}"
    return head if u < 0.8 else f"{_pick(rng, ('some', 'several', 'a few'))} {head}"


def _join(rng: np.random.Generator, phrases: list[str]) -> str:
    if len(phrases) == 1:
        return phrases[0]
    if len(phrases) == 2:
        return phrases[0] + _pick(rng, _JOINERS) + phrases[1]
    comma = ", and " if rng.random() < 0.2 else " and "
    return ", ".join(phrases[:-1]) + comma + phrases[-1]


def _background_phrase(scene: Scene, rng: np.random.Generator) -> str:
    mean = scene.background.mean_rgb
    name = nearest_color(mean)
    tone = "dark " if mean.mean() < 80 else "light " if mean.mean() > 190 else ""
    if name in ("black", "white") or rng.random() < 0.5:
        tone = ""
    return f"on a {tone}{name} background"


def _finish(rng: np.random.Generator, text: str) -> str:
    if rng.random() < 0.5:
        text = text[0].upper() + text[1:]
    return text + "." if rng.random() < 0.4 else text


def caption_scene(scene: Scene, rng: np.random.Generator) -> str:
    """One varied, imperfect English caption of ``scene``."""
    groups: dict[int, list[SceneObject]] = {}
    for obj in scene.objects:
        groups.setdefault(obj.category, []).append(obj)
    present = list(groups)
    mentioned = [c for c in present if rng.random() < MENTION_P]
    if not mentioned:
        mentioned = [present[int(rng.random() * len(present))]]
    if len(mentioned) > 1 and rng.random() < 0.5:
        mentioned = [mentioned[i] for i in rng.permutation(len(mentioned))]
    canvas = scene.canvas
    where = len(mentioned) <= 2 or rng.random() < 0.5  # keep long lists within ~25 words
    phrases = [noun_phrase(groups[c], canvas, rng, where) for c in mentioned]
    if len(phrases) == 2 and rng.random() < 0.4:
        a, b = groups[mentioned[0]][0], groups[mentioned[1]][0]
        phrases = [noun_phrase(groups[mentioned[0]], canvas, rng, where=False)]
        phrases[0] += f" {relation(a, b, canvas, rng)} {noun_phrase([b], canvas, rng, False)}"
    if rng.random() < NOISE_MENTION_P:
        absent = [c for c in range(NUM_CLASSES) if c not in groups]
        noise = _with_article(_noun(rng, absent[int(rng.random() * len(absent))]))
        phrases.insert(int(rng.random() * (len(phrases) + 1)), noise)
    body = _join(rng, phrases)
    if len(phrases) >= 2 and rng.random() < 0.1:
        count = _COUNT_WORDS.get(len(phrases), ("several",))[0]
        text = f"{count} {_pick(rng, _GENERIC_NOUNS)}: {body}"
    else:
        text = _pick(rng, OPENERS).format(body)
    short = len(text.split()) <= MAX_WORDS_BEFORE_EXTRAS  # the text tower reads 40 tokens
    if short and rng.random() < BACKGROUND_P:
        text += " " + _background_phrase(scene, rng)
    if short and rng.random() < DISTRACTOR_P:
        extra = _pick(rng, DISTRACTORS)
        text += f" {extra}" if extra.startswith(("on ", "with ")) else f", {extra}"
    return _finish(rng, text)


_ADJECTIVES = (
    "small",
    "tiny",
    "large",
    "shiny",
    "faded",
    "bright",
    "little",
    "old",
    "wooden",
    "paper",
    "glowing",
    "golden",
    "silver",
    "red",
    "blue",
    "green",
    "purple",
    "pink",
    "white",
    "black",
    "orange",
)
_SENTENCES: dict[int, tuple[str, ...]] = {
    1: (
        "{0} is drawn in the middle of the page.",
        "Someone sketched {0} on an old notebook.",
        "The picture shows {0}, slightly tilted to one side.",
        "{0} stands out clearly against the plain background.",
        "You can see {0} here and nothing else.",
        "A child drew {0} with crayons.",
        "{0} appears on a colourful sticker.",
        "In the corner of the poster there is {0}.",
    ),
    2: (
        "{0} lies beside {1} on the table.",
        "{0} sits just above {1}.",
        "There is {0} next to {1}.",
        "{0} is partly hidden behind {1}.",
        "I drew {0} and {1} on the same sheet.",
        "The sign shows {0} together with {1}.",
        "Between the scribbles you can make out {0} and {1}.",
        "{0} floats to the left of {1} in this drawing.",
    ),
    3: (
        "{0}, {1} and {2} are scattered across the picture.",
        "On the poster, {0} hangs above {1}, with {2} off to the side.",
        "A sticker sheet with {0}, {1} and {2}.",
        "The drawing combines {0}, {1} and {2} in bright colours.",
        "Look closely and you will find {0}, {1} and {2}.",
        "{0} rests near {1} while {2} fills the rest of the frame.",
    ),
}


def _sentence_phrase(name: str, rng: np.random.Generator) -> str:
    noun = _noun(rng, CLASS_NAMES.index(name))
    adjective = _pick(rng, _ADJECTIVES) + " " if rng.random() < 0.6 else ""
    if rng.random() < 0.2:
        return f"{_pick(rng, ('two', 'a few', 'some', 'three'))} {adjective}{plural(noun)}"
    return _with_article(adjective + noun)


def template_sentences(class_names_subset: Sequence[str], rng: np.random.Generator) -> str:
    """A fluent sentence about 1–3 classes with no scene behind it (the LLM-corpus stand-in)."""
    names = list(class_names_subset)
    if not 1 <= len(names) <= 3:
        raise ValueError(f"template_sentences takes 1–3 class names, got {len(names)}")
    unknown = [n for n in names if n not in CLASS_NAMES]
    if unknown:
        raise ValueError(f"unknown class names {unknown}; expected some of {CLASS_NAMES}")
    text = _pick(rng, _SENTENCES[len(names)]).format(*(_sentence_phrase(n, rng) for n in names))
    return text[0].upper() + text[1:]
