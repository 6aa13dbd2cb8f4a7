"""T2I-PAL (Feng et al., arXiv 2506.10575 / TPAMI 2025), as a documented reconstruction.

The paper's equations are not public (no code; see ``docs/methods/t2ipal.md``, "What the
abstract establishes"). What the abstract establishes — a frozen CLIP, training
images generated from captions, a class-wise heatmap, learnable prototypes aggregating local
similarities, prompt tuning combined with adapter learning, a ranking loss — is built on
TaI-DPT's double-grained prompts (:mod:`mlr_bench.methods._dpt`); every unknown is a parameter.

Model (image features L2-normalised; ``T_g``, ``T_l`` the global/local class prompt embeddings):

- global: ``f' = normalise(α·A(f) + (1−α)·f)`` with a bottleneck adapter ``A`` (D→D/r→D, ReLU),
  ``s_g[c] = s · cos(f', T_g[c])``;
- local: heatmap ``H[c, j] = softmax_j(τ · cos(x_j, T_l[c]))`` over locations, ``K`` prototypes
  per class initialised from the local class text embeddings, ``s_l[c] = s · Σ_j H[c, j] ·
  max_k cos(x_j, P[c, k])`` (or ``cos(Σ_j H[c, j] x_j, P[c, k])``, max over k);
- training: ranking loss on both branches for generated images and, when training on captions,
  for captions through the same model (texts as images: EOT ↔ ``f``, tokens ↔ ``x_j``, padding
  masked); test score ``(1−r)·s_g + r·s_l``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mlr_bench.batch import GENERATED_IMAGES, TEXT, FeatureBatch
from mlr_bench.clip import CLIPBackbone
from mlr_bench.clip.prompts import hand_prompt_embeddings, spatial_softmax_pool
from mlr_bench.errors import MLRBenchError
from mlr_bench.losses import ranking_loss
from mlr_bench.method import FeatureMethod
from mlr_bench.methods._dpt import DoublePromptMixin
from mlr_bench.schedules import warmup_cosine
from mlr_bench.sweep.space import Interval, LogScale, Spec
from mlr_bench.text.corpus import CAPTIONS

TrainOn = Literal["images", "captions", "both"]
LocalHead = Literal["prototypes", "prompt"]
PrototypePooling = Literal["max_similarity", "pooled_feature"]
PrototypeInit = Literal["local_prompt", "hand_prompt"]

#: Which training data kinds each ``train_on`` setting needs.
KINDS: dict[str, frozenset[str]] = {
    "images": frozenset({GENERATED_IMAGES}),
    "captions": frozenset({TEXT}),
    "both": frozenset({GENERATED_IMAGES, TEXT}),
}


class Adapter(nn.Module):
    """CLIP-Adapter-style bottleneck ``D → D/r → D`` (ReLU), mixed residually with ratio α.

    The output layer starts at zero, so the untrained adapter leaves features unchanged (the
    method starts from its prompts' zero-shot behaviour instead of a random perturbation).
    """

    def __init__(self, dim: int, reduction: int, alpha: float, zero_init: bool = True) -> None:
        super().__init__()
        self.alpha = alpha
        self.down = nn.Linear(dim, max(dim // reduction, 1), bias=False)
        self.up = nn.Linear(max(dim // reduction, 1), dim, bias=False)
        if zero_init:
            nn.init.zeros_(self.up.weight)

    def forward(self, features: Tensor) -> Tensor:
        adapted = self.up(F.relu(self.down(features)))
        return F.normalize(self.alpha * adapted + (1 - self.alpha) * features, dim=-1)


class T2IPAL(DoublePromptMixin, FeatureMethod):
    """Prompts + adapter + heatmap-weighted prototypes, trained on generated images (+ captions)."""

    requires: ClassVar[frozenset[str]] = KINDS["both"]
    text_features: ClassVar[frozenset[str]] = frozenset({"eot", "tokens"})
    #: What ``mlr-bench sweep`` tunes, around the recipe's values (``docs/sweep.md``).
    search_space: ClassVar[Mapping[str, Spec]] = {
        "lr": LogScale(10),
        "head_lr": LogScale(10),
        "margin": LogScale(4),
        "alpha": Interval(0.0, 0.4),
        "caption_loss_weight": LogScale(4),
        "merge_rate": Interval(0.0, 1.0),
    }

    def __init__(
        self,
        class_names: Sequence[str] | None = None,
        backbone: str = "world",
        pretrained: str | None = "bundled",
        train_on: TrainOn = "both",
        n_ctx: int = 16,
        ctx_init_std: float = 0.02,
        logit_scale: float = 4.0,
        text_spatial_scale: float = 50.0,
        image_spatial_scale: float = 40.0,
        merge_rate: float = 0.5,
        global_pool: Literal["no_pos", "clip"] = "no_pos",
        adapter: bool = True,
        alpha: float = 0.2,
        adapter_reduction: int = 4,
        local_head: LocalHead = "prototypes",
        num_prototypes: int = 1,
        prototype_init: PrototypeInit = "local_prompt",
        prototype_noise: float = 0.01,
        prototype_pooling: PrototypePooling = "max_similarity",
        captions_through_head: bool = True,
        image_loss_weight: float = 1.0,
        caption_loss_weight: float = 1.0,
        margin: float = 1.0,
        lr: float = 1e-4,
        head_lr: float = 1e-3,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        warmup_epochs: int = 1,
        warmup_lr: float = 1e-5,
        text_source: str = CAPTIONS,
        template_copies: int = 10,
    ) -> None:
        """
        Args:
            train_on: "images" (generated images only), "captions" (captions only: the "no
                generated images" ablation) or "both" (default).
            n_ctx, ctx_init_std, logit_scale, text_spatial_scale, global_pool, text_source,
                template_copies: TaI-DPT's (16, 0.02, 4, 50, "no_pos", "captions", 10).
            image_spatial_scale: τ of the heatmap softmax over image locations, in training on
                generated images and at test (40, TaI-DPT's test value; 4 on NUS-WIDE).
            merge_rate: test score = (1 − r) · global + r · local (0.5).
            adapter: use the global-feature adapter (False: the "no adapter" ablation).
            alpha: residual ratio α of the adapter (0.2, CLIP-Adapter's; 0 disables it).
            adapter_reduction: bottleneck reduction r (4).
            local_head: "prototypes" (heatmap-weighted prototype similarities) or "prompt"
                (TaI-DPT's local branch: the "no heatmap + prototypes" ablation).
            num_prototypes: K prototypes per class (1).
            prototype_init: "local_prompt" (the local prompt embeddings at initialisation) or
                "hand_prompt" (the embedding of "a photo of a {class}.").
            prototype_noise: std of the Gaussian noise added to the K copies of the text
                initialisation (only when K > 1, to break their symmetry).
            prototype_pooling: "max_similarity" = Σ_j H[c,j] · max_k cos(x_j, P[c,k]);
                "pooled_feature" = max_k cos(Σ_j H[c,j] x_j, P[c,k]).
            captions_through_head: captions go through the adapter (EOT) and the heatmap +
                prototypes (tokens) like images: "texts as images" through the whole model
                (default; world val mAP 68.6 vs 67.7). False scores them with TaI-DPT's
                prompt-only caption branch.
            image_loss_weight, caption_loss_weight: weights of the two training losses (each
                the sum of the global and local ranking losses).
            margin: ranking-loss margin (1).
            lr: SGD lr of the prompt contexts (1e-4, TaI-DPT's).
            head_lr: SGD lr of the adapter and prototypes.
            momentum, weight_decay, warmup_epochs, warmup_lr: as TaI-DPT (0.9, 5e-4, one
                constant warm-up epoch at 1e-5 for the prompts, same ratio for the head).
        """
        super().__init__(class_names)
        self.save_hyperparameters()
        if train_on not in KINDS:
            raise MLRBenchError(f"train_on must be one of {sorted(KINDS)}, not {train_on!r}")
        if local_head not in ("prototypes", "prompt"):
            raise MLRBenchError(f"local_head must be 'prototypes' or 'prompt', not {local_head!r}")
        if not 0 <= alpha <= 1:
            raise MLRBenchError(f"alpha must be in [0, 1], not {alpha}")
        if num_prototypes < 1:
            raise MLRBenchError(f"num_prototypes must be at least 1, not {num_prototypes}")
        self.requires = KINDS[train_on]  # per instance: the datamodule builds only these
        self.train_on = train_on
        self.logit_scale = logit_scale
        self.text_spatial_scale = text_spatial_scale
        self.image_spatial_scale = image_spatial_scale
        self.merge_rate = merge_rate
        self.global_pool = global_pool
        self.local_head = local_head
        self.prototype_pooling = prototype_pooling
        self.captions_through_head = captions_through_head
        self.image_loss_weight = image_loss_weight
        self.caption_loss_weight = caption_loss_weight
        self.margin = margin
        self.lr, self.head_lr = lr, head_lr
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.warmup_epochs = warmup_epochs
        self.warmup_lr = warmup_lr
        self.text_source = text_source
        self.template_copies = template_copies
        self.backbone = CLIPBackbone(backbone, pretrained)
        self.init_double_prompts(n_ctx, ctx_init_std)
        dim = self.backbone.embed_dim
        self.adapter = Adapter(dim, adapter_reduction, alpha) if adapter and alpha > 0 else None
        self.prototypes = None
        if local_head == "prototypes":
            init = self._prototype_init(prototype_init, dim)
            k = num_prototypes
            protos = init.unsqueeze(1).repeat(1, k, 1)
            if k > 1:
                protos = protos + prototype_noise * torch.randn_like(protos)
            self.prototypes = nn.Parameter(F.normalize(protos, dim=-1))
        if train_on == "captions" and not captions_through_head:
            # nothing trains the head: keep it out of the optimiser and of DDP's gradient sync
            for p in self.head_parameters():
                p.requires_grad_(False)

    def _prototype_init(self, how: PrototypeInit, dim: int) -> Tensor:
        """``[C, D]`` class text embeddings the prototypes start from."""
        if not self.class_names:
            return torch.zeros(0, dim)
        with torch.no_grad():
            if how == "local_prompt":
                return self.prompts(self.ctx_local).detach().clone()
            if how == "hand_prompt":
                return hand_prompt_embeddings(self.backbone, self.class_names, "single")
        raise MLRBenchError(f"prototype_init must be 'local_prompt' or 'hand_prompt', not {how!r}")

    def head_parameters(self) -> list[nn.Parameter]:
        """Adapter and prototype parameters (the part trained only by generated images)."""
        params = list(self.adapter.parameters()) if self.adapter is not None else []
        return params + ([self.prototypes] if self.prototypes is not None else [])

    # ---- the image branches ----------------------------------------------------------------
    def heatmap(
        self,
        dense: Tensor,
        t_local: Tensor | None = None,
        mask: Tensor | None = None,
        spatial_scale: float | None = None,
    ) -> Tensor:
        """Class-wise heatmap ``[B, C, J]``: softmax over locations of τ·cos(x_j, T_l[c])
        (``mask`` ``[B, J]`` marks valid positions: caption tokens have padding)."""
        t_local = self.current_prompts()[1] if t_local is None else t_local
        scale = self.image_spatial_scale if spatial_scale is None else spatial_scale
        logits = scale * dense @ t_local.T
        if mask is not None:
            logits = logits.masked_fill(~mask.unsqueeze(-1), float("-inf"))
        return logits.softmax(dim=1).transpose(1, 2)

    def image_scores(
        self,
        global_: Tensor,
        dense: Tensor,
        prompts: tuple[Tensor, Tensor] | None = None,
        mask: Tensor | None = None,
        spatial_scale: float | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Global and local logits ``[B, C]`` of image features ``[B, D]``, ``[B, J, D]`` (or
        of caption EOT/tokens with their ``mask``, when captions go through the head)."""
        t_global, t_local = prompts or self.current_prompts()
        scale = self.image_spatial_scale if spatial_scale is None else spatial_scale
        if self.adapter is not None:
            global_ = self.adapter(global_)
        s_global = self.logit_scale * global_ @ t_global.T
        if self.prototypes is None:  # TaI-DPT's local branch
            local = spatial_softmax_pool(dense @ t_local.T, scale, mask)
            return s_global, self.logit_scale * local
        heat = self.heatmap(dense, t_local, mask, scale)  # [B, C, J]
        protos = F.normalize(self.prototypes, dim=-1)  # [C, K, D]
        if self.prototype_pooling == "max_similarity":
            sim = torch.einsum("bjd,ckd->bjck", dense, protos).amax(dim=-1)  # [B, J, C]
            local = (heat * sim.transpose(1, 2)).sum(dim=-1)
        else:
            pooled = F.normalize(heat @ dense, dim=-1)  # [B, C, D]
            local = torch.einsum("bcd,ckd->bck", pooled, protos).amax(dim=-1)
        return s_global, self.logit_scale * local

    def _global(self, batch: Mapping[str, Tensor]) -> Tensor:
        return batch["global_no_pos"] if self.global_pool == "no_pos" else batch["global"]

    def score_features(self, batch: FeatureBatch) -> Tensor:
        s_global, s_local = self.image_scores(self._global(batch), batch["dense"])
        r = self.merge_rate
        return (1 - r) * s_global + r * s_local

    # ---- training --------------------------------------------------------------------------
    def _by_kind(self, batch: dict[str, Any]) -> dict[str, dict[str, Tensor]]:
        """``{kind: batch}`` whether the loader combined several kinds or served one."""
        if set(batch) <= {TEXT, GENERATED_IMAGES}:
            return batch
        (kind,) = self.requires
        return {kind: batch}

    def _double_ranking(self, scores: tuple[Tensor, Tensor], target: Tensor) -> Tensor:
        return sum(ranking_loss(s, target, self.margin) for s in scores)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        parts = self._by_kind(batch)
        prompts = self.class_prompts()  # encoded once per step, shared by both kinds
        logs: dict[str, Tensor] = {}
        loss = torch.zeros((), device=self.device)
        if GENERATED_IMAGES in parts:
            images = parts[GENERATED_IMAGES]
            scores = self.image_scores(self._global(images), images["dense"], prompts)
            logs["train/loss_images"] = self._double_ranking(scores, images["target"])
            loss = loss + self.image_loss_weight * logs["train/loss_images"]
        if TEXT in parts:
            text = parts[TEXT]
            eot, tokens, mask, scale = (
                text["eot"],
                text["tokens"],
                text["mask"],
                self.text_spatial_scale,
            )
            if self.captions_through_head:  # texts as images through the whole model
                scores = self.image_scores(eot, tokens, prompts, mask, scale)
            else:  # TaI-DPT's caption branch
                scores = self.branch_scores(eot, tokens, mask, scale, prompts)
            logs["train/loss_captions"] = self._double_ranking(scores, text["target"])
            loss = loss + self.caption_loss_weight * logs["train/loss_captions"]
        logs["train/loss"] = loss
        size = max(len(p["target"]) for p in parts.values())
        self.log_dict(logs, prog_bar=False, batch_size=size)
        return loss

    def configure_optimizers(self) -> dict[str, Any]:
        groups = [{"params": [self.ctx_global, self.ctx_local], "lr": self.lr}]
        warm = [self.warmup_lr]
        head = [p for p in self.head_parameters() if p.requires_grad]
        if head:
            groups.append({"params": head, "lr": self.head_lr})
            warm.append(self.warmup_lr * self.head_lr / self.lr)
        optimizer = torch.optim.SGD(
            groups, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay
        )
        schedule = warmup_cosine(optimizer, self.trainer.max_epochs, self.warmup_epochs, warm)
        return {"optimizer": optimizer, "lr_scheduler": schedule}
