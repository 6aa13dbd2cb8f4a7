"""Zero-shot CLIP: score each class by the cosine similarity of the image and its prompt(s)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Literal

import torch
from open_clip import OPENAI_IMAGENET_TEMPLATES
from torch import Tensor

from mlr_bench.batch import EvalBatch
from mlr_bench.clip import CLIPBackbone
from mlr_bench.method import MLRMethod


class ZeroShotCLIP(MLRMethod):
    """Zero-shot CLIP baseline: no training, class prompts vs. the global image embedding."""

    trainer_overrides: ClassVar[Mapping[str, Any]] = {"max_epochs": 1, "log_every_n_steps": 1}

    def __init__(
        self,
        class_names: Sequence[str] | None = None,
        backbone: str = "world",
        pretrained: str | None = "bundled",
        templates: Literal["single", "ensemble"] = "single",
        prompt: str = "a photo of a {}.",
    ) -> None:
        """
        Args:
            class_names: linked from the datamodule by the CLI.
            backbone: open_clip model name (e.g. ``RN50``), ``local-dir:<dir>``, or a bundled
                config; the default ``world`` micro-CLIP runs offline.
            pretrained: open_clip tag (e.g. ``openai``), a local weights file, ``bundled`` (the
                weights shipped with mlr-bench) or None (seeded random init).
            templates: "single" uses ``prompt``; "ensemble" averages CLIP's 80 ImageNet templates.
            prompt: the single template, with ``{}`` standing for the class name.
        """
        super().__init__(class_names)
        self.save_hyperparameters()
        if "{}" not in prompt:
            raise ValueError(f"prompt must contain '{{}}' for the class name, got {prompt!r}")
        self.backbone = CLIPBackbone(backbone, pretrained)
        self.templates = templates
        self.prompt = prompt
        self._class_embeddings: Tensor | None = None

    def eval_transform(self) -> Callable[[Any], Tensor]:
        return self.backbone.preprocess

    def prompts(self) -> list[Callable[[str], str]]:
        if self.templates == "ensemble":
            return list(OPENAI_IMAGENET_TEMPLATES)
        return [self.prompt.format]

    @torch.no_grad()
    def class_embeddings(self) -> Tensor:
        """``[C, D]`` normalised class embeddings, averaged over templates; computed once."""
        if self._class_embeddings is None or self._class_embeddings.device != self.device:
            templates = self.prompts()
            texts = [t(c) for c in self.class_names for t in templates]
            emb = self.backbone.encode_text(texts).view(self.num_classes, len(templates), -1)
            self._class_embeddings = torch.nn.functional.normalize(emb.mean(1), dim=-1)
        return self._class_embeddings

    def score(self, batch: EvalBatch) -> Tensor:
        image = self.backbone.encode_image(batch["image"])
        return self.backbone.logit_scale * image @ self.class_embeddings().T

    def training_step(self, batch: Any, batch_idx: int) -> None:
        """Nothing to learn: fit only runs validation."""
        return None

    def configure_optimizers(self) -> None:
        return None
