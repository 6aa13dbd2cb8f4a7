"""The one frozen CLIP wrapper every method uses (over open_clip).

Loading accepts an open_clip model name with a pretrained tag (``RN50`` + ``openai``; needs the
internet or a populated hub cache), a local weights file, ``local-dir:<dir>``, or one of the
bundled configs (``mlr-tiny-rn``, ``mlr-tiny-vit``) with ``pretrained=None`` for a deterministic
random model — what tests and offline smoke runs use.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal

import open_clip
import torch
import torch.nn.functional as F
from open_clip.modified_resnet import ModifiedResNet
from open_clip.transformer import VisionTransformer
from torch import Tensor, nn

from mlr_bench.errors import MLRBenchError

MODEL_CONFIG_DIR = Path(__file__).with_name("model_configs")
BUNDLED_WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "world" / "weights"
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


#: Seconds to wait for a TCP connection to the weights' host before treating it as unreachable
#: (open_clip's downloads otherwise spend about a minute in retries before failing).
HUB_PROBE_TIMEOUT_S = 3.0
#: A weights file of any suffix is checked by its content; these start one that is named well.
_WEIGHTS_EXPECTED = (
    "an open_clip state dict as .safetensors, or a PyTorch state dict (.pt/.pth/.bin)"
)


def _hub_offline_configured() -> bool:
    """HF_HUB_OFFLINE as the hub library sees it (it reads the variable once, at import)."""
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() not in ("", "0", "false", "no")
    return env or bool(constants.HF_HUB_OFFLINE)


def _load_error(
    model: str, pretrained: str | None, exc: Exception, where: str | None = None
) -> BackboneLoadError:
    if where is None:
        offline = _hub_offline_configured()
        where = " (HF_HUB_OFFLINE=1, so nothing is downloaded)" if offline else ""
    return BackboneLoadError(
        f"could not load CLIP '{model}' with pretrained='{pretrained}'{where}: "
        f"{type(exc).__name__}: {exc}. Provide weights with --method.pretrained /path/to/"
        "weights.safetensors (an open_clip state dict), --method.backbone local-dir:/dir "
        "(open_clip_config.json + open_clip_model.safetensors), or pre-populate the Hugging "
        "Face cache on a machine with internet access."
    )


def bundled_weights(model: str) -> Path:
    """Path of the weights shipped inside the package for a bundled model (``world``)."""
    path = BUNDLED_WEIGHTS_DIR / f"{model}.safetensors"
    if not path.is_file():
        raise BackboneLoadError(
            f"no bundled weights for '{model}' ({path} is missing); bundled weights exist for: "
            f"{', '.join(sorted(p.stem for p in BUNDLED_WEIGHTS_DIR.glob('*.safetensors')))}"
        )
    return path


def check_weights_file(pretrained: str, model: str) -> Path:
    """The local weights file behind ``pretrained``, checked by content before open_clip reads
    it: a text file or a truncated download then fails with one message naming the file
    instead of an error from deep inside a loader ("pop from empty list", "header too
    large")."""
    path = Path(pretrained).expanduser()
    if not path.exists():
        raise BackboneLoadError(f"CLIP weights file '{pretrained}' does not exist")
    if not path.is_file():
        raise BackboneLoadError(
            f"CLIP weights '{pretrained}' is a directory; for a folder with "
            "open_clip_config.json use --method.backbone local-dir:<dir>, else pass the file"
        )
    try:
        with path.open("rb") as f:
            head = f.read(9)
    except OSError as exc:
        raise BackboneLoadError(
            f"CLIP weights file '{pretrained}' is not readable: {exc}"
        ) from None
    header_len = int.from_bytes(head[:8], "little") if len(head) >= 8 else -1
    looks_safetensors = 0 < header_len < 100_000_000 and head[8:9] == b"{"
    if path.suffix == ".safetensors" or looks_safetensors:
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), "pt") as f:
                if not list(f.keys()):
                    raise ValueError("it holds no tensors")
        except (SafetensorError, OSError, ValueError) as exc:
            detail = " ".join(str(exc).split())
            raise BackboneLoadError(
                f"CLIP weights file '{pretrained}' is not a valid safetensors file ({detail}); "
                f"expected {_WEIGHTS_EXPECTED} for CLIP '{model}'"
            ) from None
        return path
    if not (head[:4] == b"PK\x03\x04" or head[:1] == b"\x80"):  # torch.save: zip or pickle
        raise BackboneLoadError(
            f"CLIP weights file '{pretrained}' is not a weights file (neither safetensors nor "
            f"a PyTorch file); expected {_WEIGHTS_EXPECTED} for CLIP '{model}'"
        )
    return path


def _weights_url(pretrained_cfg: dict[str, Any]) -> str | None:
    """The URL open_clip would download ``pretrained_cfg``'s weights from; None when they need
    no download (a file, or an OpenAI URL already in open_clip's cache)."""
    from huggingface_hub import constants

    if pretrained_cfg.get("file"):
        return None
    if pretrained_cfg.get("hf_hub") and open_clip.pretrained.has_hf_hub():
        return constants.ENDPOINT
    url = pretrained_cfg.get("url")
    if not url or (Path("~/.cache/clip").expanduser() / os.path.basename(url)).is_file():
        return None
    return url


def hub_reachable(url: str, timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """Whether ``url``'s server answers an HTTP HEAD within about ``timeout`` seconds (through
    the configured proxy, if any). A TCP connect alone is not enough: sandboxes and captive
    networks accept connections that then never answer."""
    import http.client
    import urllib.parse
    import urllib.request

    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    https = parts.scheme == "https"
    port = parts.port or (443 if https else 80)
    conn_cls = http.client.HTTPSConnection if https else http.client.HTTPConnection
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        via = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        conn = conn_cls(via.hostname or "", via.port or 80, timeout=timeout)
        conn.set_tunnel(host, port)
    else:
        conn = conn_cls(host, port, timeout=timeout)
    try:
        conn.request("HEAD", "/")
        conn.getresponse()
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()
    return True


@contextmanager
def _hub_offline() -> Iterator[None]:
    """Let the hub library answer from its cache only (what HF_HUB_OFFLINE=1 does), for one
    load: cached weights still load, missing ones fail at once instead of retrying."""
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def _unreachable_hub_guard(model: str, pretrained: str) -> Any:
    """A context for loading tag ``pretrained``: cache-only when its host does not answer
    (then weights missing from the cache fail in seconds, with the how-to message)."""
    if _hub_offline_configured():
        return nullcontext()
    cfg = open_clip.get_pretrained_cfg(model, pretrained)
    url = _weights_url(cfg) if cfg else None
    if url is None or hub_reachable(url):
        return nullcontext()
    where = (
        f" ({url} could not be reached within {HUB_PROBE_TIMEOUT_S:g} s, and the weights are "
        "not in the local cache)"
    )
    if not cfg.get("hf_hub") or not open_clip.pretrained.has_hf_hub():
        raise _load_error(model, pretrained, ConnectionError("host unreachable"), where)
    with _hub_offline():
        try:  # a cache lookup only: fail before building the model
            open_clip.pretrained.download_pretrained(cfg)
        except Exception as exc:  # open_clip wraps every hub error
            raise _load_error(model, pretrained, exc, where) from None
    return _hub_offline()


def tag_wants_quick_gelu(model: str, pretrained: str | None) -> bool:
    """Whether a pretrained *tag* was trained with QuickGELU (all OpenAI CLIP weights were).

    open_clip's plain ``RN50``/``ViT-B-16`` configs use GELU and only warn on the mismatch, which
    would silently run OpenAI weights with the wrong activation; for local weight files, pick a
    ``-quickgelu`` model name (e.g. ``RN50-quickgelu``) instead.
    """
    if not pretrained or _is_local_file(pretrained):
        return False
    return bool(open_clip.get_pretrained_cfg(model, pretrained).get("quick_gelu", False))


def create_clip(model: str, pretrained: str | None) -> tuple[nn.Module, Callable, Callable]:
    """Build ``(clip_model, tokenizer, eval_preprocess)`` in eval mode, weights frozen.

    ``pretrained``: an open_clip tag, a local weights file, ``"bundled"`` (weights shipped with
    mlr-bench, e.g. for ``world``) or None/"none" for a seeded random initialisation.
    """
    register_bundled_configs()
    if pretrained in (None, "", "none", "random"):
        pretrained = None
    elif pretrained == "bundled":
        pretrained = str(bundled_weights(model))
    local = pretrained is not None and (
        _is_local_file(pretrained) or Path(pretrained).expanduser().is_file()
    )
    if local:
        pretrained = str(check_weights_file(str(pretrained), model))
    guard = _unreachable_hub_guard(model, pretrained) if pretrained and not local else nullcontext()
    try:
        with guard, torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_INIT_SEED)
            clip_model, _, preprocess = open_clip.create_model_and_transforms(
                model,
                pretrained=pretrained,
                force_quick_gelu=tag_wants_quick_gelu(model, pretrained),
            )
        tokenizer = open_clip.get_tokenizer(model)
    except (RuntimeError, OSError, ValueError) as exc:
        raise _load_error(model, pretrained, exc) from exc
    except Exception as exc:  # a local file open_clip cannot read as weights
        if not local:
            raise
        detail = " ".join(str(exc).split())[:200]
        raise BackboneLoadError(
            f"CLIP weights file '{pretrained}' could not be loaded as weights of CLIP "
            f"'{model}' ({type(exc).__name__}: {detail}); expected {_WEIGHTS_EXPECTED}"
        ) from None
    clip_model.eval()
    for p in clip_model.parameters():
        p.requires_grad_(False)
    return clip_model, tokenizer, preprocess


@dataclass(frozen=True)
class ImageFeatures:
    """Global and dense image features in CLIP's joint space, L2-normalised.

    ``dense`` holds one joint-space vector per location (``grid`` = (h, w), row-major), so a
    text embedding can be compared with every location, as methods with local branches need.
    """

    global_: Tensor  # [B, D]
    dense: Tensor  # [B, h*w, D]
    grid: tuple[int, int]
    #: The other global pooling (ResNet only; equal to ``global_`` for a ViT): computing both
    #: from one trunk pass lets one feature cache serve methods that pool either way.
    global_other: Tensor | None = None


@dataclass(frozen=True)
class TextFeatures:
    """EOT embedding and per-token projected features of a text batch, L2-normalised."""

    eot: Tensor  # [B, D]
    tokens: Tensor  # [B, L, D]
    mask: Tensor  # [B, L] bool: True on real tokens (SOS .. EOT), False on padding


class CLIPBackbone(nn.Module):
    """A frozen CLIP: global + dense image features, EOT + token text features, prompt path."""

    def __init__(self, model: str = "RN50", pretrained: str | None = "openai") -> None:
        super().__init__()
        self.model_name = model
        self.pretrained = pretrained
        self.clip, self.tokenizer, self.preprocess = create_clip(model, pretrained)
        visual = self.clip.visual
        if isinstance(visual, ModifiedResNet):
            self.family = "resnet"
        elif isinstance(visual, VisionTransformer) and visual.attn_pool is None:
            self.family = "vit"
            visual.output_tokens = True  # tokens come back after ln_post, ready to project
        else:
            raise BackboneLoadError(
                f"'{model}': dense features need an open_clip ModifiedResNet or a plain "
                f"VisionTransformer image tower, got {type(visual).__name__}"
            )
        if not hasattr(self.clip, "token_embedding"):
            raise BackboneLoadError(f"'{model}': the prompt path needs open_clip's own text tower")

    @property
    def device(self) -> torch.device:
        return next(self.clip.parameters()).device

    @property
    def logit_scale(self) -> Tensor:
        """CLIP's learned temperature, exponentiated (100 for OpenAI models)."""
        return self.clip.logit_scale.exp()

    @property
    def embed_dim(self) -> int:
        return int(self.clip.text_projection.shape[-1])

    @property
    def text_width(self) -> int:
        return int(self.clip.token_embedding.weight.shape[-1])

    @property
    def image_size(self) -> int:
        size = self.clip.visual.image_size
        return int(size[0] if isinstance(size, tuple | list) else size)

    def train(self, mode: bool = True) -> CLIPBackbone:
        """Stay in eval mode: the encoders are frozen (no dropout, no BN statistics updates)."""
        return super().train(False)

    # ---- images ------------------------------------------------------------------------------
    def encode_image(self, images: Tensor) -> Tensor:
        """L2-normalised global image embeddings ``[B, D]`` (CLIP's own pooling), at any input
        size: the positional embedding is resized to the input's grid."""
        if self.family == "vit":
            pooled, _, _ = _vit_forward(self.clip.visual, images)
            return _unit(pooled)
        x = _resnet_trunk(self.clip.visual, images)
        return _unit(_attention_pool(self.clip.visual.attnpool, x))

    def encode_image_dense(
        self, images: Tensor, global_pool: Literal["clip", "no_pos"] = "clip"
    ) -> ImageFeatures:
        """Global and per-location features, at any input size (``grid`` follows the input).

        ResNet: the last stage's map goes through the attention pool's value and output
        projections per location (no query/key attention, as TaI-DPT and MaskCLIP do).
        ``global_pool="no_pos"`` drops the positional embedding from the attention pool, the
        TaI-DPT choice; "clip" keeps CLIP's own pooling. ViT: patch tokens after ``ln_post``,
        projected; the global feature is the class token (``global_pool`` has no effect).
        """
        if self.family == "vit":
            pooled, tokens, grid = _vit_forward(self.clip.visual, images)
            dense = tokens @ self.clip.visual.proj
            return ImageFeatures(_unit(pooled), _unit(dense), grid, _unit(pooled))
        x = _resnet_trunk(self.clip.visual, images)
        h, w = x.shape[-2:]
        pool = self.clip.visual.attnpool
        flat = x.flatten(2).transpose(1, 2)  # [B, HW, C]
        dense = pool.c_proj(pool.v_proj(flat))
        with_pos, no_pos = _attention_pool(pool, x), _attention_pool_without_position(pool, flat)
        global_, other = (with_pos, no_pos) if global_pool == "clip" else (no_pos, with_pos)
        return ImageFeatures(_unit(global_), _unit(dense), (int(h), int(w)), _unit(other))

    # ---- text --------------------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str]) -> Tensor:
        return self.tokenizer(list(texts)).to(self.device)

    def encode_text(self, texts: Sequence[str], batch_size: int = 256) -> Tensor:
        """L2-normalised text (EOT) embeddings ``[N, D]``, encoded in batches."""
        chunks = [
            self.encode_text_tokens(self.tokenize(texts[i : i + batch_size])).eot
            for i in range(0, len(texts), batch_size)
        ]
        return torch.cat(chunks)

    def encode_text_tokens(self, token_ids: Tensor) -> TextFeatures:
        """EOT and every token projected into the joint space, with the padding mask."""
        embedded = self.clip.token_embedding(token_ids)
        eot, tokens = self.encode_embedded_text(embedded, token_ids.argmax(dim=-1))
        return TextFeatures(eot, tokens, token_ids != 0)

    def encode_embedded_text(self, embedded: Tensor, eot_index: Tensor) -> tuple[Tensor, Tensor]:
        """Run already-embedded tokens ``[B, L, W]`` through the frozen text transformer.

        This is the prompt path: learnable context vectors are spliced into ``embedded`` by the
        caller and gradients flow back to them. Returns normalised (EOT ``[B, D]``, tokens
        ``[B, L, D]``).
        """
        clip = self.clip
        cast = clip.transformer.get_cast_dtype()
        x = embedded.to(cast) + clip.positional_embedding.to(cast)
        x = clip.transformer(x, attn_mask=clip.attn_mask)
        x = clip.ln_final(x)
        proj = clip.text_projection
        tokens = proj(x) if isinstance(proj, nn.Linear) else x @ proj
        eot = tokens[torch.arange(tokens.shape[0], device=tokens.device), eot_index]
        return _unit(eot), _unit(tokens)

    def describe(self) -> dict[str, Any]:
        return {"model": self.model_name, "pretrained": self.pretrained, "family": self.family}


def _unit(x: Tensor) -> Tensor:
    return F.normalize(x.float(), dim=-1)


def resize_positional_embedding(
    pos: Tensor, grid: tuple[int, int], mode: str = "bicubic"
) -> Tensor:
    """``pos`` (``[1 + n*n, C]``: a leading class/mean token, then an n x n grid) for an
    ``grid`` = (h, w) map: the first row kept, the grid resized bicubically (CLIP practice;
    ``mode`` picks another ``F.interpolate`` mode, e.g. TagCLIP's "bilinear").

    The native grid returns ``pos`` itself, so native-size features stay bit-identical. The
    resize runs in float32 (half-precision bicubic is unsupported on CPU) and is cast back;
    it is cheap next to the encoder, so it is not cached (a cache would go stale if the
    weights were changed in place).
    """
    side = math.isqrt(pos.shape[0] - 1)
    if side * side != pos.shape[0] - 1:
        raise ValueError(f"positional embedding of {pos.shape[0]} rows is not 1 + a square grid")
    if (side, side) == tuple(grid):
        return pos
    square = pos[1:].float().reshape(1, side, side, -1).permute(0, 3, 1, 2)
    resized = F.interpolate(square, size=tuple(grid), mode=mode, align_corners=False)
    spatial = resized.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1).to(pos.dtype)
    return torch.cat([pos[:1], spatial])


def _resnet_trunk(visual: nn.Module, images: Tensor) -> Tensor:
    """The ModifiedResNet's last-stage map ``[B, C, h, w]`` (everything before the pool)."""
    x = visual.stem(images.type(visual.conv1.weight.dtype))
    return visual.layer4(visual.layer3(visual.layer2(visual.layer1(x))))


def vit_embed(
    visual: nn.Module, images: Tensor, pos_interpolation: str = "bicubic"
) -> tuple[Tensor, tuple[int, int]]:
    """The transformer's input for ``images``: patch embeddings after the class token, the
    positional embedding resized to their grid and ``ln_pre`` (open_clip's ``_embeds``), and
    the grid."""
    x = visual.conv1(images.type(visual.conv1.weight.dtype))  # [B, width, h, w]
    grid = (int(x.shape[-2]), int(x.shape[-1]))
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    cls = visual.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
    x = torch.cat([cls, x], dim=1)
    pos = resize_positional_embedding(visual.positional_embedding, grid, mode=pos_interpolation)
    return visual.ln_pre(visual.patch_dropout(x + pos.to(x.dtype))), grid


def _vit_forward(visual: nn.Module, images: Tensor) -> tuple[Tensor, Tensor, tuple[int, int]]:
    """open_clip's VisionTransformer forward with the positional embedding resized to the
    patch grid of ``images``: (projected class token, patch tokens after ``ln_post``, grid).

    The same operations in the same order as open_clip's ``_embeds`` + ``forward``, so the
    native size matches ``model.encode_image`` exactly; the frozen parameter is never changed.
    """
    x, grid = vit_embed(visual, images)
    pooled, tokens = _vit_pool(visual, visual.transformer(x))
    if visual.proj is not None:
        pooled = pooled @ visual.proj
    return pooled, tokens, grid


def _vit_pool(visual: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """open_clip's pooling of the transformer output (no attentional pooler, see __init__);
    replayed for open_clip versions before ``_pool`` existed."""
    if hasattr(visual, "_pool"):
        return visual._pool(x)
    if getattr(visual, "final_ln_after_pool", False):
        pooled, tokens = visual._global_pool(x)
        return visual.ln_post(pooled), tokens
    return visual._global_pool(visual.ln_post(x))


def _attention_pool(pool: nn.Module, x: Tensor) -> Tensor:
    """CLIP's attention pool over a ``[B, C, h, w]`` map of any size, its positional embedding
    resized to (h, w); the same operations as open_clip's ``AttentionPool2d.forward``."""
    pos = resize_positional_embedding(pool.positional_embedding, tuple(x.shape[-2:]))
    x = x.reshape(x.shape[0], x.shape[1], x.shape[2] * x.shape[3]).permute(2, 0, 1)  # [HW, B, C]
    x = torch.cat([x.mean(dim=0, keepdim=True), x], dim=0)
    x = x + pos[:, None, :].to(x.dtype)
    return _pool_attention(pool, x, x)


def _attention_pool_without_position(pool: nn.Module, flat: Tensor) -> Tensor:
    """CLIP's attention pool (mean query over all locations) with no positional embedding."""
    x = torch.cat([flat.mean(dim=1, keepdim=True), flat], dim=1).transpose(0, 1)  # [HW+1, B, C]
    return _pool_attention(pool, x[:1], x)


def _pool_attention(pool: nn.Module, query: Tensor, tokens: Tensor) -> Tensor:
    """The attention pool's multi-head attention of ``query`` over ``tokens`` (both
    ``[L, B, C]``), returning the first query's output ``[B, D]``."""
    out, _ = F.multi_head_attention_forward(
        query=query,
        key=tokens,
        value=tokens,
        embed_dim_to_check=tokens.shape[-1],
        num_heads=pool.num_heads,
        q_proj_weight=pool.q_proj.weight,
        k_proj_weight=pool.k_proj.weight,
        v_proj_weight=pool.v_proj.weight,
        in_proj_weight=None,
        in_proj_bias=torch.cat([pool.q_proj.bias, pool.k_proj.bias, pool.v_proj.bias]),
        bias_k=None,
        bias_v=None,
        add_zero_attn=False,
        dropout_p=0.0,
        out_proj_weight=pool.c_proj.weight,
        out_proj_bias=pool.c_proj.bias,
        use_separate_proj_weight=True,
        training=False,
        need_weights=False,
    )
    return out[0]
