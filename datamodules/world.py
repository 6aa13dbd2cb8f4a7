"""The built-in synthetic world as a datamodule: offline, deterministic, minutes to benchmark.

It provides what a real dataset does: class names and synonyms, evaluation images with
targets (val and test drawn from disjoint seeds, so no test image ever steers training or
checkpoint selection), a caption corpus labelled by the synonym labeler (not by the generator's
ground truth, so label noise is realistic), an LLM-style sentence source, and a text-to-image
renderer standing in for Stable Diffusion.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from mlr_bench.batch import GENERATED_IMAGES, TEXT, EvalSample
from mlr_bench.datamodule import MLRDataModule, Transform, check_int
from mlr_bench.generated_data import caption_items, items_digest
from mlr_bench.text import SynonymLabeler
from mlr_bench.text.corpus import CAPTIONS, PRETRAIN_SENTENCES, SENTENCES, TextCorpus
from mlr_bench.text.truncate import truncator_for
from mlr_bench.world import (
    CLASS_NAMES,
    SYNONYMS,
    generate,
    generate_captions,
    render_caption,
    template_sentences,
)

#: Seeds of the world's splits: fixed offsets from the datamodule seed, disjoint by design.
SPLIT_OFFSETS = {"test": 1_000_003, "val": 3_000_017, "captions": 2_000_003, "sentences": 4_000_037}


class WorldImages(Dataset):
    """Rendered world scenes as evaluation samples."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Transform) -> None:
        self.images = images
        self.targets = torch.from_numpy(np.where(labels > 0, 1, -1).astype(np.int8))
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> EvalSample:
        image = self.transform(Image.fromarray(self.images[i]))
        return {"image": image, "target": self.targets[i], "index": i}


def cut_to_context(
    corpus: TextCorpus, labeler: SynonymLabeler, context_length: int | None, parsed: bool
) -> TextCorpus:
    """``corpus`` with each text cut to what the text encoder reads (see
    :mod:`mlr_bench.text.truncate`). A cut text is relabelled from what is left (``parsed``), or
    loses the requested labels whose class is named only in the cut-off part."""
    truncate = truncator_for(context_length)
    if truncate is None:
        return corpus
    texts, labels = list(corpus.texts), corpus.labels.copy()
    for i, text in enumerate(corpus.texts):
        kept = truncate(text)
        if kept == text:
            continue
        texts[i] = kept
        if parsed:
            labels[i] = labeler([kept])[0]
        else:
            only_cut = labeler.classes_in(text) - labeler.classes_in(kept)
            labels[i, sorted(only_cut)] = 0
    return corpus if not truncate.cut else TextCorpus(texts, labels)


class World(MLRDataModule):
    """The built-in synthetic world (18 classes of shapes and icons), with the micro-CLIP."""

    provides = frozenset({TEXT, GENERATED_IMAGES})
    #: Generation settings change only the generated training images, whose cache is keyed
    #: by their own manifest: evaluation caches must not depend on them.
    NON_DATA_ARGS = MLRDataModule.NON_DATA_ARGS | {
        "num_generated",
        "images_per_caption",
        "generated_dir",
    }

    def __init__(
        self,
        seed: int = 0,
        num_test: int = 2000,
        num_val: int = 500,
        num_captions: int = 20_000,
        num_sentences: int = 5000,
        scene_size: int = 96,
        num_generated: int = 5000,
        images_per_caption: int = 1,
        generated_dir: str | None = None,
        batch_size: int = 256,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        image_size: int | None = None,
        cache_dir: str | None = None,
        protocol: str = "clean",
    ) -> None:
        """
        Args:
            seed: world seed; every split derives its own disjoint seed from it.
            protocol: only ``clean`` (no reference code exists whose choices ``reference``
                would reproduce; see :mod:`mlr_bench.protocol`).
            num_test: held-out test images.
            num_val: validation images (a separate draw, never the test images).
            num_captions: size of the caption corpus (text-only training data).
            num_sentences: size of the LLM-style sentence corpus.
            scene_size: rendering resolution of the scenes in pixels.
            num_generated: captions (the first ones naming a class) rendered into generated
                training images by the world's text-to-image stand-in, for methods that train
                on generated images (T2I-PAL); built on first use under the cache root.
            images_per_caption: generated images per caption (different seeds).
            generated_dir: an output folder of ``mlr-bench generate --data world`` (the path it
                prints) to train on instead of rendering ``num_generated`` images here.
        """
        super().__init__(
            batch_size, eval_batch_size, num_workers, image_size, cache_dir, protocol=protocol
        )
        for name, value in (("num_test", num_test), ("num_val", num_val),
                            ("num_captions", num_captions), ("num_sentences", num_sentences),
                            ("scene_size", scene_size), ("num_generated", num_generated),
                            ("images_per_caption", images_per_caption)):  # fmt: skip
            check_int(name, value, 1)
        self.save_hyperparameters()
        self.seed = seed
        self.sizes = {"test": num_test, "val": num_val}
        self.num_captions = num_captions
        self.num_sentences = num_sentences
        self.scene_size = scene_size
        self.num_generated = num_generated
        self.images_per_caption = images_per_caption
        self.generated_dir = generated_dir
        self.labeler = SynonymLabeler(CLASS_NAMES, SYNONYMS)

    @property
    def class_names(self) -> list[str]:
        return list(CLASS_NAMES)

    @property
    def synonyms(self) -> dict[str, list[str]]:
        return {c: list(SYNONYMS[c]) for c in CLASS_NAMES}

    def split(self, name: str):
        """The rendered split (images, ground-truth labels, captions, scenes); cached."""
        if name not in self._splits:
            seed = self.seed + SPLIT_OFFSETS[name]
            self._splits[name] = generate(self.sizes[name], seed=seed, image_size=self.scene_size)
        return self._splits[name]

    @cached_property
    def _splits(self) -> dict:
        return {}

    def eval_dataset(self, split: str, transform: Transform) -> WorldImages:
        data = self.split(split)
        return WorldImages(data.images, data.labels, transform)

    @cached_property
    def caption_corpus(self) -> TextCorpus:
        """Captions of unseen scenes, labelled from their words by the synonym labeler."""
        texts, _ = generate_captions(self.num_captions, seed=self.seed + SPLIT_OFFSETS["captions"])
        return TextCorpus(list(texts), self.labeler(texts))

    @cached_property
    def sentence_corpus(self) -> TextCorpus:
        """LLM-style sentences about 1–3 requested classes (the PVP/CoMC recipe's text source).

        Labels are the *requested* class sets, as in CoMC (its LLM prompt asks for a sentence
        about given labels and the sentence is never parsed); ``parsed_sentence_corpus``
        labels the same sentences with the labeler instead, as PVP does.
        """
        rng = np.random.default_rng(self.seed + SPLIT_OFFSETS["sentences"])
        texts = []
        labels = np.zeros((self.num_sentences, len(CLASS_NAMES)), dtype=np.int8)
        for i in range(self.num_sentences):
            k = int(rng.integers(1, 4))
            chosen = rng.choice(len(CLASS_NAMES), k, replace=False)
            labels[i, chosen] = 1
            texts.append(template_sentences([CLASS_NAMES[c] for c in chosen], rng))
        return TextCorpus(texts, labels)

    @cached_property
    def parsed_sentence_corpus(self) -> TextCorpus:
        texts = self.sentence_corpus.texts
        return TextCorpus(texts, self.labeler(texts))

    def text_corpus(self, source: str) -> TextCorpus:
        corpora = {
            CAPTIONS: lambda: self.caption_corpus,
            SENTENCES: lambda: self.sentence_corpus,
            PRETRAIN_SENTENCES: lambda: self.sentence_corpus,  # the world has one sentence set
            "parsed_sentences": lambda: self.parsed_sentence_corpus,
        }
        if source not in corpora:
            raise ValueError(f"unknown text source {source!r}; the world has {sorted(corpora)}")
        context = self.text_context_length()
        key = (source, context)
        if key not in self._cut_corpora:
            # requested labels (CoMC) are not parsed from text
            parsed = source not in (SENTENCES, PRETRAIN_SENTENCES)
            self._cut_corpora[key] = cut_to_context(
                corpora[source](), self.labeler, context, parsed
            )
        return self._cut_corpora[key]

    @cached_property
    def _cut_corpora(self) -> dict[tuple[str, int | None], TextCorpus]:
        return {}

    def has_split(self, split: str) -> bool:
        return split in self.sizes

    def text_to_image(self, caption: str, seed: int) -> np.ndarray:
        """Render a caption in the world's "generated" style (the Stable Diffusion stand-in)."""
        return render_caption(caption, np.random.default_rng(seed), image_size=self.scene_size)

    def train_size(self, kind: str) -> int:
        """Generated images are counted from their requests, without rendering them."""
        if kind == GENERATED_IMAGES and not self.generated_dir:
            items = caption_items(self.caption_corpus, CLASS_NAMES, self.num_generated)
            return len(items) * self.images_per_caption
        return super().train_size(kind)

    def generated_folder(self) -> Path:
        """``generated_dir`` when given (e.g. made by ``mlr-bench generate --generator world
        --data world``); otherwise renders the first ``num_generated`` labelled captions with
        the world renderer into ``<cache root>/generated/world-<captions hash>/`` (resumable; a
        finished folder is reused) and returns the generation folder."""
        from mlr_bench.generation import WorldRenderer, generate_images

        if self.generated_dir:
            return Path(self.generated_dir).expanduser()

        items = caption_items(self.caption_corpus, CLASS_NAMES, self.num_generated)
        out_root = self.store.root / "generated" / f"world-{items_digest(items)}"
        return Path(
            generate_images(
                WorldRenderer(image_size=self.scene_size),
                items,
                out_root,
                images_per_caption=self.images_per_caption,
                batch_size=64,
                progress=False,
            )
        )
