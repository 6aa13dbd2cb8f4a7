"""The CoOp-style prompt path, written once for TaI-DPT, PVP and T2I-PAL.

A prompt for class c is ``[SOS] ctx_1..ctx_n <class tokens> . [EOS]`` where the context vectors
are learnable (generic: one set shared by all classes; class-specific: one set per class) and
everything else is CLIP's own frozen token embedding. The class tokens may also sit at the
front or in the middle of the context.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from mlr_bench.clip.backbone import CLIPBackbone

ClassPosition = Literal["end", "middle", "front"]
#: Placeholder word whose token positions the context vectors replace (CoOp's convention).
PLACEHOLDER = "X"


def init_context(
    backbone: CLIPBackbone,
    n_ctx: int,
    init_text: str | None = None,
    num_classes: int | None = None,
    std: float = 0.02,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Initial context vectors ``[n_ctx, W]`` (or ``[C, n_ctx, W]`` when ``num_classes`` is set).

    With ``init_text`` (e.g. "a photo of a") the vectors are that text's token embeddings, so the
    untrained prompt equals the hand-written one; otherwise N(0, std²) as in CoOp/TaI-DPT.
    """
    width = backbone.text_width
    if init_text is not None:
        ids = backbone.tokenize([init_text])[0]
        n_tokens = int(ids.argmax()) - 1  # tokens between SOS and EOT
        if n_tokens != n_ctx:
            raise ValueError(f"init_text {init_text!r} has {n_tokens} tokens, n_ctx is {n_ctx}")
        with torch.no_grad():
            ctx = backbone.clip.token_embedding(ids[1 : 1 + n_ctx]).float().clone()
    else:
        ctx = torch.randn(n_ctx, width, generator=generator) * std
    if num_classes is not None:
        ctx = ctx.unsqueeze(0).repeat(num_classes, 1, 1)
    return ctx


class PromptEncoder(nn.Module):
    """Encodes class prompts from context vectors through the frozen text transformer.

    The frozen token embeddings of every class prompt are precomputed once (non-persistent
    buffers, so checkpoints stay small); ``forward(ctx)`` splices the context in and returns the
    normalised EOT embeddings ``[C, D]`` — gradients flow to ``ctx``.
    """

    def __init__(
        self,
        backbone: CLIPBackbone,
        class_names: Sequence[str],
        n_ctx: int,
        position: ClassPosition = "end",
        suffix: str = ".",
    ) -> None:
        super().__init__()
        if position not in ("end", "middle", "front"):
            raise ValueError(f"class token position must be end, middle or front, got {position!r}")
        self._backbone = [backbone]  # a plain reference: the backbone is not a child module here
        self.n_ctx = n_ctx
        self.position = position
        names = [name.replace("_", " ") for name in class_names]
        placeholder = " ".join([PLACEHOLDER] * n_ctx)
        ids = backbone.tokenize([f"{placeholder} {name}{suffix}" for name in names])
        self.name_lengths = [len(backbone.tokenizer.encode(name)) for name in names]
        with torch.no_grad():
            embedded = backbone.clip.token_embedding(ids).float()
        self.register_buffer("token_ids", ids, persistent=False)
        self.register_buffer("embedded", embedded, persistent=False)

    @property
    def backbone(self) -> CLIPBackbone:
        return self._backbone[0]

    def splice(self, ctx: Tensor) -> Tensor:
        """Token embeddings ``[C, L, W]`` with the context vectors in place."""
        num_classes = self.embedded.shape[0]
        if ctx.dim() == 2:
            ctx = ctx.unsqueeze(0).expand(num_classes, -1, -1)
        if ctx.shape[:2] != (num_classes, self.n_ctx):
            raise ValueError(
                f"context of shape {tuple(ctx.shape)}; expected [{self.n_ctx}, W] or "
                f"[{num_classes}, {self.n_ctx}, W]"
            )
        ctx = ctx.to(self.embedded.dtype)
        sos = self.embedded[:, :1]
        rest = self.embedded[:, 1 + self.n_ctx :]  # class tokens, suffix, EOS, padding
        if self.position == "end":
            return torch.cat([sos, ctx, rest], dim=1)
        rows = []
        half = self.n_ctx // 2
        for c, n_name in enumerate(self.name_lengths):
            name, after = rest[c, :n_name], rest[c, n_name:]
            if self.position == "front":
                parts = [sos[c], name, ctx[c], after]
            else:
                parts = [sos[c], ctx[c, :half], name, ctx[c, half:], after]
            rows.append(torch.cat(parts, dim=0))
        return torch.stack(rows)

    def forward(self, ctx: Tensor, return_tokens: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        eot_index = self.token_ids.argmax(dim=-1)  # EOT keeps its position in every layout
        eot, tokens = self.backbone.encode_embedded_text(self.splice(ctx), eot_index)
        return (eot, tokens) if return_tokens else eot


TemplateSet = Literal["single", "ensemble"]


@torch.no_grad()
def hand_prompt_embeddings(
    backbone: CLIPBackbone,
    class_names: Sequence[str],
    templates: TemplateSet = "ensemble",
    prompt: str = "a photo of a {}.",
) -> Tensor:
    """``[C, D]`` normalised class embeddings from hand-written prompts.

    "single" encodes ``prompt``; "ensemble" averages CLIP's 80 ImageNet templates (the
    zero-shot ensemble, also CoMC's mapping bank), then re-normalises.
    """
    from open_clip import OPENAI_IMAGENET_TEMPLATES

    if "{}" not in prompt:
        raise ValueError(f"prompt must contain '{{}}' for the class name, got {prompt!r}")
    fill = list(OPENAI_IMAGENET_TEMPLATES) if templates == "ensemble" else [prompt.format]
    names = [name.replace("_", " ") for name in class_names]
    texts = [t(name) for name in names for t in fill]
    emb = backbone.encode_text(texts).view(len(names), len(fill), -1)
    return torch.nn.functional.normalize(emb.mean(1), dim=-1)


def spatial_softmax_pool(similarity: Tensor, scale: float, mask: Tensor | None = None) -> Tensor:
    """Class-wise attention over locations (or tokens): ``sum_l softmax_l(scale*s) * s``.

    ``similarity`` is ``[B, L, C]`` (cosines); ``mask`` ``[B, L]`` marks valid positions
    (padding tokens get no weight). Returns ``[B, C]``. TaI-DPT's local branch, on caption
    tokens in training and on dense image features at test time.
    """
    logits = scale * similarity
    if mask is not None:
        logits = logits.masked_fill(~mask.unsqueeze(-1), float("-inf"))
    weights = logits.softmax(dim=1)
    return (weights * similarity).sum(dim=1)
