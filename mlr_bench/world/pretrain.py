"""Contrastive pre-training of the bundled micro-CLIP on world image–caption pairs.

``python -m mlr_bench.world.pretrain --out DIR`` reproduces the shipped weights (same seed, same
recipe). It renders a pool of training scenes once, then runs InfoNCE with a learnable
temperature (as CLIP does) over random (image, one of its captions) pairs. Progress is printed,
and a resume state is saved every ``save_every`` steps: a killed run continues where it stopped.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from mlr_bench.errors import MLRBenchError
from mlr_bench.runs import atomic_write_json
from mlr_bench.transforms import CLIP_MEAN, CLIP_STD

MODEL_NAME = "world"


@dataclass
class PretrainConfig:
    """The recipe; every field is recorded next to the weights."""

    seed: int = 0
    image_size: int = 96
    pool_images: int = 40_000
    captions_per_image: int = 4
    steps: int = 2400
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.1
    warmup_steps: int = 150
    init_temperature: float = 0.07
    threads: int = 2
    save_every: int = 100
    bf16: bool = True  # autocast on CPU: ~25% faster steps, fp32 master weights
    init_from: str = ""  # weights of an earlier phase to continue from (multi-phase recipes)
    model: str = MODEL_NAME  # bundled open_clip config: "world" (ResNet) or "world-vit"
    #: Text tower (token embedding, transformer, projection) taken from these weights, e.g. the
    #: ResNet micro-CLIP's, so two bundled models share one text space.
    init_text_from: str = ""
    #: Keep the text tower frozen (LiT): caption embeddings are computed once, steps train the
    #: image tower and the temperature only (about twice as fast on a CPU).
    lock_text: bool = False
    #: Weight of a CLIPSelf-style dense term (ViT only; 0 = plain CLIP): the mean of the
    #: projected patch tokens inside a random window of the grid is pulled (cosine) towards a
    #: frozen copy of the starting model's embedding of that window cropped and resized to
    #: ``image_size`` (Wu et al., "CLIPSelf", ICLR 2024; no labels, no captions). It makes the
    #: ViT's patch tokens, which CLIP's loss never trains, carry what is at their place.
    self_distill_weight: float = 0.0
    #: Window sides (in patches) drawn uniformly from ``[1, self_distill_max_cells]``.
    self_distill_max_cells: int = 4
    #: How the teacher sees a window: "mask" keeps it in place and sets the rest of the image
    #: to the mean colour (0 after normalisation); "resize" crops and resizes it to the input
    #: size as CLIPSelf does. The micro-CLIPs recognise a masked object (36 % top-1) but not an
    #: upscaled one (7 %): their objects never appear 4x larger in pre-training.
    self_distill_view: str = "mask"


def build_model(seed: int, model: str = MODEL_NAME) -> torch.nn.Module:
    """A micro-CLIP architecture (bundled open_clip config ``model``), freshly initialised."""
    import open_clip

    from mlr_bench.clip.backbone import register_bundled_configs

    register_bundled_configs()
    torch.manual_seed(seed)
    return open_clip.create_model(model, pretrained=None)


def normalise_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``[B, H, W, 3]`` → normalised float ``[B, 3, H, W]`` (CLIP mean/std)."""
    x = images.permute(0, 3, 1, 2).float().div_(255)
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def _lr_at(step: int, cfg: PretrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * progress))


def _is_text_tower(name: str) -> bool:
    return not name.startswith("visual.") and name != "logit_scale"


@torch.no_grad()
def _encode_captions(
    model: torch.nn.Module, tokens: torch.Tensor, batch: int = 1024
) -> torch.Tensor:
    """Unit caption embeddings of a locked text tower, ``[N, D]`` for tokens ``[N, L]``."""
    parts = []
    for i in tqdm(range(0, len(tokens), batch), desc="caption embeddings", mininterval=5):
        parts.append(model.encode_text(tokens[i : i + batch], normalize=True).float())
    return torch.cat(parts)


def _symmetric_infonce(logits: torch.Tensor) -> torch.Tensor:
    """CLIP's loss: matching pairs on the diagonal, cross-entropy over rows and columns."""
    labels = torch.arange(len(logits))
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def _encode_images(
    model: torch.nn.Module, images: torch.Tensor, cfg: PretrainConfig
) -> tuple[torch.Tensor, torch.Tensor | None, tuple[int, int] | None]:
    """Unit image embeddings ``[B, D]`` and, when the dense term is on, the projected patch
    tokens ``[B, P, D]`` and their grid, from the same forward pass."""
    if cfg.self_distill_weight <= 0:
        return model.encode_image(images, normalize=True), None, None
    from mlr_bench.clip.backbone import _vit_forward

    pooled, tokens, grid = _vit_forward(model.visual, images)
    return F.normalize(pooled, dim=-1), tokens @ model.visual.proj, grid


def _random_windows(
    grid: tuple[int, int], count: int, cfg: PretrainConfig, step: int
) -> torch.Tensor:
    """``[count, 4]`` windows (top, left, height, width) in patch cells; one height and width
    per step, drawn from a generator seeded by the step so a resumed run draws the same."""
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
    h = int(torch.randint(1, min(cfg.self_distill_max_cells, grid[0]) + 1, (), generator=gen))
    w = int(torch.randint(1, min(cfg.self_distill_max_cells, grid[1]) + 1, (), generator=gen))
    top = torch.randint(grid[0] - h + 1, (count,), generator=gen)
    left = torch.randint(grid[1] - w + 1, (count,), generator=gen)
    return torch.stack([top, left, torch.full_like(top, h), torch.full_like(top, w)], dim=1)


def _window_distillation(
    teacher: torch.nn.Module,
    pixels: torch.Tensor,
    patch_emb: torch.Tensor,
    grid: tuple[int, int],
    windows: torch.Tensor,
    view: str,
) -> torch.Tensor:
    """Mean ``1 - cos`` between each window's pooled patch tokens and the teacher's embedding
    of the same window (``view``: masked in place, or cropped and resized)."""
    size = pixels.shape[-2:]
    cell_h, cell_w = size[0] // grid[0], size[1] // grid[1]
    tokens = patch_emb.view(len(pixels), grid[0], grid[1], -1)
    pooled, crops = [], []
    for i, (top, left, h, w) in enumerate(windows.tolist()):
        pooled.append(tokens[i, top : top + h, left : left + w].mean(dim=(0, 1)))
        rows = slice(top * cell_h, (top + h) * cell_h)
        cols = slice(left * cell_w, (left + w) * cell_w)
        if view == "resize":
            crop = F.interpolate(pixels[i : i + 1, :, rows, cols], size=size, mode="bilinear")
        else:
            crop = torch.zeros_like(pixels[i : i + 1])
            crop[..., rows, cols] = pixels[i, :, rows, cols]
        crops.append(crop)
    with torch.no_grad():
        target = teacher.encode_image(torch.cat(crops), normalize=True).float()
    student = F.normalize(torch.stack(pooled), dim=-1)
    return (1 - (student * target).sum(-1)).mean()


def pretrain(cfg: PretrainConfig, out_dir: Path) -> Path:
    """Train and write ``<model>.safetensors`` (fp16) plus ``<model>_recipe.json``; returns the
    weights' path."""
    import open_clip
    from safetensors.torch import save_file

    from mlr_bench.clip.backbone import register_bundled_configs
    from mlr_bench.world.dataset import generate

    register_bundled_configs()
    torch.set_num_threads(cfg.threads)
    started = time.time()
    model = build_model(cfg.seed, cfg.model)
    if cfg.self_distill_view not in ("mask", "resize"):
        raise MLRBenchError(
            f"self_distill_view must be 'mask' or 'resize', got {cfg.self_distill_view!r}"
        )
    if cfg.self_distill_weight > 0 and not hasattr(model.visual, "class_embedding"):
        raise MLRBenchError(
            f"self_distill_weight needs a ViT image tower; {cfg.model!r} is not one"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    state_path = out_dir / "pretrain_state.pt"
    print(f"rendering {cfg.pool_images} training scenes ...", flush=True)
    pool = generate(
        cfg.pool_images, seed=cfg.seed, image_size=cfg.image_size,
        captions_per_image=cfg.captions_per_image,
    )  # fmt: skip
    images = torch.from_numpy(pool.images)
    tokenizer = open_clip.get_tokenizer(cfg.model)
    tokens = tokenizer(pool.captions).view(cfg.pool_images, cfg.captions_per_image, -1)
    print(f"  done in {time.time() - started:.0f}s", flush=True)

    model.logit_scale.data.fill_(math.log(1 / cfg.init_temperature))
    from safetensors.torch import load_file

    if cfg.init_text_from:
        text = {k: v.float() for k, v in load_file(cfg.init_text_from).items() if _is_text_tower(k)}
        missing = [k for k in model.state_dict() if _is_text_tower(k) and k not in text]
        if missing:
            raise ValueError(f"{cfg.init_text_from} lacks text-tower tensors {missing[:3]}")
        model.load_state_dict(text, strict=False)
        print(f"text tower from {cfg.init_text_from}", flush=True)
    if cfg.init_from:
        model.load_state_dict({k: v.float() for k, v in load_file(cfg.init_from).items()})
        print(f"continuing from {cfg.init_from}", flush=True)
    caption_emb = None
    if cfg.lock_text:
        for name, p in model.named_parameters():
            p.requires_grad_(not _is_text_tower(name))
        model.eval()
        caption_emb = _encode_captions(model, tokens.flatten(0, 1)).view(
            cfg.pool_images, cfg.captions_per_image, -1
        )
    teacher = copy.deepcopy(model).eval().requires_grad_(False) if cfg.self_distill_weight else None
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = [p for n, p in trainable if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in trainable if p.ndim < 2 or "embedding" in n]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)
    step, elapsed_before = 0, 0.0
    if state_path.is_file():
        from mlr_bench.checkpoints import load_weights_file

        # weights_only: the state holds only tensors and plain data; nothing in it may run code
        state = load_weights_file(state_path, what="pre-training resume state")
        if state["config"] == asdict(cfg):
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            step, elapsed_before = state["step"], state["elapsed"]
            print(f"resuming at step {step}", flush=True)
    train_start = time.time()
    generator = torch.Generator().manual_seed(cfg.seed)
    for _ in range(step):  # replay the sampling stream so a resumed run sees the same batches
        torch.randint(cfg.pool_images, (cfg.batch_size,), generator=generator)
        torch.randint(cfg.captions_per_image, (cfg.batch_size,), generator=generator)
    model.train()
    bar = tqdm(total=cfg.steps, initial=step, desc="pretrain micro-CLIP", mininterval=5)
    while step < cfg.steps:
        idx = torch.randint(cfg.pool_images, (cfg.batch_size,), generator=generator)
        cap = torch.randint(cfg.captions_per_image, (cfg.batch_size,), generator=generator)
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, cfg)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
            pixels = normalise_images(images[idx])
            image_emb, patch_emb, grid = _encode_images(model, pixels, cfg)
            if caption_emb is None:
                text_emb = model.encode_text(tokens[idx, cap], normalize=True)
            else:
                text_emb = caption_emb[idx, cap]
        scale = model.logit_scale.exp()
        loss = _symmetric_infonce(scale * image_emb.float() @ text_emb.float().T)
        if patch_emb is not None:
            windows = _random_windows(grid, len(idx), cfg, step)
            loss = loss + cfg.self_distill_weight * _window_distillation(
                teacher, pixels, patch_emb.float(), grid, windows, cfg.self_distill_view
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}", T=f"{1 / model.logit_scale.exp().item():.3f}")
        if step % cfg.save_every == 0 or step == cfg.steps:
            state = {
                "config": asdict(cfg),
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "step": step,
                "elapsed": elapsed_before + time.time() - train_start,
            }
            torch.save(state, state_path.with_suffix(".tmp"))
            state_path.with_suffix(".tmp").replace(state_path)
    bar.close()
    model.eval()
    weights = out_dir / f"{cfg.model}.safetensors"
    tmp = weights.with_suffix(".tmp")
    save_file({k: v.detach().half().contiguous() for k, v in model.state_dict().items()}, str(tmp))
    tmp.replace(weights)
    recipe = {
        "config": asdict(cfg),
        "train_seconds": round(elapsed_before + time.time() - train_start),
        "total_seconds": round(time.time() - started),
        "final_loss": round(loss.item(), 4),
        "final_temperature": round(1 / model.logit_scale.exp().item(), 4),
        "torch": torch.__version__,
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    atomic_write_json(out_dir / f"{cfg.model}_recipe.json", recipe)
    state_path.unlink(missing_ok=True)
    print(json.dumps(recipe, indent=2), flush=True)
    return weights


def main() -> None:
    parser = argparse.ArgumentParser(description="Pre-train the world micro-CLIP.")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    for name, field in PretrainConfig.__dataclass_fields__.items():
        kind = type(field.default)
        parse = (lambda v: v.lower() in ("1", "true", "yes")) if kind is bool else kind
        parser.add_argument(f"--{name}", type=parse, default=field.default)
    args = vars(parser.parse_args())
    out = args.pop("out")
    try:
        pretrain(PretrainConfig(**args), out)
    except MLRBenchError as exc:  # a bad setting: say which, without a traceback
        parser.error(str(exc))


if __name__ == "__main__":
    main()
