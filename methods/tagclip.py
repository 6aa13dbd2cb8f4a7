"""TagCLIP (Lin et al., AAAI 2024): training-free local-to-global multi-label scores from a
frozen CLIP ViT.

Reproduces ``classify.py`` of the reference code (github.com/linyq2117/TagCLIP) step by step;
docs/methods/tagclip.md maps every step and constant to its file and line:

1. *coarse*: every patch token (the last layer attending to itself only) is classified by a
   softmax over the classes plus background words;
2. *refine*: the patch scores are propagated by the mean attention of the late layers, kept
   where enough layers agree (attention "votes");
3. *box refine*: per class, propagation only from the boxes around its high-scoring regions;
4. *local score*: the max over patches;
5. *class-wise re-identification*: per candidate class, the box around its region is cropped,
   resized to CLIP's input size and classified by the class token restricted to the region;
   the crop's probability is averaged with the local score.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torch.utils.data import default_collate
from torchvision import transforms as T

from mlr_bench.batch import EvalBatch
from mlr_bench.clip import CLIPBackbone
from mlr_bench.clip.backbone import BackboneLoadError
from mlr_bench.clip.vit_attention import vit_layers, vit_pass
from mlr_bench.method import MLRMethod
from mlr_bench.methods._tagclip_lists import (
    COCO_BACKGROUND,
    TAGCLIP_TEMPLATES,
    VOC_BACKGROUND,
    detect_reference_dataset,
    reference_names,
)
from mlr_bench.transforms import CLIP_MEAN, CLIP_STD, to_rgb


class RoundUpResize:
    """Resize a PIL image to its own size rounded up to a multiple of ``multiple`` (bicubic):
    TagCLIP's native-resolution input (``classify.py`` l.144, ``utils.py`` l.68-77)."""

    def __init__(self, multiple: int) -> None:
        self.multiple = multiple

    def __call__(self, image: Image.Image) -> Image.Image:
        w, h = image.size
        m = self.multiple
        size = (math.ceil(h / m) * m, math.ceil(w / m) * m)
        return T.functional.resize(image, list(size), interpolation=T.InterpolationMode.BICUBIC)


def collate_image_list(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Collate evaluation samples whose images differ in size: images stay a list."""
    rest = default_collate([{k: v for k, v in s.items() if k != "image"} for s in samples])
    rest["image"] = [s["image"] for s in samples]
    return rest


@dataclass(frozen=True)
class PatchScores:
    """Steps 1-3 for one image; each ``[h*w, C + background]`` (classes first)."""

    coarse: Tensor  # step 1: softmax over classes of each patch token
    propagated: Tensor  # step 2: coarse scores propagated by the voted attention
    refined: Tensor  # step 3: propagation from each class's boxes only
    grid: tuple[int, int]


class TagCLIP(MLRMethod):
    """TagCLIP: no training; patch-level classification refined by attention and crops."""

    trainer_overrides: ClassVar[Mapping[str, Any]] = {"max_epochs": 1, "log_every_n_steps": 1}
    image_towers: ClassVar[frozenset[str]] = frozenset({"vit"})
    #: Its own preprocessing resizes without a crop (published numbers are matched on it).
    eval_center_crop: ClassVar[bool] = False

    def __init__(
        self,
        class_names: Sequence[str] | None = None,
        backbone: str = "world-vit",
        pretrained: str | None = "bundled",
        input_size: int | None = None,
        crop_size: int | None = None,
        templates: Literal["tagclip", "single"] = "tagclip",
        prompt: str = "a photo of a {}.",
        prompt_names: Sequence[str] | Literal["reference"] | None = None,
        background: Literal["auto"] | Sequence[str] = "auto",
        refine_layers: tuple[int, int] | None = None,
        vote_min_layers: int | None = None,
        self_attention_bias: float = -100.0,
        crop_candidate_threshold: float = 0.5,
        crop_mask_threshold: float = 0.5,
        crop_weight: float = 0.5,
        crop_outside_bias: float = -1000.0,
        pos_interpolation: Literal["bilinear", "bicubic"] = "bilinear",
        stop_at_degenerate_box: bool = True,
        reference_box_clipping: bool = True,
        crop_batch_size: int = 64,
    ) -> None:
        """
        Args:
            class_names: linked from the datamodule by the CLI.
            backbone: an open_clip ViT (reference: ``ViT-B-16-quickgelu`` + ``openai``); the
                default ``world-vit`` micro-CLIP runs offline.
            pretrained: open_clip tag, weights file, ``bundled`` or None (random init).
            input_size: None = each image at its own size rounded up to the patch size (the
                reference); an int resizes every image to that square.
            crop_size: side the re-identification crops are resized to; None = CLIP's native
                input size (reference: 224 for ViT-B/16).
            templates: "tagclip" = the reference's 85 templates averaged; "single" = ``prompt``.
            prompt: the single template (``{}`` = class name).
            prompt_names: names to put in prompts instead of ``class_names`` (same order);
                "reference" = the reference's spellings (VOC's and COCO's classes only).
            background: words scored as extra classes and never reported. "auto" = the
                reference's VOC or COCO list when the classes are VOC's or COCO's, else none.
            refine_layers: ``[first, last)`` layers whose attention propagates the patch scores;
                None = ``(round(2L/3), L-1)``: layers 8-10 of ViT-B/16's 12, the reference.
            vote_min_layers: a patch pair keeps its attention when at least this many layers
                attend above their mean; None = ``round(L/3)`` (4 of 12, the reference).
            self_attention_bias: added off the diagonal in the last layer (tokens see
                themselves only).
            crop_candidate_threshold: classes whose local score exceeds min + t·(max-min) of
                all refined patch scores get a crop (0.5; the reference uses 0.1 on COCO-Stuff).
            crop_mask_threshold: a class's region is where its min-max normalised map > t.
            crop_weight: weight of the crop's probability in the final score.
            crop_outside_bias: attention bias of the class token towards patches outside the
                region in the crop pass.
            pos_interpolation: resize of the positional embedding for non-native grids.
            stop_at_degenerate_box: as the reference, stop re-identifying the remaining
                candidates of an image at the first empty box (False: skip that class only).
            reference_box_clipping: as the reference, boxes never reach the last patch row or
                column (False: boxes may touch the border).
            crop_batch_size: crops encoded per forward pass (speed only).
        """
        super().__init__(class_names)
        self.save_hyperparameters()
        if templates == "single" and "{}" not in prompt:
            raise ValueError(f"prompt must contain '{{}}' for the class name, got {prompt!r}")
        if not 0.0 <= crop_weight <= 1.0:
            raise ValueError(f"crop_weight must be in [0, 1], got {crop_weight}")
        self.backbone = CLIPBackbone(backbone, pretrained)
        if self.backbone.family != "vit":
            raise BackboneLoadError(
                f"TagCLIP needs a ViT image tower (its patch tokens and attention maps); "
                f"'{backbone}' is a {self.backbone.family}. Use --method.backbone world-vit "
                "offline, or ViT-B-16 with --method.pretrained openai"
            )
        visual = self.backbone.clip.visual
        self.layers = vit_layers(visual)
        self.patch = int(visual.conv1.kernel_size[0])
        default_first = max(0, min(round(2 * self.layers / 3), self.layers - 2))
        self.refine_layers = tuple(refine_layers or (default_first, self.layers - 1))
        self.vote_min_layers = vote_min_layers or max(1, round(self.layers / 3))
        if not 0 <= self.refine_layers[0] < self.refine_layers[1] <= self.layers:
            raise ValueError(
                f"refine_layers {self.refine_layers} must satisfy 0 <= first < last <= "
                f"{self.layers} (the ViT's layers)"
            )
        self.input_size = input_size
        self.crop_size = crop_size or self.backbone.image_size
        for name, size in (("input_size", input_size), ("crop_size", self.crop_size)):
            if size is not None and (size <= 0 or size % self.patch):
                raise ValueError(f"{name} must be a positive multiple of the patch size "
                                 f"{self.patch}, got {size}")  # fmt: skip
        self._text: Tensor | None = None

    # ---- inputs ------------------------------------------------------------------------------
    def eval_transform(self) -> Callable[[Any], Tensor]:
        size = RoundUpResize(self.patch) if self.input_size is None else T.Resize(
            (self.input_size, self.input_size), interpolation=T.InterpolationMode.BICUBIC
        )  # fmt: skip
        return T.Compose([T.Lambda(to_rgb), size, T.ToTensor(), T.Normalize(CLIP_MEAN, CLIP_STD)])

    def eval_collate(self) -> Callable[[list[Any]], Any] | None:
        """Native-size images differ in size: batches carry them as a list."""
        return collate_image_list if self.input_size is None else None

    def background_words(self) -> list[str]:
        background = self.hparams.background
        if background != "auto":
            return list(background)
        dataset = detect_reference_dataset(self.class_names)
        table = {"voc": VOC_BACKGROUND, "coco": COCO_BACKGROUND}.get(dataset or "", [])
        keys = {n.lower() for n in self.class_names}
        return [w for w in table if w not in keys]

    def text_embeddings(self) -> Tensor:
        """``[C + background, D]`` unit class embeddings, averaged over the templates."""
        if self._text is None or self._text.device != self.device:
            names = self.hparams.prompt_names or self.class_names
            if names == "reference":
                dataset = detect_reference_dataset(self.class_names)
                if dataset is None:
                    raise ValueError(
                        "prompt_names='reference' needs VOC 2007's or COCO's classes in their "
                        f"order; got {len(self.class_names)} classes starting "
                        f"{self.class_names[:3]}"
                    )
                names = reference_names(dataset)
            names = list(names)
            if len(names) != self.num_classes:
                raise ValueError(
                    f"prompt_names has {len(names)} names for {self.num_classes} classes"
                )
            names = [n.replace("_", " ") for n in names] + self.background_words()
            fill = TAGCLIP_TEMPLATES if self.hparams.templates == "tagclip" else [self.prompt]
            texts = [t.format(n) for n in names for t in fill]
            emb = self.backbone.encode_text(texts).view(len(names), len(fill), -1)
            self._text = F.normalize(emb.mean(1), dim=-1)
        return self._text

    @property
    def prompt(self) -> str:
        return self.hparams.prompt

    # ---- scoring -----------------------------------------------------------------------------
    @torch.no_grad()
    def score(self, batch: EvalBatch) -> Tensor:
        images = batch["image"]
        images = list(images) if isinstance(images, list) else list(images.unbind(0))
        text = self.text_embeddings()
        scores: list[PatchScores] = [None] * len(images)  # type: ignore[list-item]
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, image in enumerate(images):
            by_shape.setdefault(tuple(image.shape), []).append(i)
        for idx in by_shape.values():  # same-size images share one encoder pass
            group = self.patch_scores(torch.stack([images[i] for i in idx]), text)
            for i, ps in zip(idx, group, strict=True):
                scores[i] = ps
        local = torch.stack([self.local_scores(ps) for ps in scores])
        crops = [self.crop_boxes(ps, loc) for ps, loc in zip(scores, local, strict=True)]
        return self.reidentify(images, crops, local, text)

    def local_scores(self, scores: PatchScores) -> Tensor:
        """Step 4: each class's best patch ``[C]`` (background words dropped)."""
        return scores.refined.max(dim=0).values[: self.num_classes]

    def patch_scores(self, images: Tensor, text: Tensor) -> list[PatchScores]:
        """Steps 1-3 for same-size images ``[B, 3, H, W]``."""
        out = vit_pass(
            self.backbone.clip.visual,
            images,
            self_only_layers=(self.layers - 1,),
            self_only_bias=self.hparams.self_attention_bias,
            pos_interpolation=self.hparams.pos_interpolation,
        )
        scale = self.backbone.logit_scale
        patches = F.normalize(out.tokens[:, 1:].float(), dim=-1)
        coarse = (scale * patches @ text.T).softmax(dim=-1)  # [B, N, K]
        attn = out.attention[:, :, 1:, 1:].float()  # [L, B, N, N]
        above = attn > attn.flatten(2).mean(dim=-1)[..., None, None]  # per layer, as reference
        votes = above.sum(dim=0) >= self.vote_min_layers  # [B, N, N]
        first, last = self.refine_layers
        weights = attn[first:last].mean(dim=0) * votes  # [B, N, N]
        results = []
        for b in range(images.shape[0]):
            propagated = weights[b] @ coarse[b]
            refined = self.box_refine(coarse[b], propagated, weights[b], out.grid)
            results.append(PatchScores(coarse[b], propagated, refined, out.grid))
        return results

    def box_refine(
        self, coarse: Tensor, refined: Tensor, weights: Tensor, grid: tuple[int, int]
    ) -> Tensor:
        """Step 3 (``mask_attn``): a class's scores propagate only from the boxes around its
        above-mean regions (one box per 8-connected region)."""
        from scipy import ndimage

        h, w = grid
        candidate = (refined.max(dim=0).values > 0).cpu().numpy()
        source = np.zeros(tuple(refined.shape), dtype=np.float32)
        clip = self.hparams.reference_box_clipping
        for c in np.flatnonzero(candidate):
            # per class on a contiguous vector, as the reference: the threshold is truncated to
            # an integer, so even the mean's summation order can move a box
            m = refined[:, c] - refined[:, c].min()
            if m.max() <= 0:
                continue  # a flat map has no region (the reference fails on it)
            m = m / m.max()
            levels = (m.cpu().numpy() * 255).astype(np.uint8).reshape(h, w)
            cut = int(m.mean() * int(levels.max()))
            labels, count = ndimage.label(levels > cut, structure=np.ones((3, 3)))
            box = np.zeros((h, w), dtype=np.float32)
            for ys, xs in ndimage.find_objects(labels)[:count]:
                y1 = min(ys.stop, h - 1) if clip else ys.stop
                x1 = min(xs.stop, w - 1) if clip else xs.stop
                box[ys.start : y1, xs.start : x1] = 1
            source[:, c] = box.reshape(-1)
        mask = torch.from_numpy(source).to(coarse.device)
        boxed = weights @ (coarse * mask)
        keep = torch.from_numpy(candidate).to(coarse.device)
        return torch.where(keep[None, :], boxed, refined)

    def crop_boxes(
        self, scores: PatchScores, local: Tensor
    ) -> list[tuple[int, tuple[int, int, int, int], Tensor]]:
        """Step 5's candidates (``cwr``): (class, patch box y1, y2, x1, x2, region mask)."""
        refined, (h, w) = scores.refined, scores.grid
        lo, hi = refined.min(), refined.max()
        cut = lo + self.hparams.crop_candidate_threshold * (hi - lo)
        clip = self.hparams.reference_box_clipping
        boxes = []
        for c in torch.nonzero(local > cut).flatten().tolist():
            m = refined[:, c] - refined[:, c].min()
            region = (m / m.max() > self.hparams.crop_mask_threshold).reshape(h, w)
            rows, cols = torch.nonzero(region.any(dim=1)), torch.nonzero(region.any(dim=0))
            if len(rows):
                y1, y2, x1, x2 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
            else:
                y1 = y2 = x1 = x2 = 0
            if clip:
                y2, x2 = min(y2, h - 1), min(x2, w - 1)
            if x1 == x2 or y1 == y2:
                if self.hparams.stop_at_degenerate_box:
                    break
                continue
            boxes.append((c, (y1, y2, x1, x2), region[y1:y2, x1:x2]))
        return boxes

    def reidentify(
        self,
        images: list[Tensor],
        crops: list[list[tuple[int, tuple[int, int, int, int], Tensor]]],
        local: Tensor,
        text: Tensor,
    ) -> Tensor:
        """Step 5: the class token of each crop, restricted to the class's region, votes."""
        size, p = self.crop_size, self.patch
        side = size // p
        jobs = [(i, c, box, region) for i, image_crops in enumerate(crops)
                for c, box, region in image_crops]  # fmt: skip
        final = local.clone()
        scale = self.backbone.logit_scale
        weight = self.hparams.crop_weight
        for start in range(0, len(jobs), self.hparams.crop_batch_size):
            chunk = jobs[start : start + self.hparams.crop_batch_size]
            pixels, bias = [], []
            for i, _, (y1, y2, x1, x2), region in chunk:
                cut = images[i][None, :, y1 * p : y2 * p, x1 * p : x2 * p]
                pixels.append(F.interpolate(cut, size=(size, size), mode="bilinear",
                                            align_corners=False))  # fmt: skip
                keep = F.interpolate(region[None, None].float(), size=(side, side),
                                     mode="nearest").reshape(-1).bool()  # fmt: skip
                b = torch.zeros(side * side + 1, side * side + 1, device=keep.device)
                b[0, 1:][~keep] = self.hparams.crop_outside_bias
                bias.append(b)
            out = vit_pass(
                self.backbone.clip.visual,
                torch.cat(pixels),
                attn_bias=torch.stack(bias),
                pos_interpolation=self.hparams.pos_interpolation,
                keep_attention=False,
            )
            cls = F.normalize(out.tokens[:, 0].float(), dim=-1)
            probs = (scale * cls @ text.T).softmax(dim=-1)
            for row, (i, c, _, _) in enumerate(chunk):
                final[i, c] = (1 - weight) * local[i, c] + weight * probs[row, c]
        return final

    def training_step(self, batch: Any, batch_idx: int) -> None:
        """Nothing to learn: fit only runs validation."""
        return None

    def configure_optimizers(self) -> None:
        return None
