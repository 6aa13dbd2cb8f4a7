"""CoMC (Liu et al., ICML 2024): a cross-modal classifier trained on text, applied to images.

A bias-free linear classifier learns on the frozen EOT embeddings of LLM-written sentences
(with Gaussian noise, to bridge the modality gap); at test time each image embedding is first
mapped towards the text modality by attention over the class prompt-ensemble embeddings. The
defaults reproduce the official code (yic20/CoMC; ``docs/methods/comc.md``): noise σ 0.1
(not re-normalised), ranking loss, Adam 1e-3 / wd 5e-4, 20 cosine epochs after one constant
warm-up epoch at 1e-5, batch 512; mapping temperature 100, fusion 0.7 image + 0.3 mapped,
score 0.5 · global + 0.5 · max over locations.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mlr_bench.batch import TEXT, FeatureBatch
from mlr_bench.clip import CLIPBackbone
from mlr_bench.clip.prompts import hand_prompt_embeddings
from mlr_bench.losses import ranking_loss
from mlr_bench.method import FeatureMethod
from mlr_bench.schedules import warmup_cosine
from mlr_bench.sweep.space import Interval, LogScale, Spec
from mlr_bench.text.corpus import SENTENCES, TextRequest


class CoMC(FeatureMethod):
    """Linear classifier on noisy text embeddings + cross-modal mapping of image features."""

    requires: ClassVar[frozenset[str]] = frozenset({TEXT})
    text_features: ClassVar[frozenset[str]] = frozenset({"eot"})
    #: What ``mlr-bench sweep`` tunes, around the recipe's values (``docs/sweep.md``).
    search_space: ClassVar[Mapping[str, Spec]] = {
        "lr": LogScale(10),
        "weight_decay": LogScale(10),
        "noise_std": LogScale(4),
        "margin": LogScale(4),
        "fusion_weight": Interval(0.0, 0.6),
        "merge_rate": Interval(0.0, 1.0),
    }

    def __init__(
        self,
        class_names: Sequence[str] | None = None,
        backbone: str = "world",
        pretrained: str | None = "bundled",
        noise_std: float = 0.1,
        renormalize_noisy: bool = False,
        margin: float = 1.0,
        lr: float = 1e-3,
        weight_decay: float = 5e-4,
        warmup_epochs: int = 1,
        warmup_lr: float = 1e-5,
        mapping_temperature: float = 100.0,
        fusion_weight: float = 0.3,
        merge_rate: float = 0.5,
        bank_templates: Literal["single", "ensemble"] = "ensemble",
        global_pool: Literal["no_pos", "clip"] = "no_pos",
        text_source: str = SENTENCES,
        template_copies: int = 10,
    ) -> None:
        """
        Args:
            noise_std: σ of the N(0, σ²) noise added to every text embedding element, fresh
                each step (0.1).
            renormalize_noisy: L2-normalise the noisy embedding (the reference does not).
            margin: ranking-loss margin (1).
            lr, weight_decay: Adam (1e-3, 5e-4).
            warmup_epochs, warmup_lr: constant warm-up before the cosine schedule, which spans
                the trainer's ``max_epochs`` (20 in the recipes).
            mapping_temperature: scale of the softmax over the class bank (100).
            fusion_weight: v' = (1 - w) · v + w · mapped(v) (0.3), not re-normalised.
            merge_rate: score = (1 - r) · global + r · max over locations (0.5).
            bank_templates: the mapping bank: class embeddings of the 80-template ensemble
                (reference ``coco_templates.pt``, rebuilt for any class list) or one prompt.
            global_pool: "no_pos" (reference) or CLIP's own attention pool.
            text_source: the datamodule's text ("sentences": LLM sentences whose labels are
                the requested label sets, as in the paper).
            template_copies: K of the template augmentation (10).
        """
        super().__init__(class_names)
        self.save_hyperparameters()
        self.noise_std = noise_std
        self.renormalize_noisy = renormalize_noisy
        self.margin = margin
        self.lr = lr
        self.weight_decay = weight_decay
        self.warmup_epochs = warmup_epochs
        self.warmup_lr = warmup_lr
        self.mapping_temperature = mapping_temperature
        self.fusion_weight = fusion_weight
        self.merge_rate = merge_rate
        self.bank_templates = bank_templates
        self.global_pool = global_pool
        self.text_source = text_source
        self.template_copies = template_copies
        self.backbone = CLIPBackbone(backbone, pretrained)
        self.classifier = nn.Linear(self.backbone.embed_dim, max(self.num_classes, 1), bias=False)
        self._bank: Tensor | None = None

    def text_request(self) -> TextRequest:
        return TextRequest(self.text_source, self.template_copies)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        text = batch["eot"]
        noisy = text + self.noise_std * torch.randn_like(text)
        if self.renormalize_noisy:
            noisy = F.normalize(noisy, dim=-1)
        loss = ranking_loss(self.classifier(noisy), batch["target"], self.margin)
        self.log("train/loss", loss, batch_size=len(text))
        return loss

    def bank(self) -> Tensor:
        """``[C, D]`` class text embeddings the image features are mapped onto; built once."""
        if self._bank is None or self._bank.device != self.device:
            self._bank = hand_prompt_embeddings(
                self.backbone, self.class_names, self.bank_templates
            )
        return self._bank

    def cross_modal_map(self, features: Tensor) -> Tensor:
        """v' = (1 - w) v + w · normalise(Tᵀ softmax(τ T v)), for features ``[..., D]``."""
        bank = self.bank()
        attention = (self.mapping_temperature * features @ bank.T).softmax(dim=-1)
        mapped = F.normalize(attention @ bank, dim=-1)
        w = self.fusion_weight
        return (1 - w) * features + w * mapped

    def score_features(self, batch: FeatureBatch) -> Tensor:
        pooled = batch["global_no_pos"] if self.global_pool == "no_pos" else batch["global"]
        s_global = self.classifier(self.cross_modal_map(pooled))
        s_local = self.classifier(self.cross_modal_map(batch["dense"])).amax(dim=1)
        r = self.merge_rate
        return (1 - r) * s_global + r * s_local

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = torch.optim.Adam(
            self.classifier.parameters(), lr=self.lr, weight_decay=self.weight_decay
        )
        schedule = warmup_cosine(
            optimizer, self.trainer.max_epochs, self.warmup_epochs, self.warmup_lr
        )
        return {"optimizer": optimizer, "lr_scheduler": schedule}
