"""The one frozen CLIP wrapper every method uses (over open_clip).

Loading accepts an open_clip model name with a pretrained tag (``RN50`` + ``openai``; needs the
internet or a populated hub cache), a local weights file, ``local-dir:<dir>``, or one of the
bundled configs (``mlr-tiny-rn``, ``mlr-tiny-vit``) with ``pretrained=None`` for a deterministic
random model — what tests and offline smoke runs use.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import open_clip
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mlr_bench.errors import MLRBenchError

MODEL_CONFIG_DIR = Path(__file__).with_name("model_configs")
#: Seed of the weights of a model created with ``pretrained=None`` (random but reproducible).
RANDOM_INIT_SEED = 0


class BackboneLoadError(MLRBenchError, RuntimeError):
    """CLIP weights or config could not be found; the message says how to provide them."""


@cache
def register_bundled_configs() -> None:
    """Make mlr-bench's bundled architectures known to open_clip by name."""
    open_clip.add_model_config(MODEL_CONFIG_DIR)


def _is_local_file(pretrained: str) -> bool:
    return pretrained.endswith((".pt", ".pth", ".bin", ".safetensors")) or os.sep in pretrained


def _load_error(model: str, pretrained: str | None, exc: Exception) -> BackboneLoadError:
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0")
    where = " (HF_HUB_OFFLINE=1, so nothing is downloaded)" if offline else ""
    return BackboneLoadError(
        f"could not load CLIP '{model}' with pretrained='{pretrained}'{where}: "
        f"{type(exc).__name__}: {exc}. Provide weights with --method.pretrained /path/to/"
        "weights.safetensors (an open_clip state dict), --method.backbone local-dir:/dir "
        "(open_clip_config.json + open_clip_model.safetensors), or pre-populate the Hugging "
        "Face cache on a machine with internet access."
    )


def create_clip(model: str, pretrained: str | None) -> tuple[nn.Module, Callable, Callable]:
    """Build ``(clip_model, tokenizer, eval_preprocess)`` in eval mode, weights frozen."""
    register_bundled_configs()
    if pretrained in (None, "", "none", "random"):
        pretrained = None
    elif _is_local_file(pretrained) and not Path(pretrained).is_file():
        raise BackboneLoadError(f"CLIP weights file '{pretrained}' does not exist")
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_INIT_SEED)
            clip_model, _, preprocess = open_clip.create_model_and_transforms(
                model, pretrained=pretrained
            )
        tokenizer = open_clip.get_tokenizer(model)
    except (RuntimeError, OSError, ValueError) as exc:
        raise _load_error(model, pretrained, exc) from exc
    clip_model.eval()
    for p in clip_model.parameters():
        p.requires_grad_(False)
    return clip_model, tokenizer, preprocess


class CLIPBackbone(nn.Module):
    """A frozen CLIP: normalised image and text embeddings in the joint space."""

    def __init__(self, model: str = "RN50", pretrained: str | None = "openai") -> None:
        super().__init__()
        self.model_name = model
        self.pretrained = pretrained
        self.clip, self.tokenizer, self.preprocess = create_clip(model, pretrained)

    @property
    def device(self) -> torch.device:
        return next(self.clip.parameters()).device

    @property
    def logit_scale(self) -> Tensor:
        """CLIP's learned temperature, exponentiated (100 for OpenAI models)."""
        return self.clip.logit_scale.exp()

    def train(self, mode: bool = True) -> CLIPBackbone:
        """Stay in eval mode: the encoders are frozen (no dropout, no BN statistics updates)."""
        return super().train(False)

    def encode_image(self, images: Tensor) -> Tensor:
        """L2-normalised global image embeddings ``[B, D]``."""
        return F.normalize(self.clip.encode_image(images).float(), dim=-1)

    def tokenize(self, texts: Sequence[str]) -> Tensor:
        return self.tokenizer(list(texts)).to(self.device)

    def encode_text(self, texts: Sequence[str], batch_size: int = 256) -> Tensor:
        """L2-normalised text (EOT) embeddings ``[N, D]``, encoded in batches."""
        chunks = [
            self.clip.encode_text(self.tokenize(texts[i : i + batch_size])).float()
            for i in range(0, len(texts), batch_size)
        ]
        return F.normalize(torch.cat(chunks), dim=-1)

    def describe(self) -> dict[str, Any]:
        return {"model": self.model_name, "pretrained": self.pretrained}
