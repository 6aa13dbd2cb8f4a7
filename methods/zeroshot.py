"""Zero-shot CLIP: score each class by the cosine similarity of the image and its prompt(s)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

from torch import Tensor

from mlr_bench.batch import FeatureBatch
from mlr_bench.clip import CLIPBackbone
from mlr_bench.clip.prompts import hand_prompt_embeddings, spatial_softmax_pool
from mlr_bench.method import FeatureMethod
from mlr_bench.sweep.space import Choice, Spec


class ZeroShotCLIP(FeatureMethod):
    """Zero-shot CLIP baseline: no training, class prompts vs. the image (global, +dense)."""

    trainer_overrides: ClassVar[Mapping[str, Any]] = {"max_epochs": 1, "log_every_n_steps": 1}
    #: ``mlr-bench sweep`` picks the prompt templates on validation (``docs/sweep.md``).
    search_space: ClassVar[Mapping[str, Spec]] = {"templates": Choice(("single", "ensemble"))}

    def __init__(
        self,
        class_names: Sequence[str] | None = None,
        backbone: str = "world",
        pretrained: str | None = "bundled",
        templates: Literal["single", "ensemble"] = "single",
        prompt: str = "a photo of a {}.",
        dense: bool = False,
        dense_weight: float = 0.5,
        spatial_scale: float = 40.0,
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
            dense: also score every location (DualCoOp/TaI-DPT-style local branch: class-wise
                softmax over locations) and mix it with the global score.
            dense_weight: weight of the local score when ``dense`` (global gets the rest).
            spatial_scale: softmax scale over locations of the local score. The reference
                ``ZeroshotCLIP_dense`` details are a reconstruction: TaI-DPT's test-time
                local branch (scale 40) on CLIP's hand-written prompts.
        """
        super().__init__(class_names)
        self.save_hyperparameters()
        self.templates = templates
        self.prompt = prompt
        self.dense = dense
        self.dense_weight = dense_weight
        self.spatial_scale = spatial_scale
        if "{}" not in prompt:
            raise ValueError(f"prompt must contain '{{}}' for the class name, got {prompt!r}")
        self.backbone = CLIPBackbone(backbone, pretrained)
        self._class_embeddings: Tensor | None = None

    def class_embeddings(self) -> Tensor:
        """``[C, D]`` normalised class embeddings, averaged over templates; computed once."""
        if self._class_embeddings is None or self._class_embeddings.device != self.device:
            self._class_embeddings = hand_prompt_embeddings(
                self.backbone, self.class_names, self.templates, self.prompt
            )
        return self._class_embeddings

    def score_features(self, batch: FeatureBatch) -> Tensor:
        text = self.class_embeddings()
        scale = self.backbone.logit_scale
        scores = scale * batch["global"] @ text.T
        if self.dense:
            local = scale * spatial_softmax_pool(batch["dense"] @ text.T, self.spatial_scale)
            w = self.dense_weight
            scores = (1 - w) * scores + w * local
        return scores

    def training_step(self, batch: Any, batch_idx: int) -> None:
        """Nothing to learn: fit only runs validation."""
        return None

    def configure_optimizers(self) -> None:
        return None
