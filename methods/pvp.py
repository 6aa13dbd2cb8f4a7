"""PVP / TAI++ (Wu et al., IJCAI 2024): pseudo visual prompts, contrastive transfer, dual adapters.

Per class, two learnable *pixel tensors* (a global and a local set) are pushed through the frozen
image encoder: their embeddings are class prototypes that live in the image modality.

* **Stage 1** (``stage="pretrain"``): text stands in for the image. Sentence EOT and token
  features (cached, frozen, noised) are scored against the PVP embeddings and only the pixels
  learn; the result is saved as an artifact (``pvp_prompts.safetensors``).
* **Stage 2** (``stage="finetune"``): CoOp-style generic text contexts join the PVPs; two
  residual adapters (one per modality) refine both; four logits (text-global, text-local,
  PVP-global, PVP-local) and a symmetric contrastive loss between each class's text prompt and
  its PVP train everything together.
* ``stage="both"`` (default) runs stage 1 first (unless its artifact is cached under a key of
  everything that changes it) through the trainer's prior-stage hook, then stage 2.

Defaults reproduce the reference implementation (Jinx630/Pseudo-Visual-Prompt), quirks
included; each quirk is a named parameter, documented in ``docs/methods/pvp.md``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from mlr_bench.batch import TEXT, FeatureBatch
from mlr_bench.budget_policy import StagePlan
from mlr_bench.checkpoints import CheckpointError, load_weights_file
from mlr_bench.clip import CLIPBackbone
from mlr_bench.clip.prompts import PromptEncoder, init_context, spatial_softmax_pool
from mlr_bench.errors import MLRBenchError
from mlr_bench.features.keys import backbone_key
from mlr_bench.features.store import digest
from mlr_bench.features.text import corpus_hash
from mlr_bench.losses import ranking_loss
from mlr_bench.method import EvalConstantsMixin, FeatureMethod
from mlr_bench.runs import run_dir
from mlr_bench.schedules import SCHEDULE_VERSION, warmup_cosine
from mlr_bench.stages import PriorStage, trainer_limits
from mlr_bench.sweep.space import Interval, LogScale, Spec
from mlr_bench.text.corpus import SENTENCES, TextRequest

Stage = Literal["pretrain", "finetune", "both"]
ARTIFACT_NAME = "pvp_prompts.safetensors"
#: Bump when stage 1 changes what it learns from the same inputs (invalidates cached prompts).
ARTIFACT_VERSION = 1
#: Parameters that change what stage 1 learns (with the data, backbone, seed and trainer).
PRETRAIN_ARGS = (
    "global_size",
    "local_size",
    "pixel_init_seed",
    "noise_std",
    "logit_scale",
    "pvp_spatial_scale",
    "pretrain_local_weight",
    "pretrain_lr",
    "pretrain_warmup_lr",
    "pretrain_text_source",
    "pretrain_template_copies",
    "momentum",
    "weight_decay",
    "warmup_epochs",
    "margin",
    "encode_dtype",
)


class PVPArtifactError(MLRBenchError, FileNotFoundError):
    """Stage-1 prompts could not be found or read; the message says how to provide them."""


class ResidualAdapter(nn.Module):
    """A(x) = r·x + (1 − r)·W₂·Dropout(ReLU(W₁x)), then L2-normalised (PVP's dual adapter).

    r = 0.6 keeps most of CLIP's own feature ("original knowledge") and mixes in 0.4 of the
    learned branch; both linear maps are D×D without bias, as in the reference.
    """

    def __init__(self, dim: int, ratio: float = 0.6, dropout: float = 0.6) -> None:
        super().__init__()
        self.ratio = ratio
        self.branch = nn.Sequential(
            nn.Linear(dim, dim, bias=False),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(dim, dim, bias=False),
        )

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.ratio * x + (1 - self.ratio) * self.branch(x), dim=-1)


def init_pixel_prompts(
    backbone: CLIPBackbone, num_classes: int, size: int, generator: torch.Generator
) -> Tensor:
    """``[C, 3, size, size]`` i.i.d. normal per channel with CLIP's pixel mean and std.

    As in the reference, the tensor is fed to the encoder as is (it is not normalised again).
    """
    visual = backbone.clip.visual
    mean = torch.tensor(getattr(visual, "image_mean", None) or (0.48145466, 0.4578275, 0.40821073))
    std = torch.tensor(getattr(visual, "image_std", None) or (0.26862954, 0.26130258, 0.27577711))
    noise = torch.randn(num_classes, 3, size, size, generator=generator)
    return noise * std.view(1, 3, 1, 1) + mean.view(1, 3, 1, 1)


def load_prompts(path: str | Path, class_names: Sequence[str] | None = None) -> dict[str, Tensor]:
    """Stage-1 pixel prompts from an artifact file, a stage-1 checkpoint or a run directory.

    With ``class_names``, prompts saved for other classes (or another order: one prompt per
    class, so the same count is not enough) are refused instead of silently mislabelled.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        found = sorted(path.rglob(ARTIFACT_NAME))
        if not found:
            raise PVPArtifactError(f"{path}: no {ARTIFACT_NAME} in this run directory")
        path = found[-1]
    if not path.is_file():
        raise PVPArtifactError(
            f"{path}: stage-1 prompts not found; expected a {ARTIFACT_NAME} file, a stage-1 "
            "checkpoint (.ckpt) or the run directory of `--method.stage pretrain`"
        )
    from safetensors import SafetensorError, safe_open

    try:
        if path.suffix == ".ckpt":  # weights_only: a crafted pickle must not run code
            ckpt = load_weights_file(path, what="PVP stage-1 checkpoint")
            state = ckpt["state_dict"]
            saved_classes = (ckpt.get("hyper_parameters") or {}).get("class_names")
        else:
            state = load_file(str(path))
            with safe_open(str(path), "pt") as f:
                saved_classes = json.loads((f.metadata() or {}).get("classes", "null"))
        prompts = {k: state[k].float() for k in ("pvp_global", "pvp_local")}
    except CheckpointError as exc:
        raise PVPArtifactError(str(exc)) from None
    except (KeyError, OSError, RuntimeError, ValueError, TypeError, SafetensorError) as exc:
        raise PVPArtifactError(
            f"{path}: not readable as PVP stage-1 prompts (needs tensors pvp_global and "
            f"pvp_local): {type(exc).__name__}: {exc}"
        ) from exc
    comparable = saved_classes is not None and class_names is not None
    if comparable and list(saved_classes) != list(class_names):
        raise PVPArtifactError(
            f"{path}: stage-1 prompts were trained for classes {list(saved_classes)[:6]} "
            f"({len(saved_classes)}), this run has {list(class_names)[:6]} "
            f"({len(class_names)}); use stage-1 prompts of this dataset"
        )
    return prompts


class PVP(EvalConstantsMixin, FeatureMethod):
    """Pseudo visual prompts + generic text prompts + dual adapters (two training stages)."""

    requires: ClassVar[frozenset[str]] = frozenset({TEXT})
    text_features: ClassVar[frozenset[str]] = frozenset({"eot", "tokens"})
    #: What ``mlr-bench sweep`` tunes, around the recipe's values (``docs/sweep.md``).
    search_space: ClassVar[Mapping[str, Spec]] = {
        "lr": LogScale(10),
        "adapter_lr": LogScale(10),
        "pretrain_lr": LogScale(10),
        "noise_std": LogScale(4),
        "margin": LogScale(4),
        "adapter_ratio": Interval(0.2, 1.0),
    }

    @classmethod
    def checkpoint_identity(cls, hparams: Mapping[str, Any]) -> dict[str, Any]:
        """The stage too: a stage-1 checkpoint holds only pre-trained pixels (untrained
        adapters and contexts); "both" and "finetune" end in the same stage-2 model."""
        ident = super().checkpoint_identity(hparams)
        if "stage" in hparams:
            ident["stage"] = "pretrain" if hparams["stage"] == "pretrain" else "finetune"
        return ident

    def __init__(
        self,
        class_names: Sequence[str] | None = None,
        backbone: str = "world",
        pretrained: str | None = "bundled",
        stage: Stage = "both",
        pretrained_prompts: str | None = None,
        pretrain_epochs: int = 100,
        pretrain_stop_epoch: int | None = None,
        global_size: int | None = None,
        local_size: int | None = None,
        pixel_init_seed: int = 0,
        n_ctx: int = 16,
        ctx_init_std: float = 0.02,
        noise_std: float = 0.04,
        logit_scale: float = 4.0,
        text_spatial_scale: float = 50.0,
        pvp_spatial_scale: float = 40.0,
        swap_test_spatial_scales: bool = True,
        append_global_token: bool = True,
        adapter_ratio: float = 0.6,
        adapter_dropout: float = 0.6,
        contrastive_scale: Literal["raw", "exp"] | float = "raw",
        pretrain_local_weight: float = 0.1,
        loss_weights: tuple[float, float, float, float, float] = (1.0, 0.01, 1.0, 1.0, 1.0),
        margin: float = 1.0,
        pretrain_lr: float = 0.1,
        pretrain_warmup_lr: float = 1.0,
        lr: float = 5e-5,
        adapter_lr: float = 1e-3,
        adapter_warmup_lr: float = 5e-3,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        warmup_epochs: int = 1,
        global_pool: Literal["no_pos", "clip"] = "no_pos",
        pretrain_text_source: str = SENTENCES,
        pretrain_template_copies: int = 400,
        text_source: str = SENTENCES,
        template_copies: int = 200,
        encode_dtype: Literal["auto", "float32", "bfloat16", "float16"] = "float32",
        channels_last: bool = True,
    ) -> None:
        """
        Args:
            stage: "pretrain" (stage 1 only), "finetune" (stage 2 from saved prompts) or
                "both" (stage 1, cached, then stage 2).
            pretrained_prompts: stage-1 prompts for stage 2: an artifact file, a stage-1
                ``.ckpt`` or run directory; None finds them in the cache (keyed by backbone,
                corpus, stage-1 settings, seed and trainer limits).
            pretrain_epochs: stage-1 epochs when ``stage="both"`` (100 in the reference), which
                its cosine schedule spans. ``stage="pretrain"`` runs the trainer's max_epochs.
            pretrain_stop_epoch: stop stage 1 after this many epochs of its
                ``pretrain_epochs``-epoch schedule (None: run them all). The reference trains
                100 epochs but its stage 2 loads the prompts saved after epoch index 40: 41
                epochs into the cosine, lr still high; the real-data recipes set 41.
            global_size, local_size: side of the global/local pixel prompts (None: the
                backbone's input resolution; 224 for RN50 as in the reference scripts).
            pixel_init_seed: seed of the pixel prompts' N(mean, std) initialisation.
            n_ctx, ctx_init_std: generic text contexts (16 tokens, N(0, 0.02²)).
            noise_std: σ of the noise on normalised sentence features, then re-normalised.
            logit_scale: fixed scale of every logit (4).
            text_spatial_scale, pvp_spatial_scale: token-softmax scales against the local text
                prompts (50) and the local PVPs (40) in training.
            swap_test_spatial_scales: reference quirk: at test the two scales are swapped
                (text 40, PVP 50). False uses the training scales.
            append_global_token: append the un-adapted global image embedding to the dense
                tokens at test (reference).
            adapter_ratio, adapter_dropout: residual adapters, A(x) = r·x + (1-r)·MLP(x).
            contrastive_scale: temperature of the text-prompt ↔ PVP contrastive loss; "raw" is
                the reference quirk (CLIP's *un-exponentiated* logit_scale, ln 100 ≈ 4.6 for
                OpenAI CLIP), "exp" CLIP's actual scale (100), or a number.
            pretrain_local_weight: stage-1 loss = rank(global) + w · rank(local) (0.1).
            loss_weights: stage-2 weights of rank(text-global), rank(text-local),
                rank(PVP-global), rank(PVP-local) and the contrastive loss (1, 0.01, 1, 1, 1).
            margin: ranking-loss margin (1).
            pretrain_lr, pretrain_warmup_lr: stage-1 SGD lr (0.1) and its constant warm-up lr
                (reference quirk: 1.0, probably unintended).
            lr, adapter_lr, adapter_warmup_lr: stage-2 SGD lr of prompts and PVPs (5e-5; their
                warm-up runs at the same lr) and of the adapters (1e-3, warm-up 5e-3).
            momentum, weight_decay, warmup_epochs: SGD and warm-up as in Dassl (0.9, 5e-4, 1).
            global_pool: pooling of test images' global feature ("no_pos", the reference).
            pretrain_text_source, pretrain_template_copies: stage-1 text (LLM sentences,
                labels parsed from the sentence) and K of the template augmentation (400).
            text_source, template_copies: stage-2 text ("sentences", or "captions" for the
                paper's clean-text setting) and K (200).
            encode_dtype: autocast dtype of the pixel-prompt encoding on CUDA: "float32" (the
                reference's precision, default), "bfloat16"/"float16", or "auto" = bf16 (fp16
                without bf16 support). Always fp32 on other devices.
            channels_last: run the ResNet image encoder in channels-last layout on CUDA.
        """
        super().__init__(class_names)
        if stage not in ("pretrain", "finetune", "both"):
            raise ValueError(f"stage must be pretrain, finetune or both, got {stage!r}")
        if pretrain_stop_epoch is not None and not 1 <= pretrain_stop_epoch <= pretrain_epochs:
            raise ValueError(
                f"pretrain_stop_epoch must be in 1..pretrain_epochs ({pretrain_epochs}), got "
                f"{pretrain_stop_epoch}"
            )
        self.save_hyperparameters()
        self.settings = {k: v for k, v in self.hparams.items() if not k.startswith("_")}
        for name, value in self.settings.items():  # plain attributes, as plugins expect
            if name not in ("class_names", "backbone", "pretrained"):
                setattr(self, name, value)
        self.backbone = CLIPBackbone(backbone, pretrained)
        size = self.backbone.image_size
        num_classes = max(self.num_classes, 1)
        generator = torch.Generator().manual_seed(pixel_init_seed)
        self.pvp_global = nn.Parameter(
            init_pixel_prompts(self.backbone, num_classes, global_size or size, generator)
        )
        self.pvp_local = nn.Parameter(
            init_pixel_prompts(self.backbone, num_classes, local_size or size, generator)
        )
        self.ctx_global = nn.Parameter(init_context(self.backbone, n_ctx, std=ctx_init_std))
        self.ctx_local = nn.Parameter(init_context(self.backbone, n_ctx, std=ctx_init_std))
        dim = self.backbone.embed_dim
        self.text_adapter = ResidualAdapter(dim, adapter_ratio, adapter_dropout)
        self.image_adapter = ResidualAdapter(dim, adapter_ratio, adapter_dropout)
        self.prompts = (
            PromptEncoder(self.backbone, self.class_names, n_ctx) if class_names else None
        )
        if stage == "pretrain":  # only the pixels learn in stage 1
            for module in (self.text_adapter, self.image_adapter):
                module.requires_grad_(False)
            self.ctx_global.requires_grad_(False)
            self.ctx_local.requires_grad_(False)
        self._artifact: Path | None = None

    # ---- data ----------------------------------------------------------------------------
    def text_request(self) -> TextRequest:
        if self.stage == "pretrain":
            return TextRequest(self.pretrain_text_source, self.pretrain_template_copies)
        return TextRequest(self.text_source, self.template_copies)

    def budget_plan(self) -> list[StagePlan]:
        """The budget policy's view (:mod:`mlr_bench.budget_policy`): stage 1 on its sentences
        (unless its prompts are given), then stage 2 on its own text."""
        first = TextRequest(self.pretrain_text_source, self.pretrain_template_copies)
        if self.stage == "pretrain":
            return [StagePlan("pretrain", first)]
        plan = [StagePlan("train", self.text_request())]
        if self.stage == "both" and self.pretrained_prompts is None:
            plan.insert(0, StagePlan("pretrain", first, self.set_stage1_epochs))
        return plan

    def set_stage1_epochs(self, epochs: int) -> None:
        """Stage 1 runs ``epochs`` epochs of a cosine that spans the same multiple of them as
        before (the reference's hand-off, 41 epochs of a 100-epoch schedule, stays 41:100)."""
        run, span = self.stage1_epochs()
        stop = None if self.pretrain_stop_epoch is None else epochs
        for name, value in (("pretrain_epochs", max(epochs, round(epochs * span / run))),
                            ("pretrain_stop_epoch", stop)):  # fmt: skip
            setattr(self, name, value)
            self.settings[name] = value
            self.hparams[name] = value

    # ---- stage 1 artifact ----------------------------------------------------------------
    def stage1_epochs(self, run_epochs: int | None = None) -> tuple[int, int]:
        """(epochs stage 1 runs, epochs its cosine spans). ``run_epochs``: the trainer's, when
        stage 1 runs on its own (``stage="pretrain"``)."""
        if self.pretrain_stop_epoch is None:
            run = self.pretrain_epochs if run_epochs is None else run_epochs
            return run, run
        run = self.pretrain_stop_epoch if run_epochs is None else run_epochs
        if run > self.pretrain_epochs:
            raise ValueError(
                f"stage 1 runs {run} epochs but its schedule spans pretrain_epochs="
                f"{self.pretrain_epochs} (pretrain_stop_epoch={self.pretrain_stop_epoch})"
            )
        return run, self.pretrain_epochs

    def artifact_key(
        self, datamodule: Any, trainer: Any, epochs: tuple[int, int]
    ) -> dict[str, Any]:
        """Everything that changes the stage-1 prompts: the cache key of the artifact."""
        request = TextRequest(self.pretrain_text_source, self.pretrain_template_copies)
        corpus = datamodule.corpus_for(request)
        return {
            "kind": "pvp-prompts",
            "version": ARTIFACT_VERSION,
            "schedule": SCHEDULE_VERSION,
            "backbone": backbone_key(self.backbone),
            "classes": self.class_names,
            "corpus": corpus_hash(corpus),
            "batch_size": datamodule.batch_size,
            "epochs": epochs[0],
            "schedule_epochs": epochs[1],
            "settings": {k: self.settings[k] for k in PRETRAIN_ARGS},
            "seed": os.environ.get("PL_GLOBAL_SEED"),
            "trainer": trainer_limits(trainer),
        }

    def artifact_path(self, datamodule: Any, trainer: Any, epochs: tuple[int, int]) -> Path:
        key = self.artifact_key(datamodule, trainer, epochs)
        return datamodule.store.root / f"pvp-prompts-{digest(key)}" / ARTIFACT_NAME

    def prior_stage(self, datamodule: Any, trainer: Any) -> PriorStage | None:
        """Stage 1, when ``stage="both"`` and its prompts are neither given nor cached."""
        if self.stage != "both" or self.pretrained_prompts is not None:
            return None
        self._artifact = self.artifact_path(datamodule, trainer, self.stage1_epochs())
        if self._artifact.is_file():
            print(f"PVP stage 1: reusing cached prompts {self._artifact}")
            return None
        module = type(self)(**{**self.settings, "stage": "pretrain"})
        module._artifact = self._artifact
        return PriorStage(module, self.stage1_epochs()[0])

    def setup(self, stage: str) -> None:
        """Stage 2 starts from the stage-1 prompts (before DDP wraps the module)."""
        if stage != "fit" or self.stage == "pretrain":
            return
        source = self.pretrained_prompts or self._artifact
        if source is None:
            epochs = self.stage1_epochs()
            source = self.artifact_path(self.trainer.datamodule, self.trainer, epochs)
        if not Path(source).exists() and self.pretrained_prompts is None:
            raise PVPArtifactError(
                f"PVP stage 2 found no stage-1 prompts for this configuration (looked for "
                f"{source}). Run `mlr-bench fit --method pvp` (stage both), or stage 1 first "
                "with `--method.stage pretrain --trainer.max_epochs <pretrain_epochs>`, or pass "
                "--method.pretrained_prompts PATH (artifact, .ckpt or run directory)."
            )
        prompts = load_prompts(source, self.class_names)
        self._note_stage1_budget(Path(source))
        for name, value in prompts.items():
            param = getattr(self, name)
            if value.shape != param.shape:
                raise PVPArtifactError(
                    f"{source}: {name} has shape {tuple(value.shape)}, this model expects "
                    f"{tuple(param.shape)} (classes × 3 × size × size)"
                )
            with torch.no_grad():
                param.copy_(value.to(param.device))

    def _note_stage1_budget(self, source: Path) -> None:
        """Stage 1's budget, from the artifact it saved (a cached stage 1 ran earlier: its
        budget is the one it was trained with), unless this process just metered it."""
        stages = getattr(self, "budget_stages", None) or {}
        if "pretrain" in stages or source.suffix != ".safetensors":
            return
        from safetensors import safe_open

        try:
            with safe_open(str(source), "pt") as f:
                recorded = json.loads((f.metadata() or {}).get("budget", "null"))
        except (OSError, ValueError):
            return
        if isinstance(recorded, dict):
            self.budget_stages = {"pretrain": {**recorded, "cached": True}, **stages}

    def on_fit_end(self) -> None:
        """Stage 1 saves its prompts: into the run directory and, under its key, the cache."""
        if self.stage != "pretrain":
            return
        trainer = self.trainer
        targets = [run_dir(trainer) / ARTIFACT_NAME]
        cached = self._artifact
        if cached is None and trainer.datamodule is not None:
            epochs = self.stage1_epochs(trainer.max_epochs)
            cached = self.artifact_path(trainer.datamodule, trainer, epochs)
        if cached is not None:
            targets.append(cached)
        if trainer.is_global_zero:
            tensors = {
                "pvp_global": self.pvp_global.detach().float().cpu().contiguous(),
                "pvp_local": self.pvp_local.detach().float().cpu().contiguous(),
            }
            budget = (getattr(self, "budget_stages", None) or {}).get("pretrain")
            metadata = {"classes": json.dumps(self.class_names), "budget": json.dumps(budget)}
            for target in targets:
                _save_atomic(tensors, target, metadata)
            print(f"PVP stage 1: prompts saved to {', '.join(str(t) for t in targets)}")
        trainer.strategy.barrier("pvp-stage-1-saved")

    # ---- encoders ------------------------------------------------------------------------
    def _autocast(self) -> Any:
        device = self.pvp_global.device
        if device.type != "cuda" or self.encode_dtype == "float32":
            return nullcontext()
        if self.encode_dtype == "auto":
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        else:
            dtype = getattr(torch, self.encode_dtype)
        return torch.autocast("cuda", dtype=dtype)

    def encode_pvps(self) -> tuple[Tensor, Tensor]:
        """Normalised PVP embeddings ``[C, D]`` (global, local): all 2C in one forward when
        both sets share a size; gradients flow back to the pixels."""
        pixels = [self.pvp_global, self.pvp_local]
        if self.channels_last and pixels[0].device.type == "cuda":
            pixels = [p.contiguous(memory_format=torch.channels_last) for p in pixels]
        with self._autocast():
            if pixels[0].shape == pixels[1].shape:
                both = self.backbone.encode_image(torch.cat(pixels))
                return both[: len(both) // 2], both[len(both) // 2 :]
            return self.backbone.encode_image(pixels[0]), self.backbone.encode_image(pixels[1])

    def on_fit_start(self) -> None:
        if self.channels_last and self.device.type == "cuda" and self.backbone.family == "resnet":
            self.backbone.clip.visual.to(memory_format=torch.channels_last)

    def class_prototypes(self) -> dict[str, Tensor]:
        """Normalised class vectors: PVPs (``pvp_g``, ``pvp_l``) and, after stage 1, the
        adapted text prompts (``text_g``, ``text_l``) and adapted PVPs."""
        pvp_g, pvp_l = self.encode_pvps()
        if self.stage == "pretrain":
            return {"pvp_g": pvp_g, "pvp_l": pvp_l}
        if self.prompts is None:
            raise RuntimeError("PVP needs class_names (linked from the datamodule)")
        return {
            "text_g": self.text_adapter(self.prompts(self.ctx_global)),
            "text_l": self.text_adapter(self.prompts(self.ctx_local)),
            "pvp_g": self.image_adapter(pvp_g),
            "pvp_l": self.image_adapter(pvp_l),
        }

    # ---- training ------------------------------------------------------------------------
    def _noisy(self, x: Tensor) -> Tensor:
        return F.normalize(x + self.noise_std * torch.randn_like(x), dim=-1)

    def _local(self, tokens: Tensor, protos: Tensor, scale: float, mask: Tensor | None) -> Tensor:
        return self.logit_scale * spatial_softmax_pool(tokens @ protos.T, scale, mask)

    def contrastive_temperature(self) -> float:
        raw = self.backbone.clip.logit_scale.detach().float()
        if self.contrastive_scale == "raw":
            return float(raw)
        if self.contrastive_scale == "exp":
            return float(raw.exp())
        return float(self.contrastive_scale)

    def losses(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """The stage's total loss on a batch of sentence features, and its named terms."""
        protos = self.class_prototypes()
        target, margin, scale = batch["target"], self.margin, self.logit_scale
        tokens, mask = self._noisy(batch["tokens"].float()), batch["mask"]
        if self.stage == "pretrain":
            sentence = self._noisy(batch["eot"].float())
            local = self._local(tokens, protos["pvp_l"], self.pvp_spatial_scale, mask)
            terms = {
                "global": ranking_loss(scale * sentence @ protos["pvp_g"].T, target, margin),
                "local": ranking_loss(local, target, margin),
            }
            return terms["global"] + self.pretrain_local_weight * terms["local"], terms
        sentence = self._noisy(self.text_adapter(batch["eot"].float()))
        logits = {
            "text_global": scale * sentence @ protos["text_g"].T,
            "text_local": self._local(tokens, protos["text_l"], self.text_spatial_scale, mask),
            "pvp_global": scale * sentence @ protos["pvp_g"].T,
            "pvp_local": self._local(tokens, protos["pvp_l"], self.pvp_spatial_scale, mask),
        }
        terms = {k: ranking_loss(v, target, margin) for k, v in logits.items()}
        terms["contrastive"] = self.contrastive_loss(protos["text_g"], protos["pvp_g"])
        total = sum(w * v for w, v in zip(self.loss_weights, terms.values(), strict=True))
        return total, terms

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss, terms = self.losses(batch)
        self.log_dict(
            {"train/loss": loss, **{f"train/loss_{k}": v for k, v in terms.items()}},
            batch_size=len(batch["target"]),
        )
        return loss

    def contrastive_loss(self, text: Tensor, pvp: Tensor) -> Tensor:
        """½ [CE_sum(s·T Pᵀ, I) + CE_sum(s·P Tᵀ, I)]: class c's text prompt ↔ its PVP."""
        s = self.contrastive_temperature()
        labels = torch.arange(len(text), device=text.device)
        t2p = F.cross_entropy(s * text @ pvp.T, labels, reduction="sum")
        p2t = F.cross_entropy(s * pvp @ text.T, labels, reduction="sum")
        return 0.5 * (t2p + p2t)

    # ---- inference -----------------------------------------------------------------------
    def eval_constants(self) -> dict[str, Tensor]:
        return self.class_prototypes()

    def score_features(self, batch: FeatureBatch) -> Tensor:
        """The equal-weight sum of :meth:`branch_logits` (the reference's inference)."""
        total: Tensor = sum(self.branch_logits(batch).values())  # left to right, as before
        return total

    def test_spatial_scales(self) -> tuple[float, float]:
        """(text, PVP) token-softmax scales at test: the training ones, swapped under the
        reference's ``swap_test_spatial_scales`` quirk."""
        scales = (self.text_spatial_scale, self.pvp_spatial_scale)
        return scales[::-1] if self.swap_test_spatial_scales else scales

    def branch_logits(self, batch: FeatureBatch) -> dict[str, Tensor]:
        """Each branch's ``[B, C]`` logits: after stage 1 ``text_global``, ``text_local``,
        ``pvp_global`` and ``pvp_local``; in stage 1 the two PVP branches alone (what it has
        learned). Kept apart so that a diagnosis can score each one on its own."""
        protos = self.current_eval_constants()
        pooled = batch["global_no_pos"] if self.global_pool == "no_pos" else batch["global"]
        pooled = pooled.float()
        dense = batch["dense"].float()
        if self.append_global_token:
            dense = torch.cat([dense, pooled.unsqueeze(1)], dim=1)
        text_scale, pvp_scale = self.test_spatial_scales()
        scale = self.logit_scale
        if self.stage == "pretrain":
            return {
                "pvp_global": scale * pooled @ protos["pvp_g"].T,
                "pvp_local": self._local(dense, protos["pvp_l"], pvp_scale, None),
            }
        adapted = self.image_adapter(pooled)
        return {
            "text_global": scale * adapted @ protos["text_g"].T,
            "text_local": self._local(dense, protos["text_l"], text_scale, None),
            "pvp_global": scale * adapted @ protos["pvp_g"].T,
            "pvp_local": self._local(dense, protos["pvp_l"], pvp_scale, None),
        }

    def configure_optimizers(self) -> dict[str, Any]:
        sgd = {"momentum": self.momentum, "weight_decay": self.weight_decay}
        pixels = [self.pvp_global, self.pvp_local]
        if self.stage == "pretrain":
            optimizer = torch.optim.SGD(pixels, lr=self.pretrain_lr, **sgd)
            warmup: float | list[float] = self.pretrain_warmup_lr
        else:
            adapters = [*self.text_adapter.parameters(), *self.image_adapter.parameters()]
            groups = [
                {"params": [self.ctx_global, self.ctx_local, *pixels], "lr": self.lr},
                {"params": adapters, "lr": self.adapter_lr},
            ]
            optimizer = torch.optim.SGD(groups, **sgd)
            warmup = [self.lr, self.adapter_warmup_lr]
        span = self.trainer.max_epochs
        if self.stage == "pretrain" and span not in (None, -1):
            span = self.stage1_epochs(span)[1]  # the full schedule, when stopped early
        schedule = warmup_cosine(optimizer, span, self.warmup_epochs, warmup)
        return {"optimizer": optimizer, "lr_scheduler": schedule}


def _save_atomic(tensors: dict[str, Tensor], path: Path, metadata: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, path)
