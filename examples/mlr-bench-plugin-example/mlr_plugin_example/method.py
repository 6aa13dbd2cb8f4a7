"""TextProbe: a cosine classifier trained on caption embeddings, starting from zero-shot CLIP.

Each class has one weight vector in CLIP's joint space, initialised with the embedding of a
hand-written prompt ("a photo of a {}."), so the untrained method ranks images exactly as
zero-shot CLIP does. Training moves the vectors using only text: the frozen EOT embeddings of
captions (from mlr-bench's text feature cache), with Gaussian noise added to bridge the gap
between the text and image modalities, and the pairwise ranking loss. At test time the
weights score the image's global embedding.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mlr_bench import FeatureMethod
from mlr_bench.batch import TEXT, FeatureBatch
from mlr_bench.clip import CLIPBackbone
from mlr_bench.clip.prompts import hand_prompt_embeddings
from mlr_bench.losses import ranking_loss
from mlr_bench.text.corpus import TextRequest


class TextProbe(FeatureMethod):
    """Cosine classifier on noisy caption embeddings, initialised from CLIP class prompts."""

    # Training data the datamodule must build: text, delivered as cached EOT features.
    requires: ClassVar[frozenset[str]] = frozenset({TEXT})
    text_features: ClassVar[frozenset[str]] = frozenset({"eot"})

    def __init__(
        self,
        class_names: Sequence[str] | None = None,
        backbone: str = "world",
        pretrained: str | None = "bundled",
        prompt: str = "a photo of a {}.",
        logit_scale: float = 4.0,
        noise_std: float = 0.05,
        margin: float = 1.0,
        lr: float = 1e-3,
        text_source: str = "captions",
        template_copies: int = 10,
    ) -> None:
        """
        Args:
            class_names: linked from the datamodule by the CLI.
            backbone, pretrained: the frozen CLIP (defaults: the bundled offline micro-CLIP).
            prompt: template whose class embeddings initialise the classifier.
            logit_scale: fixed scale of the cosine scores.
            noise_std: std of the Gaussian noise added to caption embeddings in training.
            margin: margin of the ranking loss.
            lr: Adam learning rate (the trainer's ``max_epochs`` sets the length).
            text_source: "captions" or "sentences" (the datamodule's corresponding file).
            template_copies: K of mlr-bench's template augmentation of the training text.
        """
        super().__init__(class_names)
        self.save_hyperparameters()
        self.logit_scale = logit_scale
        self.noise_std = noise_std
        self.margin = margin
        self.lr = lr
        self.text_source = text_source
        self.template_copies = template_copies
        self.backbone = CLIPBackbone(backbone, pretrained)  # frozen, never checkpointed
        if self.class_names:
            with torch.no_grad():
                init = hand_prompt_embeddings(self.backbone, self.class_names, "single", prompt)
        else:  # built without classes (e.g. by a tool that only inspects the class)
            init = torch.zeros(1, self.backbone.embed_dim)
        self.weight = nn.Parameter(init.float().clone())

    def text_request(self) -> TextRequest:
        return TextRequest(self.text_source, self.template_copies)

    def logits(self, features: Tensor) -> Tensor:
        """Scaled cosine similarity of normalised features ``[B, D]`` and the class weights."""
        return self.logit_scale * features @ F.normalize(self.weight, dim=-1).T

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        text = batch["eot"].float()
        noisy = F.normalize(text + self.noise_std * torch.randn_like(text), dim=-1)
        loss = ranking_loss(self.logits(noisy), batch["target"], self.margin)
        self.log("train/loss", loss, batch_size=len(text))
        return loss

    def score_features(self, batch: FeatureBatch) -> Tensor:
        return self.logits(batch["global"].float())

    def configure_optimizers(self) -> Any:
        return torch.optim.Adam([self.weight], lr=self.lr)
