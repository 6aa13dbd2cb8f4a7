"""``MLRMethod``: the contract every method (built-in or plugin) implements.

A method holds only its own small trainable parameters (prompts, adapters, classifiers) next to a
frozen CLIP backbone, turns an evaluation batch into raw scores ``[B, C]`` and leaves all metric
computation to the shared :class:`~mlr_bench.eval.evaluator.Evaluator`, so that every method is
scored by exactly the same code.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from lightning.pytorch import Callback, LightningModule
from torch import Tensor

from mlr_bench.batch import EvalBatch, FeatureBatch
from mlr_bench.text.corpus import TextRequest


class MLRMethod(LightningModule):
    """Base class of multi-label recognition methods.

    Subclasses implement :meth:`score` and, if they learn anything, ``training_step`` and
    ``configure_optimizers``. Validation, test and predict steps are shared.
    """

    #: Training data kinds this method consumes (e.g. ``{"text"}``, ``{"generated_images"}``).
    #: The datamodule builds only these; an empty set means the method does not train.
    requires: ClassVar[frozenset[str]] = frozenset()
    #: Trainer arguments the method needs whatever the user configured (e.g. a zero-shot
    #: method trains for exactly one no-op epoch). Applied by the CLI when it builds the Trainer.
    trainer_overrides: ClassVar[Mapping[str, Any]] = {}
    #: Trainer arguments used only when the user set none (e.g. ``{"max_epochs": 50}`` for a
    #: method whose reference recipe trains longer than the CLI's default of 20 epochs).
    trainer_defaults: ClassVar[Mapping[str, Any]] = {}
    #: State-dict prefixes of frozen modules; they are left out of checkpoints, which then hold
    #: only what the method learned (small files, no copy of CLIP per run).
    frozen_prefixes: ClassVar[tuple[str, ...]] = ("backbone.",)
    #: "images": evaluation batches carry images; "features": they carry the frozen image
    #: features from the cache (see :class:`FeatureMethod`), and the encoder never reruns.
    eval_inputs: ClassVar[Literal["images", "features"]] = "images"
    #: Image towers the method works with: "resnet", "vit" (TagCLIP needs a ViT's attention
    #: maps); the benchmark skips its cells on other backbones instead of failing them.
    image_towers: ClassVar[frozenset[str]] = frozenset({"resnet", "vit"})
    #: Parts of the frozen text features (``eot``, ``tokens``) the method trains on; empty
    #: means training batches carry raw ``text`` instead.
    text_features: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def checkpoint_identity(cls, hparams: Mapping[str, Any]) -> dict[str, Any]:
        """Settings a checkpoint must share with the run that loads it (compared before the run
        starts; LightningCLI would otherwise take them from the checkpoint silently).

        Default: the CLIP backbone and its weights. Methods add settings that change what the
        learned tensors mean (PVP: its stage); keys absent from ``hparams`` are not compared.
        """
        ident: dict[str, Any] = {}
        if "backbone" in hparams:
            ident["backbone"] = hparams["backbone"]
        if "pretrained" in hparams:
            ident["pretrained"] = _weights_identity(hparams["pretrained"])
        return ident

    def __init__(self, class_names: Sequence[str] | None = None) -> None:
        super().__init__()
        self.class_names: list[str] = list(class_names or [])
        # Checkpoints omit frozen weights, so loading them must not demand those keys.
        self.strict_loading = False

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    # ---- the method-specific part -------------------------------------------------------
    def score(self, batch: EvalBatch) -> Tensor:
        """Raw scores ``[B, C]`` for an evaluation batch; higher means more likely present."""
        raise NotImplementedError(f"{type(self).__name__} must implement score(batch)")

    def eval_transform(self) -> Callable[[Any], Tensor] | None:
        """Image preprocessing the backbone expects; ``None`` lets the datamodule choose."""
        return None

    def eval_collate(self) -> Callable[[list[Any]], Any] | None:
        """Collate function of evaluation batches; ``None`` = PyTorch's default (TagCLIP keeps
        native-size images in a list)."""
        return None

    def text_request(self) -> TextRequest:
        """Which text source and template augmentation to train on (``requires`` has text)."""
        return TextRequest()

    # ---- shared evaluation steps ---------------------------------------------------------
    def _scored(self, batch: EvalBatch) -> dict[str, Tensor]:
        if not self.class_names:
            raise RuntimeError(
                f"{type(self).__name__} has no class_names: pass them, or run it through the "
                "CLI/trainer with a datamodule (class names are linked from --data)."
            )
        scores = self.score(batch)
        expected = (batch["target"].shape[0], self.num_classes)
        if tuple(scores.shape) != expected:
            raise RuntimeError(
                f"{type(self).__name__}.score returned shape {tuple(scores.shape)}, "
                f"expected [batch, classes] = {list(expected)}"
            )
        return {
            "scores": scores.detach().float(),
            "target": batch["target"],
            "index": batch["index"],
        }

    def validation_step(self, batch: EvalBatch, batch_idx: int) -> dict[str, Tensor]:
        return self._scored(batch)

    def test_step(self, batch: EvalBatch, batch_idx: int) -> dict[str, Tensor]:
        return self._scored(batch)

    def predict_step(self, batch: EvalBatch, batch_idx: int, dataloader_idx: int = 0) -> dict:
        out = self._scored(batch)
        return {"index": out["index"], "scores": out["scores"]}

    # ---- plumbing --------------------------------------------------------------------------
    def configure_callbacks(self) -> list[Callback]:
        """Attach the shared evaluator and prediction writer unless the user configured them."""
        from mlr_bench.eval.evaluator import Evaluator
        from mlr_bench.eval.predictions import PredictionWriter

        configured = self._trainer.callbacks if self._trainer is not None else []
        return [
            cls()
            for cls in (Evaluator, PredictionWriter)
            if not any(isinstance(c, cls) for c in configured)
        ]

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        state = super().state_dict(*args, **kwargs)
        prefix = kwargs.get("prefix", args[1] if len(args) > 1 else "")
        frozen = tuple(prefix + p for p in self.frozen_prefixes)
        for key in [k for k in state if k.startswith(frozen)]:
            del state[key]
        return state

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, **kw: Any) -> Any:
        """Load a checkpoint; frozen weights are absent by design, never reported missing."""
        result = super().load_state_dict(state_dict, strict=False, **kw)
        frozen = tuple(self.frozen_prefixes)
        result.missing_keys[:] = [k for k in result.missing_keys if not k.startswith(frozen)]
        if strict and (result.missing_keys or result.unexpected_keys):
            raise RuntimeError(
                f"{type(self).__name__}: checkpoint does not match; missing "
                f"{result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}"
            )
        return result

    def train(self, mode: bool = True) -> MLRMethod:
        """Keep frozen modules in eval mode (no dropout/BN updates) whatever Lightning asks."""
        super().train(mode)
        for name, module in self.named_children():
            if f"{name}." in self.frozen_prefixes:
                module.eval()
        return self


class FeatureMethod(MLRMethod):
    """A method whose scores depend only on frozen image features (global + dense).

    It evaluates from the datamodule's feature cache, so evaluating again (another epoch,
    seed, or the test after fit) never reruns the image encoder. Given raw images (e.g.
    ``predict`` on a new folder, or no cache) it encodes them with ``self.backbone`` first.
    """

    eval_inputs: ClassVar[Literal["images", "features"]] = "features"

    def eval_transform(self) -> Callable[[Any], Tensor]:
        """The backbone's own preprocessing (part of the feature cache key)."""
        return self.backbone.preprocess

    def score(self, batch: EvalBatch | FeatureBatch) -> Tensor:
        if "image" in batch:
            feats = self.backbone.encode_image_dense(batch["image"], global_pool="clip")
            batch = {
                "global": feats.global_,
                "global_no_pos": feats.global_other,
                "dense": feats.dense,
                "target": batch["target"],
                "index": batch["index"],
            }
        return self.score_features(batch)

    def score_features(self, batch: FeatureBatch) -> Tensor:
        """Raw scores ``[B, C]`` from the frozen features of a batch."""
        raise NotImplementedError(f"{type(self).__name__} must implement score_features(batch)")


class EvalConstantsMixin:
    """Class-side tensors (encoded prompts, prototypes) do not change during an evaluation
    epoch: compute them once at its start (``eval_constants``) and drop them at its end.
    In training, :meth:`current_eval_constants` encodes them afresh, with gradients."""

    _eval_constants: Any = None

    def eval_constants(self) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must implement eval_constants()")

    def current_eval_constants(self) -> Any:
        cached = self._eval_constants
        return cached if cached is not None else self.eval_constants()

    def _compute_eval_constants(self) -> None:
        with torch.no_grad():
            self._eval_constants = self.eval_constants()

    def _drop_eval_constants(self) -> None:
        self._eval_constants = None

    on_validation_epoch_start = _compute_eval_constants
    on_test_epoch_start = on_predict_epoch_start = _compute_eval_constants
    on_validation_epoch_end = on_test_epoch_end = on_predict_epoch_end = _drop_eval_constants


def _weights_identity(pretrained: Any) -> Any:
    """``pretrained`` spelled one way: no weights as None, an existing file as its real path."""
    if pretrained in (None, "", "none", "random"):
        return None
    path = Path(str(pretrained)).expanduser()
    return str(path.resolve()) if path.is_file() else pretrained


def freeze(module: torch.nn.Module) -> torch.nn.Module:
    """Put a module in eval mode with ``requires_grad=False`` on all its weights."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module
