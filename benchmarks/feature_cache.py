"""Speed of the frozen-feature caches on the synthetic world with the bundled micro-CLIP.

Prints:
- TaI-DPT training throughput (captions/s over one epoch of SGD steps) reading the datamodule's
  text feature cache, next to re-encoding every batch's captions with the frozen text encoder
  (the reference code's approach), from identical prompts on identical batches; the per-step
  loss difference of the two paths (fp16 cache, and a float32 cache); the one-off cost of
  building the text cache (cold) and the number of epochs after which it has paid for itself;
- evaluation throughput (images/s) on the test split: building the image feature cache (cold),
  evaluating from it (warm: a new datamodule that only opens it) and evaluating without a cache
  (encode every image, then score), with and without rendering the world's images.

    OMP_NUM_THREADS=2 python benchmarks/feature_cache.py [--captions 20000] [--test-images 2000]
        [--batch-size 512] [--eval-batch-size 256] [--repeats 3] [--cache-dir DIR] [--json PATH]

Defaults take about 2 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("TQDM_DISABLE", "1")  # the cache builders' progress bars, not figures

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from mlr_bench.datamodules.world import World
from mlr_bench.features import FeatureCache, FeatureStore, TextFeatureDataset, text_features
from mlr_bench.losses import ranking_loss
from mlr_bench.methods.taidpt import TaIDPT

Batch = dict[str, Tensor]


def world(args: argparse.Namespace, cache_dir: Path) -> World:
    """A fresh datamodule (nothing memoised in memory) with the benchmark's data arguments."""
    return World(
        seed=0,
        num_test=args.test_images,
        num_val=100,
        num_captions=args.captions,
        batch_size=args.batch_size,
        eval_batch_size=args.eval_batch_size,
        cache_dir=str(cache_dir),
    )


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def disk_mb(cache: FeatureCache) -> float:
    return sum(f.stat().st_size for f in cache.path.iterdir()) / 2**20


# ---- training ------------------------------------------------------------------------------
def step_loss(model: TaIDPT, batch: Batch) -> Tensor:
    """TaI-DPT's training loss, computed exactly as ``TaIDPT.training_step`` does (minus the
    logging, which needs a Trainer)."""
    hp = model.hparams
    s_global, s_local = model.branch_scores(
        batch["eot"], batch["tokens"], batch["mask"], hp.text_spatial_scale
    )
    return ranking_loss(s_global, batch["target"], hp.margin) + ranking_loss(
        s_local, batch["target"], hp.margin
    )


def cached_batches(cache: FeatureCache, batch_size: int) -> Iterator[Batch]:
    """Sequential batches read from a text feature cache, as ``TextFeatureDataset`` reads them."""
    dataset = TextFeatureDataset(cache)
    for start in range(0, len(dataset), batch_size):
        yield dataset.read_batch(range(start, min(start + batch_size, len(dataset))))


def reencoded_batches(model: TaIDPT, texts: list[str], labels: np.ndarray, batch_size: int):
    """The same batches, tokenised and run through the frozen text encoder at every step."""
    backbone = model.backbone
    for start in range(0, len(texts), batch_size):
        ids = backbone.tokenize(texts[start : start + batch_size])
        with torch.no_grad():
            feats = backbone.encode_text_tokens(ids)
        target = torch.from_numpy(labels[start : start + batch_size])
        yield {"eot": feats.eot, "tokens": feats.tokens, "mask": feats.mask, "target": target}


def train_epoch(
    model: TaIDPT, initial: tuple[Tensor, Tensor], batches: Iterator[Batch]
) -> tuple[float, list[float], int]:
    """One epoch of SGD on the two contexts, starting from ``initial``; batch building included.
    Returns (seconds, per-step losses, captions seen)."""
    with torch.no_grad():
        model.ctx_global.copy_(initial[0])
        model.ctx_local.copy_(initial[1])
    hp = model.hparams
    optimizer = torch.optim.SGD(
        [model.ctx_global, model.ctx_local],
        lr=hp.lr,
        momentum=hp.momentum,
        weight_decay=hp.weight_decay,
    )
    losses, seen = [], 0
    start = time.perf_counter()
    for batch in batches:
        loss = step_loss(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        seen += len(batch["target"])
    return time.perf_counter() - start, losses, seen


def loss_difference(a: list[float], b: list[float], steps: int) -> dict[str, float]:
    x, y = np.array(a[:steps]), np.array(b[:steps])
    diff = np.abs(x - y)
    return {
        "steps": len(diff),
        "max_abs": float(diff.max()),
        "max_rel": float((diff / np.abs(y)).max()),
    }


def training(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    torch.manual_seed(0)
    data = world(args, root)
    model = TaIDPT(class_names=data.class_names)  # bundled 'world' micro-CLIP
    model.train()
    data.attach(model)
    corpus, corpus_s = timed(data.training_corpus)  # captions + template augmentation
    cache, build_s = timed(data.text_cache)  # cold: tokenise, encode, write (fp16)
    reopened = world(args, root).attach(model)
    reopened.training_corpus()  # the key hashes the corpus; generating it is not opening
    _, open_s = timed(reopened.text_cache)
    # Part of opening: text_features tokenises the whole corpus before it looks for the cache.
    _, tokenize_s = timed(lambda: model.backbone.tokenizer(corpus.texts))
    store = FeatureStore(root)
    parts = frozenset({"eot", "tokens"})
    cache32, build32_s = timed(
        lambda: text_features(store, model.backbone, corpus, parts=parts, dtype="float32")
    )
    initial = (model.ctx_global.detach().clone(), model.ctx_local.detach().clone())
    bs = args.batch_size

    # Features themselves: cache (fp16 / fp32) against the encoder, first batch.
    ref = next(reencoded_batches(model, corpus.texts, corpus.labels, bs))
    width = next(cached_batches(cache, bs))["tokens"].shape[1]  # the first batch's longest
    feature_diff = {}
    for name, c in (("float16", cache), ("float32", cache32)):
        got = next(cached_batches(c, bs))
        tok = (got["tokens"] - ref["tokens"][:, :width]).abs() * ref["mask"][:, :width, None]
        feature_diff[name] = {
            "eot_max_abs": float((got["eot"] - ref["eot"]).abs().max()),
            "tokens_max_abs": float(tok.max()),
            "mask_equal": bool(torch.equal(got["mask"], ref["mask"][:, :width])),
        }

    def epochs(batches: Callable[[], Iterator[Batch]]) -> tuple[float, list[float], int]:
        """Median epoch time over the repeats; losses of the first (all start from `initial`)."""
        runs = [train_epoch(model, initial, batches()) for _ in range(args.repeats)]
        return float(np.median([r[0] for r in runs])), runs[0][1], runs[0][2]

    # Warm-up (allocator, first-call overheads), then the timed epochs.
    train_epoch(model, initial, iter([next(cached_batches(cache, bs))]))
    cached_s, cached_losses, n = epochs(lambda: cached_batches(cache, bs))
    cached32_s, cached32_losses, _ = epochs(lambda: cached_batches(cache32, bs))
    reenc_s, reenc_losses, n_re = epochs(
        lambda: reencoded_batches(model, corpus.texts, corpus.labels, bs)
    )
    assert n == n_re == len(corpus)
    # The library's own loader: shuffled, one item at a time, collated (what Lightning runs).
    loader_s, _, _ = epochs(lambda: iter(data.train_dataloader()))

    saved_per_epoch = reenc_s - cached_s
    return {
        "captions": len(corpus),
        "caption_corpus_with_templates_s": corpus_s,
        "batch_size": bs,
        "repeats": args.repeats,
        "steps_per_epoch": len(cached_losses),
        "token_width_cached": int(width),
        "token_width_reencoded": int(ref["tokens"].shape[1]),
        "text_cache_build_s": build_s,
        "text_cache_build_captions_per_s": len(corpus) / build_s,
        "text_cache_open_s": open_s,
        "text_cache_open_tokenize_s": tokenize_s,
        "text_cache_mb": disk_mb(cache),
        "text_cache_float32_build_s": build32_s,
        "text_cache_float32_mb": disk_mb(cache32),
        "epoch_s": {
            "cached_fp16": cached_s,
            "cached_fp32": cached32_s,
            "cached_fp16_library_loader": loader_s,
            "reencoded": reenc_s,
        },
        "captions_per_s": {
            "cached_fp16": n / cached_s,
            "cached_fp32": n / cached32_s,
            "cached_fp16_library_loader": n / loader_s,
            "reencoded": n / reenc_s,
        },
        "speedup_cached_vs_reencoded": reenc_s / cached_s,
        "break_even_epochs": build_s / saved_per_epoch if saved_per_epoch > 0 else None,
        "feature_diff_first_batch": feature_diff,
        "loss_diff_vs_reencoded": {
            "float16_cache": loss_difference(cached_losses, reenc_losses, args.compare_steps),
            "float32_cache": loss_difference(cached32_losses, reenc_losses, args.compare_steps),
            "float16_cache_whole_epoch": loss_difference(cached_losses, reenc_losses, 10**9),
        },
        "first_losses": {
            "reencoded": reenc_losses[: args.compare_steps],
            "cached_fp16": cached_losses[: args.compare_steps],
            "cached_fp32": cached32_losses[: args.compare_steps],
        },
    }


# ---- evaluation ----------------------------------------------------------------------------
@torch.no_grad()
def score_all(model: TaIDPT, loader) -> Tensor:
    """Scores of every batch with the prompts encoded once, as in a Lightning test epoch."""
    model.on_test_epoch_start()
    try:
        return torch.cat([model.score(batch) for batch in loader])
    finally:
        model.on_test_epoch_end()


def evaluation(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    torch.manual_seed(0)
    model = TaIDPT(class_names=World().class_names)
    model.eval()
    n = args.test_images

    # Cold: world scenes are rendered on demand (memoised per World object by world.split), so
    # the first evaluation pays for rendering too. Render first to report the encoder alone.
    cold = world(args, root).attach(model)
    cold.setup("test")
    _, render_s = timed(lambda: cold.split("test"))
    _, build_s = timed(lambda: cold.image_cache("test"))  # encode + write, images pre-rendered

    # Warm: a new datamodule (nothing in memory) opens the cache and scores from it; median of
    # the repeats, each with its own new datamodule.
    def warm_eval() -> Tensor:
        warm = world(args, root).attach(model)
        warm.setup("test")
        warm.image_cache("test")
        return score_all(model, warm.test_dataloader())

    warm_runs = [timed(warm_eval) for _ in range(args.repeats)]
    warm_scores, warm_s = warm_runs[0][0], float(np.median([r[1] for r in warm_runs]))

    # No cache: every evaluation encodes every image (here pre-rendered, on `cold`'s memoised
    # split), then scores; the figure "with rendering" adds the rendering time measured above.
    dataset = cold.eval_dataset("test", model.backbone.preprocess)
    loader = DataLoader(dataset, batch_size=args.eval_batch_size)
    nocache_scores, nocache_s = timed(lambda: score_all(model, loader))

    return {
        "test_images": n,
        "eval_batch_size": args.eval_batch_size,
        "render_s": render_s,
        "image_cache_mb": disk_mb(cold.image_cache("test")),
        "seconds": {
            "cold_build_with_render": render_s + build_s,
            "cold_build_encoder_only": build_s,
            "warm_eval": warm_s,
            "nocache_eval_with_render": render_s + nocache_s,
            "nocache_eval_encoder_only": nocache_s,
        },
        "images_per_s": {
            "cold_build_with_render": n / (render_s + build_s),
            "cold_build_encoder_only": n / build_s,
            "warm_eval": n / warm_s,
            "nocache_eval_with_render": n / (render_s + nocache_s),
            "nocache_eval_encoder_only": n / nocache_s,
        },
        "speedup_warm_vs_nocache_encoder_only": nocache_s / warm_s,
        "speedup_warm_vs_nocache_with_render": (render_s + nocache_s) / warm_s,
        "scores_max_abs_diff_warm_vs_nocache": float((warm_scores - nocache_scores).abs().max()),
    }


# ---- report --------------------------------------------------------------------------------
def report(train: dict[str, Any], ev: dict[str, Any]) -> None:
    print(
        f"\nTaI-DPT training, {train['captions']} captions (with templates), batch "
        f"{train['batch_size']}, {train['steps_per_epoch']} steps/epoch, median of "
        f"{train['repeats']} epochs"
    )
    print(f"{'path':38} {'epoch s':>8} {'captions/s':>11} {'vs re-encoded':>14}")
    rows = (
        ("re-encoded (tokenise + text encoder)", "reencoded"),
        ("cached fp16 (sequential batches)", "cached_fp16"),
        ("cached fp32 (sequential batches)", "cached_fp32"),
        ("cached fp16 (library loader, shuffled)", "cached_fp16_library_loader"),
    )
    reenc = train["epoch_s"]["reencoded"]
    for label, key in rows:
        s = train["epoch_s"][key]
        print(f"{label:38} {s:8.2f} {train['captions_per_s'][key]:11.0f} {reenc / s:13.2f}x")
    be = train["break_even_epochs"]
    print(
        f"text cache: build (cold) {train['text_cache_build_s']:.2f} s "
        f"({train['text_cache_build_captions_per_s']:.0f} captions/s, "
        f"{train['text_cache_mb']:.1f} MB), open (warm) {train['text_cache_open_s'] * 1e3:.1f} "
        f"ms (tokenising the corpus: {train['text_cache_open_tokenize_s'] * 1e3:.0f} ms); "
        f"pays for itself after {'n/a' if be is None else f'{be:.2f}'} epochs"
    )
    for name in ("float16_cache", "float32_cache", "float16_cache_whole_epoch"):
        d = train["loss_diff_vs_reencoded"][name]
        print(
            f"loss |cached - re-encoded|, {name} ({d['steps']} steps): "
            f"max {d['max_abs']:.2e} (relative {d['max_rel']:.2e})"
        )

    print(f"\nevaluation, {ev['test_images']} test images, batch {ev['eval_batch_size']}")
    print(f"{'path':38} {'seconds':>8} {'images/s':>11} {'warm speed-up':>14}")
    rows = (
        ("no cache, with rendering", "nocache_eval_with_render"),
        ("no cache, encoder only", "nocache_eval_encoder_only"),
        ("cold: build cache, with rendering", "cold_build_with_render"),
        ("cold: build cache, encoder only", "cold_build_encoder_only"),
        ("warm: open cache + score", "warm_eval"),
    )
    warm = ev["seconds"]["warm_eval"]
    for label, key in rows:
        s = ev["seconds"][key]
        print(f"{label:38} {s:8.2f} {ev['images_per_s'][key]:11.0f} {s / warm:13.1f}x")
    print(
        f"rendering alone {ev['render_s']:.2f} s; image cache {ev['image_cache_mb']:.1f} MB; "
        f"max |score warm - no cache| {ev['scores_max_abs_diff_warm_vs_nocache']:.2e}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--captions", type=int, default=20_000, help="caption corpus size (the world recipe's)"
    )
    parser.add_argument("--test-images", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=512, help="training batch size")
    parser.add_argument("--eval-batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3, help="timed epochs per path (median)")
    parser.add_argument("--compare-steps", type=int, default=5, help="steps of loss comparison")
    parser.add_argument(
        "--cache-dir",
        help="keep the caches in a new folder under this one (default: a temporary folder, "
        "removed at the end)",
    )
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    started = time.perf_counter()
    if args.cache_dir:
        Path(args.cache_dir).mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="feature-cache-bench-", dir=args.cache_dir))
    try:
        train = training(args, root)
        ev = evaluation(args, root)
    finally:
        if not args.cache_dir:
            shutil.rmtree(root, ignore_errors=True)
    figures = {
        "training": train,
        "evaluation": ev,
        "threads": torch.get_num_threads(),
        "seconds": time.perf_counter() - started,
    }
    report(train, ev)
    print(f"\ntotal {figures['seconds']:.0f} s on {figures['threads']} threads")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
