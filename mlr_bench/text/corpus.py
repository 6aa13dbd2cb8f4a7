"""Training text with multi-hot labels, and the template augmentation the reference methods use."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from open_clip import OPENAI_IMAGENET_TEMPLATES
from torch.utils.data import Dataset

#: Text sources a datamodule may offer: captions describing real scenes (TaI-DPT), and
#: LLM-written sentences about requested label sets (CoMC, PVP).
CAPTIONS = "captions"
SENTENCES = "sentences"
#: LLM sentences of a pre-training stage (PVP stage 1): the reference reads a separate, larger
#: file than stage 2 (500k vs 200k sentences); datasets without one fall back to ``SENTENCES``.
PRETRAIN_SENTENCES = "pretrain_sentences"


@dataclass(frozen=True)
class TextCorpus:
    """Training text with multi-hot labels ``[N, C]`` (int8)."""

    texts: list[str]
    labels: np.ndarray

    def __post_init__(self) -> None:
        if self.labels.ndim != 2 or len(self.labels) != len(self.texts):
            raise ValueError(
                f"labels of shape {self.labels.shape} do not match {len(self.texts)} texts"
            )

    def __len__(self) -> int:
        return len(self.texts)

    def __add__(self, other: TextCorpus) -> TextCorpus:
        return TextCorpus(self.texts + other.texts, np.concatenate([self.labels, other.labels]))


@dataclass(frozen=True)
class TextRequest:
    """What training text a method wants from the datamodule.

    ``template_copies`` = K adds, per class, K-1 copies of "a photo of a {c}." and one of each
    of CLIP's 80 ImageNet templates as single-label samples (K = 10 in TaI-DPT and CoMC).
    """

    source: str = CAPTIONS
    template_copies: int = 10


def template_corpus(class_names: Sequence[str], copies: int) -> TextCorpus:
    """Single-label template sentences: ``copies - 1`` × "a photo of a {c}." + 80 templates."""
    if copies <= 0:
        return TextCorpus([], np.zeros((0, len(class_names)), dtype=np.int8))
    texts, rows = [], []
    for c, name in enumerate(class_names):
        name = name.replace("_", " ")
        block = [f"a photo of a {name}."] * (copies - 1) + [
            t(name) for t in OPENAI_IMAGENET_TEMPLATES
        ]
        texts += block
        rows += [c] * len(block)
    labels = np.zeros((len(texts), len(class_names)), dtype=np.int8)
    labels[np.arange(len(texts)), rows] = 1
    return TextCorpus(texts, labels)


class TextDataset(Dataset):
    """Raw text samples ``{"text", "target"}`` for methods that encode text themselves."""

    def __init__(self, corpus: TextCorpus) -> None:
        self.corpus = corpus

    def __len__(self) -> int:
        return len(self.corpus)

    def __getitem__(self, i: int) -> dict:
        return {"text": self.corpus.texts[i], "target": torch.from_numpy(self.corpus.labels[i])}
