"""Throughput of ``mlr_bench.generation``: images/s end to end (generate, encode, write, list).

On CPU: the tiny random Stable Diffusion pipeline (64 px, 2 steps) at batch 1 and 8, and the
world renderer. With CUDA: a randomly initialised SD v1.5-size pipeline (UNet 860 M, CLIP-L text
encoder, SD VAE) at 512 px, 25 DPM-Solver++ steps, fp16, batch 1 vs 8, with peak GPU memory.
Random weights cost exactly as much compute as trained ones, so the timings carry over.

    python benchmarks/generation.py [--threads 1] [--sd-images 16]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from mlr_bench.generation import CaptionItem, DiffusersTextToImage, WorldRenderer, generate_images
from mlr_bench.generation.tiny import clip_tokenizer, save_tiny_pipeline


def captions(n: int) -> list[CaptionItem]:
    texts = ["a red circle next to two blue stars", "a bell and a key on a wooden table"]
    return [CaptionItem(f"{i:07d}", texts[i % 2], ("circle",)) for i in range(n)]


def images_per_s(generator, n: int, batch_size: int, root: Path) -> float:
    """Generate a warm-up batch first (lazy loading, kernel selection), then time ``n`` more."""
    warm = captions(batch_size)
    generate_images(generator, warm, root / "warm", batch_size=batch_size, progress=False)
    items = [CaptionItem(f"t{c.caption_id}", c.text, c.labels) for c in captions(n)]
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    generate_images(generator, items, root / "timed", batch_size=batch_size, progress=False)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return n / (time.perf_counter() - start)


def cpu_numbers(root: Path) -> None:
    model = save_tiny_pipeline(root / "tiny-sd")
    for batch in (1, 8):
        gen = DiffusersTextToImage(str(model), height=64, width=64, steps=2, device="cpu")
        rate = images_per_s(gen, 32, batch, root / f"tiny-b{batch}")
        print(f"tiny SD (random, 64 px, 2 steps, CFG, fp32, CPU) batch {batch}: {rate:.1f} img/s")
    rate = images_per_s(WorldRenderer(96), 512, 64, root / "world")
    print(f"world renderer (96 px PNG) batch 64: {rate:.0f} img/s")


def save_sd15_size_pipeline(folder: Path) -> Path:
    """Random weights in the SD v1.5 architecture (configs as published), saved in fp16."""
    from diffusers import (
        AutoencoderKL,
        DPMSolverMultistepScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    unet = UNet2DConditionModel(
        sample_size=64,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=768,
        attention_head_dim=8,
    )
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2,
        latent_channels=4,
        sample_size=512,
    )
    text = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408, hidden_size=768, intermediate_size=3072, num_attention_heads=12,
            num_hidden_layers=12, max_position_embeddings=77, hidden_act="quick_gelu",
            bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
        )
    )  # fmt: skip
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text, tokenizer=clip_tokenizer(), unet=unet,
        scheduler=DPMSolverMultistepScheduler(
            beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1
        ),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    millions = sum(p.numel() for p in unet.parameters()) / 1e6
    print(f"SD v1.5-size random pipeline: UNet {millions:.0f} M parameters")
    pipe.to(torch.float16).save_pretrained(folder)
    return folder


def cuda_numbers(root: Path, n: int) -> None:
    model = save_sd15_size_pipeline(root / "sd15-random")
    for batch in (1, 8):
        gen = DiffusersTextToImage(str(model))  # 512 px, 25 steps, CFG 7.5, fp16 on CUDA
        torch.cuda.reset_peak_memory_stats()
        rate = images_per_s(gen, n if batch > 1 else max(4, n // 4), batch, root / f"sd-b{batch}")
        peak = torch.cuda.max_memory_allocated() / 2**30
        print(f"SD v1.5-size, 512 px, 25 steps, fp16, {torch.cuda.get_device_name()} "
              f"batch {batch}: {rate:.2f} img/s, peak GPU memory {peak:.1f} GiB")  # fmt: skip
        del gen
        torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--sd-images", type=int, default=16, help="timed images at batch 8")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        cpu_numbers(Path(tmp))
        if torch.cuda.is_available():
            cuda_numbers(Path(tmp), args.sd_images)
        else:
            print("CUDA not available: skipping the SD v1.5-size GPU benchmark")


if __name__ == "__main__":
    main()
