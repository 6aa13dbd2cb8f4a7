"""A ViT forward that exposes every layer's attention and accepts per-sample attention masks.

Training-free methods that work on CLIP's patch tokens (TagCLIP and its CLIP-ES / CLIP Surgery
ancestors) need what ``open_clip``'s fused attention hides: the head-averaged attention map of
each layer, a last layer whose tokens attend only to themselves, and a class token that may
look at part of the image only. This module replays open_clip's ``VisionTransformer`` (same
modules, same weights) with those hooks; with no mask it equals ``encode_image`` to fp32
rounding (tested).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mlr_bench.clip.backbone import vit_embed


@dataclass(frozen=True)
class ViTPass:
    """Every token of a ViT pass, projected into the joint space (not normalised), and the
    head-averaged attention of each layer *before* any mask was added (as TagCLIP reads it)."""

    tokens: Tensor  # [B, 1 + h*w, D]: class token first, then the patch grid row-major
    attention: Tensor | None  # [layers, B, 1 + h*w, 1 + h*w], rows sum to 1
    grid: tuple[int, int]


def vit_layers(visual: nn.Module) -> int:
    """Number of residual attention blocks of an open_clip ``VisionTransformer``."""
    return len(visual.transformer.resblocks)


def vit_pass(
    visual: nn.Module,
    images: Tensor,
    *,
    self_only_layers: tuple[int, ...] = (),
    self_only_bias: float = -100.0,
    attn_bias: Tensor | None = None,
    pos_interpolation: str = "bicubic",
    keep_attention: bool = True,
) -> ViTPass:
    """Run ``images`` ``[B, 3, H, W]`` through an open_clip ``VisionTransformer``.

    Args:
        self_only_layers: layers in which every token attends to itself only: ``self_only_bias``
            is added off the diagonal (TagCLIP's last layer: -100).
        attn_bias: additive attention bias ``[B, 1 + h*w, 1 + h*w]`` (or broadcastable) used in
            every layer, e.g. to let the class token see a region only.
        pos_interpolation: how the positional embedding is resized to a grid other than the
            native one ("bicubic" as open_clip, "bilinear" as TagCLIP).
        keep_attention: also return every layer's head-averaged attention map.
    """
    x, grid = vit_embed(visual, images, pos_interpolation)
    n = x.shape[1]
    self_only = torch.full((n, n), self_only_bias, dtype=x.dtype, device=x.device)
    self_only.fill_diagonal_(0.0)
    maps = []
    for i, block in enumerate(visual.transformer.resblocks):
        bias = self_only if i in self_only_layers else attn_bias
        out, weights = _attention(block, block.ln_1(x), bias, keep_attention)
        x = x + block.ls_1(out)
        x = x + block.ls_2(block.mlp(block.ln_2(x)))
        if keep_attention:
            maps.append(weights)
    tokens = visual.ln_post(x)
    if visual.proj is not None:
        tokens = tokens @ visual.proj
    return ViTPass(tokens, torch.stack(maps) if keep_attention else None, grid)


def _attention(
    block: nn.Module, x: Tensor, bias: Tensor | None, keep: bool
) -> tuple[Tensor, Tensor | None]:
    """Multi-head self-attention of ``block.attn`` (an ``nn.MultiheadAttention``) on ``x``
    ``[B, L, C]``; returns (output, head-averaged weights computed without ``bias``)."""
    attn = block.attn
    b, length, width = x.shape
    heads = attn.num_heads
    q, k, v = F.linear(x, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    q, k, v = (t.reshape(b, length, heads, width // heads).transpose(1, 2) for t in (q, k, v))
    scores = (q * (1.0 / math.sqrt(width // heads))) @ k.transpose(-2, -1)  # [B, h, L, L]
    plain = scores.softmax(dim=-1) if (keep or bias is None) else None
    if bias is None:
        weights = plain
    else:
        bias = bias.to(scores.dtype)
        weights = (scores + (bias[:, None] if bias.dim() == 3 else bias)).softmax(dim=-1)
    out = (weights @ v).transpose(1, 2).reshape(b, length, width)
    out = attn.out_proj(out)
    return out, plain.mean(dim=1) if keep else None
