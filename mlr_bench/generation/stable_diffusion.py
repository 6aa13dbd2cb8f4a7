"""Stable Diffusion (diffusers) as a :class:`TextToImage`, loaded from a local folder or cache.

Defaults are the SD v1.5 recipe the benchmark uses for T2I-PAL: 512 px, 25 DPM-Solver++ steps,
classifier-free guidance 7.5, fp16 on GPU (fp32 on CPU), no safety checker. Prompts over 77 CLIP
tokens are truncated by the pipeline's tokenizer. Each image gets its own CPU
``torch.Generator``, so its starting noise depends only on its seed, on any device and batch.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from mlr_bench.generation.base import GenerationError, TextToImage, check_image_format

DTYPES = {
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float32": "float32",
    "fp32": "float32",
}
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth")
HOW_TO_PROVIDE = (
    "pass --model a local diffusers folder (one holding model_index.json, e.g. made with "
    "`StableDiffusionPipeline.from_pretrained(...).save_pretrained(DIR)` or `hf download "
    "stable-diffusion-v1-5/stable-diffusion-v1-5 --local-dir DIR` on a machine with internet), "
    "or a hub id already in the Hugging Face cache (HF_HUB_OFFLINE=1 forbids downloads)"
)


class ModelNotFoundError(GenerationError):
    """The diffusers model is neither a local pipeline folder nor in the hub cache."""


def resolve_model(model: str | os.PathLike) -> tuple[Path, str]:
    """``(local pipeline folder, display name)`` of a folder or a cached hub id."""
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise ModelNotFoundError(
                f"{path}: not a diffusers pipeline folder (no model_index.json); {HOW_TO_PROVIDE}"
            )
        return path.resolve(), path.resolve().name
    text = str(model)
    looks_like_hub_id = text.count("/") == 1 and not text.startswith((".", "/", "~"))
    if not looks_like_hub_id:
        raise ModelNotFoundError(f"{text}: no such folder; {HOW_TO_PROVIDE}")
    try:
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(text, local_files_only=True))
    except Exception as exc:  # hub raises several types for "not cached"
        raise ModelNotFoundError(
            f"{text}: not a local folder and not in the Hugging Face cache "
            f"({type(exc).__name__}); {HOW_TO_PROVIDE}"
        ) from None
    if not (folder / "model_index.json").is_file():
        raise ModelNotFoundError(f"{text}: cached, but not a diffusers pipeline; {HOW_TO_PROVIDE}")
    return folder, text


def model_fingerprint(folder: Path, sample: int = 1 << 20) -> str:
    """Cheap identity of a pipeline folder: its configs in full, and each weight file's name,
    size and first/last MiB (hashing gigabytes of weights on every run is not worth it)."""
    h = hashlib.sha256()
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = file.relative_to(folder).as_posix()
        if rel.startswith(".") or "/." in rel:
            continue
        if file.suffix == ".json" or file.suffix == ".txt":
            h.update(f"{rel}\0".encode() + file.read_bytes() + b"\0")
        elif file.suffix in WEIGHT_SUFFIXES:
            size = file.stat().st_size
            h.update(f"{rel}\0{size}\0".encode())
            with file.open("rb") as f:
                h.update(f.read(sample))
                f.seek(max(0, size - sample))
                h.update(f.read(sample))
    return h.hexdigest()[:16]


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_dtype(dtype: str, device: str) -> str:
    if dtype == "auto":
        return "float16" if device.startswith("cuda") else "float32"
    if dtype not in DTYPES:
        raise GenerationError(f"dtype must be 'auto' or one of {sorted(DTYPES)}, not {dtype!r}")
    return DTYPES[dtype]


class DiffusersTextToImage(TextToImage):
    """Any ``StableDiffusionPipeline`` with DPM-Solver++ sampling; loaded on first use."""

    def __init__(
        self,
        model: str,
        height: int = 512,
        width: int = 512,
        steps: int = 25,
        guidance_scale: float = 7.5,
        dtype: str = "auto",
        device: str = "auto",
        image_format: str = "png",
        jpeg_quality: int = 95,
    ) -> None:
        if height % 8 or width % 8 or height <= 0 or width <= 0:
            raise GenerationError(
                f"height and width must be positive multiples of 8, not {height}x{width}"
            )
        if steps < 1:
            raise GenerationError(f"steps must be at least 1, not {steps}")
        self.folder, self.model_name = resolve_model(model)
        self.fingerprint = model_fingerprint(self.folder)
        self.height, self.width, self.steps = int(height), int(width), int(steps)
        self.guidance_scale = float(guidance_scale)
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.image_format = check_image_format(image_format)
        self.jpeg_quality = int(jpeg_quality)
        self.id = f"diffusers-{self.model_name}"
        self._pipe: Any = None

    def settings(self) -> dict[str, Any]:
        settings: dict[str, Any] = {
            "model": self.model_name,
            "model_fingerprint": self.fingerprint,
            "pipeline": "StableDiffusionPipeline",
            "scheduler": "DPMSolverMultistepScheduler(dpmsolver++, order 2)",
            "height": self.height,
            "width": self.width,
            "steps": self.steps,
            "guidance_scale": self.guidance_scale,
            "dtype": self.dtype,
            "image_format": self.image_format,
        }
        if self.image_format == "jpeg":
            settings["jpeg_quality"] = self.jpeg_quality
        return settings

    @property
    def pipeline(self) -> Any:
        """The loaded pipeline (loading takes seconds to a minute, so it waits for first use)."""
        if self._pipe is None:
            import torch
            from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

            with warnings.catch_warnings():  # newer diffusers renamed torch_dtype to dtype
                warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
                pipe = StableDiffusionPipeline.from_pretrained(
                    self.folder,
                    torch_dtype=getattr(torch, self.dtype),
                    safety_checker=None,
                    feature_extractor=None,
                    requires_safety_checker=False,
                    local_files_only=True,
                )
            pipe.scheduler = DPMSolverMultistepScheduler.from_config(
                pipe.scheduler.config, algorithm_type="dpmsolver++", solver_order=2
            )
            pipe.set_progress_bar_config(disable=True)
            self._pipe = pipe.to(self.device)
        return self._pipe

    def generate(self, prompts: Sequence[str], seeds: Sequence[int]) -> list[Image.Image]:
        import torch

        if len(prompts) != len(seeds):
            raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
        generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
        with torch.inference_mode():
            out = self.pipeline(
                prompt=list(prompts),
                height=self.height,
                width=self.width,
                num_inference_steps=self.steps,
                guidance_scale=self.guidance_scale,
                generator=generators,
                output_type="pil",
            )
        return list(out.images)
