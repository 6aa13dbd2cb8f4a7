"""One GPU script: every figure the project wants from a lent GPU, in one run of <= 8 min.

Device time is lent by the quarter hour, so everything is measured in one go, on random weights
(they cost exactly what trained ones do), and a failing measurement is one "failed: <reason>"
row instead of the end of the run. Rows:

- image-feature extraction (``CLIPBackbone.encode_image_dense``, as the feature cache runs it),
  images/s, RN50 and ViT-B-16 at 224 px, batch 256, fp32 / fp16 / bf16 autocast, with and
  without channels-last;
- PVP stage-2 seconds per step (training step + SGD step, batch 512 sentences, 80 classes),
  RN50, pixel prompts at 224 and 480 px, fp32 vs the method's bf16 autocast + channels-last;
- TaI-DPT seconds per step, RN50, batch 512 (the COCO recipe's): features from the text cache
  (host memory, copied to the device each step) vs the captions' tokens re-encoded by the frozen
  text encoder every step, as the reference code does (tokenising excluded: its data loader
  workers do that);
- text-to-image images/s with a Stable Diffusion 1.5-shaped random pipeline (UNet, VAE and CLIP
  text encoder all included) at 512 px, 10 DPM-Solver++ steps with classifier-free guidance,
  fp32 batch 1 vs fp16 batch 8.

Every row has its peak GPU memory (reset per row) and its wall time, which includes building
the models it is the first to use. Warm-up calls are never timed. ``--tiny`` runs the same code
on CPU with tiny shapes (bundled tiny CLIPs at 64 px and 2x that, a tiny UNet, batch 2) in
well under a minute, so a test keeps the script working; fp16 rows are "skipped (cpu)" there.
Row ids name the full-size setting in both modes ("pvp/480px/fp32"); the setting column says
what actually ran.

    python benchmarks/gpu.py [--out gpu.json] [--sections image,pvp,taidpt,t2i]   # one GPU
    python benchmarks/gpu.py --tiny [--out gpu.json]   # CPU check of the script
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

os.environ.setdefault("TQDM_DISABLE", "1")

import torch
from torch import Tensor

if TYPE_CHECKING:  # imported where used: refusing on a CPU machine takes no 10 s of imports
    from mlr_bench.clip import CLIPBackbone
    from mlr_bench.methods.pvp import PVP
    from mlr_bench.methods.taidpt import TaIDPT

NO_CUDA = "no CUDA device; use --tiny to check the script on CPU"
SECTIONS = ("image", "pvp", "taidpt", "t2i")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
#: Stable Diffusion 1.5's UNet, VAE and text encoder configurations (as published).
SD15_UNET = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280, 1280),
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
}
SD15_VAE = {
    "block_out_channels": (128, 256, 512, 512),
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "layers_per_block": 2,
    "latent_channels": 4,
    "sample_size": 512,
}
SD15_TEXT = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "bos_token_id": 49406,
    "eos_token_id": 49407,
    "pad_token_id": 49407,
}
OBJECTS = ("dog", "bicycle", "umbrella", "pizza", "train", "laptop", "giraffe", "kite")
PLACES = ("on a busy street", "in a kitchen", "next to the sea", "in a small garden")


@dataclass(frozen=True)
class Plan:
    """Shapes and repeat counts of one run: the real sizes, or tiny ones for a CPU check."""

    device: torch.device
    tiny: bool
    image_models: dict[str, str]  # row name -> open_clip model
    image_px: int
    image_batch: int
    pvp_backbone: str
    pvp_sizes: dict[str, int]  # row name -> pixel-prompt side
    classes: int
    text_batch: int
    t2i_px: int
    t2i_steps: int
    t2i_batches: dict[str, int]  # dtype -> batch
    warmup: int
    iters: int
    t2i_warmup: int
    t2i_iters: int


def full_plan(device: torch.device) -> Plan:
    return Plan(
        device=device,
        tiny=False,
        image_models={"RN50": "RN50", "ViT-B-16": "ViT-B-16"},
        image_px=224,
        image_batch=256,
        pvp_backbone="RN50",
        pvp_sizes={"224px": 224, "480px": 480},
        classes=80,
        text_batch=512,
        t2i_px=512,
        t2i_steps=10,
        t2i_batches={"fp32": 1, "fp16": 8},
        warmup=3,
        iters=10,
        t2i_warmup=1,
        t2i_iters=2,
    )


def tiny_plan(device: torch.device) -> Plan:
    return Plan(
        device=device,
        tiny=True,
        image_models={"RN50": "mlr-tiny-rn", "ViT-B-16": "mlr-tiny-vit"},
        image_px=64,
        image_batch=2,
        pvp_backbone="mlr-tiny-rn",
        pvp_sizes={"224px": 64, "480px": 128},
        classes=4,
        text_batch=2,
        t2i_px=64,
        t2i_steps=2,
        t2i_batches={"fp32": 1, "fp16": 2},
        warmup=1,
        iters=2,
        t2i_warmup=1,
        t2i_iters=1,
    )


# ---- measuring -----------------------------------------------------------------------------
@dataclass
class Row:
    """One figure: ``value`` in ``unit`` when ``status`` is "ok", else None."""

    id: str
    setting: str
    unit: str
    value: float | None = None
    status: str = "ok"
    peak_mib: float | None = None
    wall_s: float = 0.0


@dataclass
class Recorder:
    """Runs each measurement in isolation and keeps the JSON up to date after every row, so a
    run cut short by the device's time limit still leaves its figures behind."""

    plan: Plan
    out: Path | None
    rows: list[Row] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)

    def measure(
        self, row_id: str, setting: str, unit: str, fn: Callable[[], float], skip: str | None
    ) -> None:
        row = Row(row_id, setting, unit)
        if skip:
            row.status = skip
        else:
            cuda = self.plan.device.type == "cuda"
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            try:
                row.value = fn()
            except Exception as exc:  # one row's failure must not cost the others
                row.status = f"failed: {one_line(exc)}"
            row.wall_s = time.perf_counter() - start
            if cuda:
                row.peak_mib = torch.cuda.max_memory_allocated() / 2**20
            release_memory()
        self.rows.append(row)
        print(f"[gpu.py] {row_id}: {shown(row)} ({row.wall_s:.1f} s)", file=sys.stderr)
        self.save()

    def figures(self) -> dict[str, Any]:
        return {
            "environment": environment(self.plan),
            "rows": [asdict(r) for r in self.rows],
            "total_s": time.perf_counter() - self.started,
        }

    def save(self) -> None:
        if self.out is None:
            return
        self.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.out.with_name(f".{self.out.name}.tmp")
        tmp.write_text(json.dumps(self.figures(), indent=2))
        os.replace(tmp, self.out)


def one_line(exc: BaseException, limit: int = 240) -> str:
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_per_call(
    fn: Callable[[], Any], plan: Plan, warmup: int | None = None, iters: int | None = None
) -> float:
    """Mean seconds of ``fn`` after untimed warm-up calls (allocator, kernel choice)."""
    for _ in range(plan.warmup if warmup is None else warmup):
        fn()
    synchronize(plan.device)
    start = time.perf_counter()
    n = iters or plan.iters
    for _ in range(n):
        fn()
    synchronize(plan.device)
    return (time.perf_counter() - start) / n


def dtype_skip(plan: Plan, dtype: str) -> str | None:
    """Why a dtype cannot run here: fp16 kernels are a GPU matter, bf16 needs Ampere or later."""
    if plan.device.type == "cpu" and dtype == "fp16":
        return "skipped (cpu)"
    if plan.device.type == "cuda" and dtype == "bf16" and not torch.cuda.is_bf16_supported():
        return "skipped (no bf16 on this GPU)"
    return None


def autocast(plan: Plan, dtype: str) -> Any:
    if dtype == "fp32":
        return nullcontext()
    return torch.autocast(plan.device.type, dtype=DTYPES[dtype])


def layout(module: torch.nn.Module, channels_last: bool) -> None:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    module.to(memory_format=fmt)


def once(build: Callable[[], Any]) -> Callable[[], Any]:
    """``build``'s result, built on first use (a failed build is retried by the next row)."""
    made: list[Any] = []

    def get() -> Any:
        if not made:
            made.append(build())
        return made[0]

    return get


# ---- image features ------------------------------------------------------------------------
def image_rate(backbone: CLIPBackbone, plan: Plan, dtype: str, channels_last: bool) -> float:
    size = backbone.image_size
    images = torch.randn(plan.image_batch, 3, size, size, device=plan.device)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    layout(backbone.clip.visual, channels_last)

    @torch.no_grad()
    def encode() -> None:
        with autocast(plan, dtype):
            backbone.encode_image_dense(images)

    try:
        return plan.image_batch / seconds_per_call(encode, plan)
    finally:
        layout(backbone.clip.visual, False)


def image_section(rec: Recorder) -> None:
    from mlr_bench.clip import CLIPBackbone

    plan = rec.plan
    for name, model in plan.image_models.items():
        backbone = once(lambda m=model: CLIPBackbone(m, pretrained="none").to(plan.device))
        for dtype in DTYPES:
            for cl in (False, True):
                rec.measure(
                    f"image/{name}/{dtype}{'+cl' if cl else ''}",
                    f"{model} encode_image_dense, {plan.image_px} px, batch {plan.image_batch}, "
                    f"{dtype}{' autocast' if dtype != 'fp32' else ''}"
                    f"{', channels-last' if cl else ''}",
                    "images/s",
                    lambda b=backbone, d=dtype, c=cl: image_rate(b(), plan, d, c),
                    dtype_skip(plan, dtype),
                )


# ---- PVP stage 2 ---------------------------------------------------------------------------
def class_names(n: int) -> list[str]:
    return [f"object {i}" for i in range(n)]


def sentence_batch(dim: int, plan: Plan, length: int = 32) -> dict[str, Tensor]:
    """Random unit sentence features shaped like a batch of the text cache."""
    g = torch.Generator().manual_seed(0)
    size = plan.text_batch
    unit = torch.nn.functional.normalize
    lengths = torch.randint(6, length, (size,), generator=g)
    batch = {
        "eot": unit(torch.randn(size, dim, generator=g), dim=-1),
        "tokens": unit(torch.randn(size, length, dim, generator=g), dim=-1),
        "mask": torch.arange(length)[None] < lengths[:, None],
        "target": torch.where(torch.rand(size, plan.classes, generator=g) < 0.1, 1, -1),
    }
    return {k: v.to(plan.device) for k, v in batch.items()}


def training_step(
    model: Any, batch: Callable[[], dict[str, Tensor]], lr: float = 1e-5
) -> Callable[[], None]:
    """The LightningModule's own training step, then an SGD step over what it trains."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=5e-4)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        model.training_step(batch(), 0).backward()
        optimizer.step()

    return step


def build_pvp(plan: Plan, size: int) -> PVP:
    from mlr_bench.methods.pvp import PVP

    model = PVP(
        class_names(plan.classes),
        backbone=plan.pvp_backbone,
        pretrained="none",
        stage="finetune",
        global_size=size,
        local_size=size,
    )
    return model.to(plan.device).train()


def pvp_step_seconds(model: PVP, plan: Plan, dtype: str, channels_last: bool) -> float:
    """Stage-2 step with the method's own switches: ``encode_dtype`` and ``channels_last``
    (both act on CUDA only, as in training; on CPU the step runs fp32, contiguous)."""
    model.encode_dtype = "bfloat16" if dtype == "bf16" else "float32"
    model.channels_last = channels_last
    layout(model.backbone.clip.visual, False)
    model.on_fit_start()  # the method turns the ResNet channels-last here
    batch = sentence_batch(model.backbone.embed_dim, plan)
    try:
        return seconds_per_call(training_step(model, lambda: batch), plan)
    finally:
        layout(model.backbone.clip.visual, False)


def pvp_section(rec: Recorder) -> None:
    plan = rec.plan
    cpu = " (on CPU the method runs fp32, contiguous)" if plan.device.type == "cpu" else ""
    for name, size in plan.pvp_sizes.items():
        model = once(lambda s=size: build_pvp(plan, s))
        for dtype, cl in (("fp32", False), ("bf16", True)):
            rec.measure(
                f"pvp/{name}/{dtype}{'+cl' if cl else ''}",
                f"{plan.pvp_backbone} pixel prompts {size} px, {plan.classes} classes, batch "
                f"{plan.text_batch}, {'bf16 autocast, channels-last' + cpu if cl else 'fp32'}",
                "s/step",
                lambda m=model, d=dtype, c=cl: pvp_step_seconds(m(), plan, d, c),
                dtype_skip(plan, dtype),
            )
        del model
        release_memory()


# ---- TaI-DPT: text cache vs re-encoding ----------------------------------------------------
def captions(n: int) -> list[str]:
    """Varied COCO-like captions (their token lengths set the cached width)."""
    out = []
    for i in range(n):
        a, b = OBJECTS[i % len(OBJECTS)], OBJECTS[(3 * i + 1) % len(OBJECTS)]
        out.append(f"a photo of a {a} and {1 + i % 4} {b}s {PLACES[i % len(PLACES)]}")
    return out


def caption_batches(model: TaIDPT, plan: Plan) -> tuple[dict[str, Tensor], Tensor, Tensor]:
    """(cached batch in host memory, token ids in host memory, targets): the cached batch is
    what ``TextFeatureDataset`` yields — fp16 features read back as float32, cut to the
    longest caption."""
    ids = model.backbone.tokenizer(captions(plan.text_batch))
    g = torch.Generator().manual_seed(0)
    target = torch.where(torch.rand(plan.text_batch, plan.classes, generator=g) < 0.1, 1, -1)
    width = int((ids.argmax(dim=-1) + 1).max())
    with torch.no_grad():
        feats = model.backbone.encode_text_tokens(ids.to(plan.device))
    cached = {
        "eot": feats.eot.half().float().cpu(),
        "tokens": feats.tokens[:, :width].half().float().cpu(),
        "mask": feats.mask[:, :width].cpu(),
        "target": target,
    }
    return cached, ids, target


def taidpt_seconds(model: TaIDPT, plan: Plan, reencode: bool) -> float:
    cached, ids, target = caption_batches(model, plan)
    device = plan.device
    on_device = target.to(device)

    def from_cache() -> dict[str, Tensor]:
        return {k: v.to(device, non_blocking=True) for k, v in cached.items()}

    @torch.no_grad()
    def from_encoder() -> dict[str, Tensor]:
        feats = model.backbone.encode_text_tokens(ids.to(device, non_blocking=True))
        return {"eot": feats.eot, "tokens": feats.tokens, "mask": feats.mask, "target": on_device}

    batch = from_encoder if reencode else from_cache
    return seconds_per_call(training_step(model, batch, lr=1e-4), plan)


def taidpt_section(rec: Recorder) -> None:
    from mlr_bench.methods.taidpt import TaIDPT

    plan = rec.plan
    model = once(
        lambda: (
            TaIDPT(class_names(plan.classes), backbone=plan.pvp_backbone, pretrained="none")
            .to(plan.device)
            .train()
        )
    )
    paths = (("cached", False, "text cache in host memory"), ("reencoded", True, "re-encoded"))
    for name, reencode, how in paths:
        rec.measure(
            f"taidpt/{name}",
            f"{plan.pvp_backbone} TaI-DPT step, {plan.classes} classes, batch {plan.text_batch}"
            f" captions, {how}",
            "s/step",
            lambda r=reencode: taidpt_seconds(model(), plan, r),
            None,
        )


# ---- text to image -------------------------------------------------------------------------
def sd15_shaped_pipeline() -> Any:
    """Random weights in SD 1.5's architecture: UNet, VAE and CLIP text encoder (fp32, CPU)."""
    from diffusers import (
        AutoencoderKL,
        DPMSolverMultistepScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    from mlr_bench.generation.tiny import clip_tokenizer

    torch.manual_seed(0)
    scheduler = DPMSolverMultistepScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1
    )
    return StableDiffusionPipeline(
        vae=AutoencoderKL(**SD15_VAE).eval(),
        text_encoder=CLIPTextModel(CLIPTextConfig(**SD15_TEXT)).eval(),
        tokenizer=clip_tokenizer(),
        unet=UNet2DConditionModel(**SD15_UNET).eval(),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def build_pipeline(plan: Plan) -> Any:
    from mlr_bench.generation.tiny import build_tiny_pipeline

    if plan.tiny:
        pipe = build_tiny_pipeline(sample_size=plan.t2i_px // 8)
    else:
        pipe = sd15_shaped_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(plan.device)


def t2i_rate(pipe: Any, plan: Plan, dtype: str, batch: int) -> float:
    if pipe.unet.dtype != DTYPES[dtype]:
        pipe.to(plan.device, DTYPES[dtype])
    prompts = captions(batch)

    @torch.no_grad()
    def generate() -> None:
        pipe(
            prompt=prompts,
            height=plan.t2i_px,
            width=plan.t2i_px,
            num_inference_steps=plan.t2i_steps,
            guidance_scale=7.5,
            output_type="pt",
        )

    return batch / seconds_per_call(generate, plan, plan.t2i_warmup, plan.t2i_iters)


def t2i_section(rec: Recorder) -> None:
    plan = rec.plan
    pipe = once(lambda: build_pipeline(plan))
    what = "tiny random SD" if plan.tiny else "SD 1.5-shaped random UNet + VAE + text encoder"
    for dtype, batch in plan.t2i_batches.items():  # fp32 first: fp16 converts the pipeline
        rec.measure(
            f"t2i/{dtype}",
            f"{what}, {plan.t2i_px} px, {plan.t2i_steps} steps, CFG 7.5, {dtype}, batch {batch}",
            "images/s",
            lambda d=dtype, b=batch: t2i_rate(pipe(), plan, d, b),
            dtype_skip(plan, dtype),
        )


# ---- report --------------------------------------------------------------------------------
def environment(plan: Plan) -> dict[str, Any]:
    cuda = plan.device.type == "cuda"
    return {
        "device": torch.cuda.get_device_name(plan.device) if cuda else platform.processor(),
        "tiny": plan.tiny,
        "torch": torch.__version__,
        "cuda": torch.version.cuda if cuda else None,
        "threads": torch.get_num_threads(),
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
    }


def shown(row: Row) -> str:
    if row.value is None:
        return row.status
    number = f"{row.value:.4f}" if row.unit == "s/step" else f"{row.value:.1f}"
    return f"{number} {row.unit}"


def report(rec: Recorder) -> None:
    env = environment(rec.plan)
    print(f"\nGPU figures{' (--tiny: shapes are not the real ones)' if rec.plan.tiny else ''}")
    print(f"device {env['device'] or 'cpu'}, torch {env['torch']}, {env['threads']} threads")
    print(f"{'row':22} {'figure':>18} {'peak MiB':>9} {'wall s':>7}  setting")
    for r in rec.rows:
        peak = f"{r.peak_mib:9.0f}" if r.peak_mib is not None else f"{'-':>9}"
        failed = r.status.startswith("failed")
        figure = "failed" if failed else shown(r)
        line = f"{r.id:22} {figure:>18} {peak} {r.wall_s:7.1f}  {r.setting}"
        print(f"{line} | {r.status}" if failed else line)
    print(f"total {time.perf_counter() - rec.started:.0f} s (model builds included)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny shapes, CPU: checks the script")
    parser.add_argument("--out", type=Path, help="also write the figures to this JSON file")
    parser.add_argument("--device", help="default: cuda, or cpu with --tiny")
    parser.add_argument(
        "--sections", default=",".join(SECTIONS), help=f"subset of {','.join(SECTIONS)}"
    )
    args = parser.parse_args()
    device = torch.device(args.device or ("cpu" if args.tiny else "cuda"))
    needs_cuda = device.type == "cuda" or not args.tiny  # full shapes would take hours on CPU
    if needs_cuda and not (device.type == "cuda" and torch.cuda.is_available()):
        print(NO_CUDA, file=sys.stderr)
        sys.exit(2)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    if unknown := set(sections) - set(SECTIONS):
        parser.error(f"unknown sections {sorted(unknown)}; choose from {','.join(SECTIONS)}")
    warnings.filterwarnings("ignore", message=r".*self\.log.*")  # no Trainer: nothing to log
    torch.manual_seed(0)
    plan = tiny_plan(device) if args.tiny else full_plan(device)
    rec = Recorder(plan, args.out)
    run = {"image": image_section, "pvp": pvp_section, "taidpt": taidpt_section, "t2i": t2i_section}
    for name in sections:
        run[name](rec)
        release_memory()
    rec.save()
    report(rec)


if __name__ == "__main__":
    main()
