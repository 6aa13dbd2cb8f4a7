"""``MLRDataModule``: the contract every dataset (built-in or plugin) implements.

A datamodule owns the class names (linked into the method by the CLI), the evaluation image sets
and the training data *the chosen method asks for* (``method.requires``), so that a text-only
method never triggers image generation and a zero-shot method never builds a corpus.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import CombinedLoader, rank_zero_warn
from torch.utils.data import DataLoader, Dataset

from mlr_bench.batch import GENERATED_IMAGES, TEXT
from mlr_bench.errors import MLRBenchError
from mlr_bench.features import (
    FeatureCache,
    FeatureStore,
    ImageFeatureDataset,
    TextFeatureDataset,
    image_features,
    text_features,
)
from mlr_bench.features.text import finish_text_batch
from mlr_bench.protocol import CLEAN, check_protocol, protocol_record
from mlr_bench.text.corpus import TextCorpus, TextDataset, TextRequest, template_corpus
from mlr_bench.text.sources import EmptyCorpusError
from mlr_bench.text.truncate import CLIP_CONTEXT_LENGTH
from mlr_bench.transforms import clip_eval_transform

Transform = Callable[[Any], torch.Tensor]


class IncompatibleDataError(MLRBenchError, ValueError):
    """The method needs training data the datamodule cannot build."""


class InvalidArgumentError(MLRBenchError, ValueError):
    """A datamodule init argument outside its valid range (refused before anything runs)."""


def check_int(name: str, value: Any, minimum: int, allow_none: bool = False) -> None:
    """Refuse ``--data.<name>`` unless it is an integer >= ``minimum`` (or None if allowed):
    a zero batch size or test set would otherwise fail deep inside a DataLoader or give a
    metric over nothing."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        none = " (or null)" if allow_none else ""
        raise InvalidArgumentError(
            f"--data.{name}: expected an integer >= {minimum}{none}, got {value!r}"
        )


class NoTrainingData(Dataset):
    """One empty item, so that a method that does not train still runs a (no-op) fit epoch.

    Lightning skips validation entirely when the training loader is empty; a single dummy batch
    keeps ``fit`` meaningful for zero-shot methods (it validates and logs ``val/mAP``).
    """

    def __len__(self) -> int:
        return 1

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"nothing": torch.zeros(())}


class MLRDataModule(LightningDataModule):
    """Base class of multi-label datasets.

    Subclasses provide ``class_names`` and :meth:`eval_dataset`; those with training data list
    its kinds in ``provides`` and implement :meth:`text_corpus` (for ``text``),
    :meth:`generated_folder` (for ``generated_images``) or :meth:`train_dataset` (other kinds).
    A method that requires several kinds gets one batch of each per step (see
    :meth:`train_dataloader`).

    Frozen features: when the method scores from features (``method.eval_inputs ==
    "features"``) or trains on text features (``method.text_features``), rank 0 computes them
    once in :meth:`prepare_data` into an on-disk cache keyed by backbone weights,
    preprocessing and data identity; every rank then reads the cache instead of images/text.
    """

    #: Names of init arguments that do not change the data (left out of cache keys).
    NON_DATA_ARGS: ClassVar[frozenset[str]] = frozenset(
        {"batch_size", "eval_batch_size", "num_workers", "image_size", "cache_dir", "protocol"}
    )
    #: Protocols this datamodule can follow (:mod:`mlr_bench.protocol`); datasets without
    #: reference code follow only ``clean``.
    PROTOCOLS: ClassVar[tuple[str, ...]] = (CLEAN,)

    #: Training data kinds this datamodule can build (see :mod:`mlr_bench.batch`).
    provides: ClassVar[frozenset[str]] = frozenset()

    def __init__(
        self,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        image_size: int | None = None,
        cache_dir: str | None = None,
        *,
        protocol: str = CLEAN,
    ) -> None:
        """
        Args:
            batch_size: training batch size.
            eval_batch_size: validation/test batch size (defaults to ``batch_size``).
            num_workers: DataLoader worker processes.
            image_size: evaluation resolution; ``None`` follows the method's backbone.
            cache_dir: root of the feature caches (default ``$MLR_BENCH_CACHE`` or
                ``~/.cache/mlr-bench``).
            protocol: ``clean`` or ``reference`` (see :mod:`mlr_bench.protocol`).
        """
        super().__init__()
        self.protocol = check_protocol(protocol, self.PROTOCOLS, type(self).__name__)
        #: Protocol settings in effect and those given explicitly against the protocol.
        self.protocol_settings: dict[str, bool] = {}
        self.protocol_overrides: dict[str, bool] = {}
        check_int("batch_size", batch_size, 1)
        check_int("eval_batch_size", eval_batch_size, 1, allow_none=True)
        check_int("num_workers", num_workers, 0)
        check_int("image_size", image_size, 1, allow_none=True)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.image_size = image_size
        self.store = FeatureStore(cache_dir)
        self.transform: Transform | None = None
        self._caches: dict[str, FeatureCache] = {}

    # ---- what subclasses provide ---------------------------------------------------------
    @property
    def class_names(self) -> list[str]:
        raise NotImplementedError(f"{type(self).__name__} must define class_names")

    @property
    def prompt_class_names(self) -> list[str]:
        """The class names a method puts in its prompts (linked to ``model.class_names``):
        ``class_names`` unless the protocol prescribes the reference code's names. Results
        and displays use ``class_names``."""
        return self.class_names

    def protocol_record(self) -> dict[str, Any]:
        """The protocol, its settings and overrides, as results files and W&B record them."""
        return protocol_record(self.protocol, self.protocol_settings, self.protocol_overrides)

    @property
    def synonyms(self) -> dict[str, list[str]]:
        """Words that mean each class in text (used to label captions); default: the name."""
        return {c: [c] for c in self.class_names}

    def eval_dataset(self, split: str, transform: Transform) -> Dataset | None:
        """Evaluation set for ``split`` ("val"/"test") yielding EvalSample dicts, or None."""
        raise NotImplementedError(f"{type(self).__name__} must implement eval_dataset(split)")

    def text_corpus(self, source: str) -> TextCorpus:
        """The training text of one source (``captions``, ``sentences``...) with labels."""
        raise NotImplementedError(f"{type(self).__name__} provides no '{source}' text")

    def generated_folder(self) -> Path:
        """Folder of generated training images with their manifest (see
        :mod:`mlr_bench.generation`): generated here (the world) or given by the user."""
        raise NotImplementedError(f"{type(self).__name__} provides no generated images")

    def train_dataset(self, kind: str) -> Dataset:
        """Training data of one kind listed in ``provides`` (``text`` and ``generated_images``
        are built here; generated images come as frozen feature samples from their cache)."""
        if kind == TEXT:
            if self._text_parts():
                # under a Trainer, tokens cached before the projection are projected on its
                # device by on_after_batch_transfer (cheap there, ~0.5 s per batch on a CPU)
                return TextFeatureDataset(self.text_cache(), self.trainer is not None)
            return TextDataset(self.training_corpus())
        if kind == GENERATED_IMAGES:
            return ImageFeatureDataset(self.generated_cache())
        raise NotImplementedError(f"{type(self).__name__} provides no '{kind}' training data")

    def train_size(self, kind: str) -> int:
        """Training samples of one kind (the budget policy's epoch arithmetic for kinds other
        than text); subclasses that know the count without building the kind's feature cache
        say so cheaply."""
        return len(self.train_dataset(kind))

    def identity(self, split: str) -> dict[str, Any]:
        """What identifies the data of ``split`` in a feature cache key.

        The default (class + data-defining init arguments) suits generated data; datasets
        read from disk should add what identifies the files (paths, sizes, list hashes).
        """
        args = {k: v for k, v in dict(self.hparams).items() if k not in self.NON_DATA_ARGS}
        return {"datamodule": type(self).__qualname__, "split": split, "args": args}

    def training_corpus(self) -> TextCorpus:
        """The method's requested text source plus its template augmentation."""
        return self.corpus_for(self._text_request())

    def corpus_for(self, request: TextRequest) -> TextCorpus:
        """The text of ``request``: its source plus its template augmentation.

        A source without a single labelled text is an error, whatever the datamodule: the
        template sentences alone would train and look like a normal run.
        """
        corpus = self.text_corpus(request.source)
        if len(corpus) == 0 or not corpus.labels.any():
            raise EmptyCorpusError(
                f"{type(self).__name__}: the {request.source!r} training text has no text naming "
                f"any of the {len(self.class_names)} classes ({len(corpus)} texts); training on "
                "it would use the template sentences alone"
            )
        return corpus + template_corpus(self.prompt_class_names, request.template_copies)

    def text_context_length(self) -> int | None:
        """Tokens the method's text encoder reads (corpora are cut to it before labelling).

        The backbone's open_clip ``SimpleTokenizer`` context (77 for OpenAI CLIP, 40 for the
        world's micro-CLIP); 77 without a method; None (no cut, with a warning) for another
        tokenizer, whose cut this package cannot reproduce.
        """
        from open_clip.tokenizer import SimpleTokenizer

        tokenizer = getattr(getattr(self._method(), "backbone", None), "tokenizer", None)
        if tokenizer is None:  # no method attached (e.g. a script reading the corpus)
            return CLIP_CONTEXT_LENGTH
        plain = getattr(tokenizer.clean_fn, "__name__", "") == "_clean_lower"
        if type(tokenizer) is SimpleTokenizer and plain and tokenizer.reduction_fn is None:
            return int(tokenizer.context_length)
        rank_zero_warn(
            f"{type(tokenizer).__name__} is not CLIP's SimpleTokenizer: training texts are "
            "labelled in full, also where the text encoder cuts them"
        )
        return None

    # ---- frozen feature caches -------------------------------------------------------------
    def _text_request(self) -> TextRequest:
        method = self._method()
        return method.text_request() if hasattr(method, "text_request") else TextRequest()

    def _text_parts(self) -> frozenset[str]:
        return frozenset(getattr(self._method(), "text_features", frozenset()))

    def _uses_image_features(self) -> bool:
        return getattr(self._method(), "eval_inputs", "images") == "features"

    def _build_device(self) -> torch.device:
        trainer = self.trainer
        return trainer.strategy.root_device if trainer is not None else torch.device("cpu")

    def image_cache(self, split: str) -> FeatureCache:
        """Frozen features of the ``split`` images under the method's backbone (built once)."""
        if split not in self._caches:
            transform = self.transform or self.resolve_transform()
            self._caches[split] = image_features(
                self.store,
                self._method().backbone,
                lambda: self.eval_dataset(split, transform),
                transform,
                self.identity(split),
                batch_size=self.eval_batch_size,
                num_workers=self.num_workers,
                device=self._build_device(),
                desc=f"image features ({split})",
            )
        return self._caches[split]

    def text_cache(self) -> FeatureCache:
        """Frozen features of the training corpus under the method's backbone (built once per
        text request: a staged method asks for different text in each stage)."""
        request, parts = self._text_request(), self._text_parts()
        name = f"train_text:{request.source}:{request.template_copies}:{','.join(sorted(parts))}"
        if name not in self._caches:
            self._caches[name] = text_features(
                self.store,
                self._method().backbone,
                self.training_corpus(),
                parts=parts,
                device=self._build_device(),
            )
        return self._caches[name]

    def generated_cache(self) -> FeatureCache:
        """Frozen features + caption targets of the generated training images (built once)."""
        from mlr_bench.generated_data import generated_image_features

        if "train_generated" not in self._caches:
            self._caches["train_generated"] = generated_image_features(
                self.store,
                self._method().backbone,
                self.generated_folder(),
                self.class_names,
                self.transform or self.resolve_transform(),
                batch_size=self.eval_batch_size,
                num_workers=self.num_workers,
                device=self._build_device(),
            )
        return self._caches["train_generated"]

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Project text batches read before CLIP's text projection, on the training device."""
        return finish_text_batch(batch, getattr(self._method(), "backbone", None))

    def prepare_data(self) -> None:
        """Rank 0 (per node) builds the feature caches the coming stage needs; others wait."""
        trainer = self.trainer
        if trainer is None or self._method() is None:
            return
        stage = trainer.state.fn.value if trainer.state.fn is not None else "fit"
        if stage == "fit" and TEXT in self.required_kinds() and self._text_parts():
            self.text_cache()
        if stage == "fit" and GENERATED_IMAGES in self.required_kinds():
            self.generated_cache()  # generates the images first where the datamodule does
        if self._uses_image_features():
            for split in {"fit": ("val",), "validate": ("val",)}.get(stage, ("test",)):
                if self.has_split(split):
                    self.image_cache(split)

    def has_split(self, split: str) -> bool:
        """Whether an evaluation split exists (override when building it is expensive)."""
        return self.eval_dataset(split, lambda image: image) is not None

    # ---- shared machinery ----------------------------------------------------------------
    def attach(self, method: Any) -> MLRDataModule:
        """Use ``method`` (its preprocessing, backbone, text request) without a Trainer, e.g.
        to build feature caches or loaders from a script; a Trainer's module takes precedence."""
        self._attached = method
        return self

    def _method(self) -> Any:
        trainer = self.trainer
        if trainer is not None and trainer.lightning_module is not None:
            return trainer.lightning_module
        return getattr(self, "_attached", None)

    def __getstate__(self) -> dict[str, Any]:
        """Memory-mapped caches are reopened, not pickled, when DDP spawns workers."""
        state = dict(self.__dict__)
        state["_caches"] = {}
        state.pop("_attached", None)
        return state

    def resolve_transform(self) -> Transform:
        """Evaluation preprocessing: the backbone's unless ``image_size`` overrides it."""
        if self.image_size is None:
            method = self._method()
            transform = getattr(method, "eval_transform", lambda: None)()
            if transform is not None:
                return transform
        return clip_eval_transform(self.image_size or 224)

    def check_image_size(self, method: Any) -> None:
        """Refuse an ``image_size`` the method's CLIP cannot encode, naming the sizes it can.

        Any positive multiple of the ResNet's stride (32) or the ViT's patch size works: the
        backbone resizes its positional embedding to the resulting grid. Other sizes would be
        cut to a smaller grid silently (ResNet) or drop border pixels (ViT), so they are
        refused; the CLI calls this once method and data exist, before any run folder is made.
        """
        backbone = getattr(method, "backbone", None)
        native = getattr(backbone, "image_size", None)
        if self.image_size is None or not isinstance(native, int):
            return
        stride, what = _backbone_stride(backbone)
        if stride <= 0 or (self.image_size > 0 and self.image_size % stride == 0):
            return
        lower = max(self.image_size // stride, 1) * stride
        nearest = f"{'..., ' if lower > stride else ''}{lower}, {lower + stride}, ..."
        name = getattr(backbone, "model_name", type(backbone).__name__)
        raise InvalidArgumentError(
            f"--data.image_size {self.image_size}: CLIP '{name}' ({what}) takes positive "
            f"multiples of {stride} ({nearest}), or leave --data.image_size unset for its "
            f"native {native}"
        )

    def setup(self, stage: str) -> None:
        self.transform = self.resolve_transform()

    def required_kinds(self) -> frozenset[str]:
        method = self._method()
        required = frozenset(getattr(method, "requires", frozenset()))
        missing = required - self.provides
        if missing:
            provided = ", ".join(sorted(self.provides)) or "nothing"
            raise IncompatibleDataError(
                f"{type(method).__name__} requires {sorted(missing)} training data, which "
                f"{type(self).__name__} does not provide (it provides: {provided})."
            )
        return required

    def train_dataloader(self) -> DataLoader | CombinedLoader:
        """One loader for one required kind (its batches as they are); for several kinds a
        ``CombinedLoader`` in "max_size_cycle" mode whose batches are ``{kind: batch}``: an
        epoch runs through the largest source while the smaller ones cycle."""
        kinds = sorted(self.required_kinds())
        if not kinds:
            return DataLoader(NoTrainingData(), batch_size=1)
        loaders = {k: self._loader(self.train_dataset(k), self.batch_size, True) for k in kinds}
        if len(loaders) == 1:
            return loaders[kinds[0]]
        return CombinedLoader(loaders, mode="max_size_cycle")

    def _eval_loader(self, split: str) -> DataLoader | list:
        if self._uses_image_features():
            if not self.has_split(split):
                return []
            dataset = ImageFeatureDataset(self.image_cache(split))
            return self._loader(dataset, self.eval_batch_size, shuffle=False)
        dataset = self.eval_dataset(split, self.transform or self.resolve_transform())
        if dataset is None:
            return []
        collate = getattr(self._method(), "eval_collate", lambda: None)()
        return self._loader(dataset, self.eval_batch_size, shuffle=False, collate_fn=collate)

    def val_dataloader(self) -> DataLoader | list:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader | list:
        return self._eval_loader("test")

    def predict_dataloader(self) -> DataLoader | list:
        return self._eval_loader("test")

    def _loader(
        self, dataset: Dataset, batch_size: int, shuffle: bool, collate_fn: Any = None
    ) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            collate_fn=collate_fn,
        )


def multi_hot(labels: Sequence[int], difficult: Sequence[int], num_classes: int) -> torch.Tensor:
    """Target vector in {1, 0, -1}: 1 for labels, 0 for difficult ones, -1 elsewhere."""
    target = torch.full((num_classes,), -1, dtype=torch.int8)
    target[list(difficult)] = 0
    target[list(labels)] = 1
    return target


def _backbone_stride(backbone: Any) -> tuple[int, str]:
    """Pixels per feature location of a CLIPBackbone and its description; 0 when unknown."""
    family = getattr(backbone, "family", None)
    if family == "resnet":
        return 32, "ResNet, stride 32"
    if family == "vit":
        patch = getattr(getattr(getattr(backbone, "clip", None), "visual", None), "patch_size", 0)
        stride = int(patch[0] if isinstance(patch, tuple | list) else patch or 0)
        return stride, f"ViT, patch {stride}"
    return 0, ""
