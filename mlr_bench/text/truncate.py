"""Cutting a text to the part a CLIP text encoder actually reads, before it is labelled.

CLIP's tokenizer keeps ``context_length - 2`` BPE tokens (start and end tokens take the other
two) and silently drops the rest. A label parsed from the dropped part names something the model
never sees, so every corpus reader cuts its texts here first and labels what is left: the label
set and the encoded text then agree. The cut is at the end of the last word-piece (a regex piece
of open_clip's ``SimpleTokenizer``) whose BPE tokens all fit, so no half word is kept; a cut text
is returned in the tokenizer's cleaned form (ftfy-fixed, HTML-unescaped, single-spaced, lower
case), which encodes to exactly the kept tokens. Texts that fit are returned unchanged.

Speed: a text of at most ``budget`` non-space ASCII characters cannot exceed the budget (each
token covers at least one character), so short captions skip the tokenizer; the others are
tokenized with the BPE cache warm after the first few thousand texts.
"""

from __future__ import annotations

import bisect
import itertools
import re
from functools import lru_cache
from typing import Any

#: OpenAI CLIP's text context (start + 75 tokens + end).
CLIP_CONTEXT_LENGTH = 77
#: ASCII that ftfy or ``html.unescape`` may change: entities and control characters.
_UNSAFE_ASCII = re.compile(r"[^\x20-\x25\x27-\x7e\t\n\r]")
#: Bump when the cut changes for some text (cached corpora depend on it).
TRUNCATION_VERSION = 1


@lru_cache(maxsize=4)
def _simple_tokenizer() -> Any:
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer()


class ContextTruncator:
    """``truncator(text)`` = the prefix of ``text`` that a CLIP context of ``context_length``
    tokens encodes (see the module docstring); ``truncator.cut`` counts the texts it shortened.
    """

    def __init__(self, context_length: int = CLIP_CONTEXT_LENGTH) -> None:
        if context_length < 3:
            raise ValueError(f"context_length must be at least 3, not {context_length}")
        self.context_length = int(context_length)
        self.budget = self.context_length - 2
        self._tok = _simple_tokenizer()
        self.cut = 0
        self._word_tokens: dict[str, int] = {}

    def token_count(self, text: str) -> int:
        """BPE tokens of ``text`` without start/end tokens, as CLIP's tokenizer counts them."""
        return len(self._tok.encode(text))

    def __call__(self, text: str) -> str:
        if text.isascii() and len(text) - text.count(" ") <= self.budget:
            return text  # at most one token per non-space character: it fits
        if text.isascii() and not _UNSAFE_ASCII.search(text):
            return self._cut_plain(text)
        return self._cut_exact(text)

    def _pieces(self, word: str) -> list[tuple[int, int]]:
        """``(end offset, BPE tokens)`` of each tokenizer piece of one whitespace-free word."""
        tok = self._tok
        out = []
        for match in tok.pat.finditer(word):
            piece = "".join(tok.byte_encoder[b] for b in match.group().encode("utf-8"))
            out.append((match.end(), tok.bpe(piece).count(" ") + 1))
        return out

    def _cut_plain(self, text: str) -> str:
        """Printable ASCII without ``&``: the tokenizer's cleaning is only lower-casing and
        single-spacing, and pieces never span a space, so token counts add up word by word."""
        words = text.lower().split()
        counts = list(map(self._word_tokens.get, words))
        if None in counts:
            for i, word in enumerate(words):
                if counts[i] is None:
                    counts[i] = self._word_tokens[word] = sum(c for _, c in self._pieces(word))
        if sum(counts) <= self.budget:
            return text
        self.cut += 1
        i = bisect.bisect_right(list(itertools.accumulate(counts)), self.budget)
        count, end = sum(counts[:i]), 0
        for piece_end, c in self._pieces(words[i]):
            count += c
            if count > self.budget:
                break
            end = piece_end
        return " ".join([*words[:i], words[i][:end]]).rstrip()

    def _cut_exact(self, text: str) -> str:
        """Any text: the tokenizer's own cleaning (ftfy, HTML entities), then piece by piece."""
        tok = self._tok
        cleaned = tok.clean_fn(text)
        count, end = 0, 0
        for match in tok.pat.finditer(cleaned):
            piece = "".join(tok.byte_encoder[b] for b in match.group().encode("utf-8"))
            count += tok.bpe(piece).count(" ") + 1
            if count > self.budget:
                self.cut += 1
                return cleaned[:end].rstrip()
            end = match.end()
        return text


def truncator_for(context_length: int | None) -> ContextTruncator | None:
    """A truncator, or None for ``context_length=None`` (no cut: the encoder reads it all)."""
    return None if context_length is None else ContextTruncator(context_length)
