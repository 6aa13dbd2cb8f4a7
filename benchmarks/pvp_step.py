"""PVP stage-2 training step cost, and the share spent encoding the 2·C pixel prompts.

Every PVP step pushes 2·C class images through the frozen image encoder and back to their
pixels. This prints seconds per stage-2 step (forward + backward + SGD step, batch 512 of
cached sentence features) at the world's resolution (96 px, the bundled micro-CLIP, 18 classes)
and at 224 px with a tiny random ResNet (80 classes, COCO-sized), plus the share of the step
spent encoding the prompts (their forward and backward alone). On CUDA both run under the
method's bf16 autocast with channels-last.

    python benchmarks/pvp_step.py [--steps 5] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import open_clip
import torch

from mlr_bench.methods.pvp import PVP
from mlr_bench.world import CLASS_NAMES

TINY_RN_224 = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 224, "layers": [1, 1, 1, 1], "width": 16, "patch_size": None},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def register_tiny_rn_224() -> str:
    folder = Path(tempfile.mkdtemp(prefix="pvp-bench-"))
    (folder / "bench-tiny-rn224.json").write_text(json.dumps(TINY_RN_224))
    open_clip.add_model_config(folder)
    return "bench-tiny-rn224"


def sentence_batch(model: PVP, size: int, length: int, device: torch.device) -> dict:
    """Random normalised sentence features shaped like a cached batch."""
    g = torch.Generator().manual_seed(0)
    dim, classes = model.backbone.embed_dim, model.num_classes
    lengths = torch.randint(6, length, (size,), generator=g)
    batch = {
        "eot": torch.nn.functional.normalize(torch.randn(size, dim, generator=g), dim=-1),
        "tokens": torch.nn.functional.normalize(
            torch.randn(size, length, dim, generator=g), dim=-1
        ),
        "mask": torch.arange(length)[None] < lengths[:, None],
        "target": torch.where(torch.rand(size, classes, generator=g) < 0.1, 1, -1),
    }
    return {k: v.to(device) for k, v in batch.items()}


def timed(fn: Callable[[], None], steps: int, device: torch.device) -> float:
    fn()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def measure(backbone: str, pretrained: str | None, classes: list[str], steps: int, device: str):
    dev = torch.device(device)
    model = PVP(classes, backbone=backbone, pretrained=pretrained, stage="finetune").to(dev)
    model.train()
    model.on_fit_start()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    batch = sentence_batch(model, 512, 32, dev)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        model.losses(batch)[0].backward()
        optimizer.step()

    def encode_only() -> None:
        optimizer.zero_grad(set_to_none=True)
        g, loc = model.encode_pvps()
        (g.sum() + loc.sum()).backward()

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    total = timed(step, steps, dev)
    encode = timed(encode_only, steps, dev)
    memory = torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else None
    return {
        "backbone": backbone,
        "size": model.backbone.image_size,
        "classes": len(classes),
        "step_s": total,
        "encode_s": encode,
        "encode_share": encode / total,
        "peak_mb": memory,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    coco_like = [f"class{i}" for i in range(80)]
    rows = [
        measure("world", "bundled", list(CLASS_NAMES), args.steps, args.device),
        measure(register_tiny_rn_224(), None, coco_like, args.steps, args.device),
    ]
    threads = torch.get_num_threads()
    print(f"\nPVP stage-2 step, batch 512 sentences, device {args.device}, {threads} threads")
    header = f"{'backbone':18} {'px':>4} {'C':>3} {'s/step':>8} {'encode s':>9} {'share':>6}"
    print(f"{header} {'peak MB':>8}")
    for r in rows:
        peak = f"{r['peak_mb']:8.0f}" if r["peak_mb"] is not None else f"{'-':>8}"
        print(
            f"{r['backbone']:18} {r['size']:4d} {r['classes']:3d} {r['step_s']:8.3f} "
            f"{r['encode_s']:9.3f} {r['encode_share']:6.0%} {peak}"
        )


if __name__ == "__main__":
    main()
