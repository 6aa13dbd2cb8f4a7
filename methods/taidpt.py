"""TaI-DPT (Guo et al., CVPR 2023): texts as images in double-grained prompt tuning.

Two generic learnable contexts (global, local) are trained on *captions* in place of images:
a caption's EOT embedding plays the global image feature and its token embeddings play the
dense features. At test time the same prompts score the image's global feature and its dense
features. Defaults reproduce the official code (guozix/TaI-DPT; its quirks are listed in
``docs/methods/taidpt.md``): fixed logit scale 4, token softmax scale 50 in training
and spatial scale 40 at test (4 on NUS-WIDE), double ranking loss, SGD 1e-4, 20 cosine epochs
after one constant warm-up epoch at 1e-5, batch 512, 0.5/0.5 merge, global pool without
positional embedding.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from mlr_bench.batch import TEXT, FeatureBatch
from mlr_bench.clip import CLIPBackbone
from mlr_bench.losses import ranking_loss
from mlr_bench.method import FeatureMethod
from mlr_bench.methods._dpt import DoublePromptMixin
from mlr_bench.schedules import warmup_cosine
from mlr_bench.sweep.space import Interval, LogScale, Spec
from mlr_bench.text.corpus import CAPTIONS


class TaIDPT(DoublePromptMixin, FeatureMethod):
    """Double-grained prompt tuning on caption features (global EOT + local tokens)."""

    requires: ClassVar[frozenset[str]] = frozenset({TEXT})
    text_features: ClassVar[frozenset[str]] = frozenset({"eot", "tokens"})
    #: What ``mlr-bench sweep`` tunes, around the recipe's values (``docs/sweep.md``).
    search_space: ClassVar[Mapping[str, Spec]] = {
        "lr": LogScale(10),
        "weight_decay": LogScale(10),
        "margin": LogScale(4),
        "text_spatial_scale": LogScale(4),
        "image_spatial_scale": LogScale(4),
        "merge_rate": Interval(0.0, 1.0),
    }

    def __init__(
        self,
        class_names: Sequence[str] | None = None,
        backbone: str = "world",
        pretrained: str | None = "bundled",
        n_ctx: int = 16,
        ctx_init_std: float = 0.02,
        logit_scale: float = 4.0,
        text_spatial_scale: float = 50.0,
        image_spatial_scale: float = 40.0,
        merge_rate: float = 0.5,
        global_pool: Literal["no_pos", "clip"] = "no_pos",
        margin: float = 1.0,
        lr: float = 1e-4,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        warmup_epochs: int = 1,
        warmup_lr: float = 1e-5,
        text_source: str = CAPTIONS,
        template_copies: int = 10,
    ) -> None:
        """
        Args:
            n_ctx: context tokens per prompt (16); both contexts are generic (shared by classes).
            ctx_init_std: std of the N(0, std²) context initialisation.
            logit_scale: fixed scale of cosine logits (4, not CLIP's 100: the reference keeps
                ``IF_LEARN_SCALE=False``).
            text_spatial_scale: softmax scale over caption tokens in the local branch (50).
            image_spatial_scale: softmax scale over image locations at test (40; 4 on NUS-WIDE).
            merge_rate: test score = (1 - r) · global + r · local (0.5).
            global_pool: global image feature; "no_pos" is the reference's attention pool
                without positional embedding, "clip" CLIP's own.
            margin: ranking-loss margin (1, i.e. 0.25 in cosine units at scale 4).
            lr, momentum, weight_decay: SGD (1e-4, 0.9, 5e-4; lr 1e-3 on NUS-WIDE).
            warmup_epochs, warmup_lr: constant warm-up before the cosine schedule, which spans
                the trainer's ``max_epochs`` (20 in the recipes).
            text_source: the datamodule's text to train on ("captions" in the paper).
            template_copies: K of the template augmentation (K-1 "a photo of a {c}." + 80
                templates per class; 10 in the reference).
        """
        super().__init__(class_names)
        self.save_hyperparameters()
        self.n_ctx = n_ctx
        self.ctx_init_std = ctx_init_std
        self.logit_scale = logit_scale
        self.text_spatial_scale = text_spatial_scale
        self.image_spatial_scale = image_spatial_scale
        self.merge_rate = merge_rate
        self.global_pool = global_pool
        self.margin = margin
        self.lr = lr
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.warmup_epochs = warmup_epochs
        self.warmup_lr = warmup_lr
        self.text_source = text_source
        self.template_copies = template_copies
        self.backbone = CLIPBackbone(backbone, pretrained)
        self.init_double_prompts(n_ctx, ctx_init_std)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        s_global, s_local = self.branch_scores(
            batch["eot"], batch["tokens"], batch["mask"], self.text_spatial_scale
        )
        target, margin = batch["target"], self.margin
        loss_global = ranking_loss(s_global, target, margin)
        loss_local = ranking_loss(s_local, target, margin)
        loss = loss_global + loss_local
        self.log_dict(
            {"train/loss": loss, "train/loss_global": loss_global, "train/loss_local": loss_local},
            prog_bar=False,
            batch_size=len(target),
        )
        return loss

    def score_features(self, batch: FeatureBatch) -> Tensor:
        pooled = batch["global_no_pos"] if self.global_pool == "no_pos" else batch["global"]
        s_global, s_local = self.branch_scores(
            pooled, batch["dense"], None, self.image_spatial_scale
        )
        r = self.merge_rate
        return (1 - r) * s_global + r * s_local

    def configure_optimizers(self) -> dict[str, Any]:
        params = [self.ctx_global, self.ctx_local]
        optimizer = torch.optim.SGD(
            params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay
        )
        schedule = warmup_cosine(
            optimizer, self.trainer.max_epochs, self.warmup_epochs, self.warmup_lr
        )
        return {"optimizer": optimizer, "lr_scheduler": schedule}
