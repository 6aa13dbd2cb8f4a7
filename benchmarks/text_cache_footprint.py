"""Size of the text feature cache at the reference corpora's scale: padded vs ragged layout.

Prints, for CLIP RN50 (embedding 1024, text width 512) and ViT-B-16 (512, 512), both with
random weights (only shapes matter), the bytes of the text cache of

- 500,000 PVP-like stage-1 sentences (7-22 words each, drawn from a word list), and
- 118,287 COCO-like captions (8-25 words, mean ~10.5),

under the old padded layout (``tokens [N, L, D]`` fp16 with L the corpus's longest text, plus
``eot [N, D]``) and the ragged one (valid tokens only, before or after CLIP's text projection),
computed from the texts' real token lengths (CLIP's tokenizer) and the cache's array specs.
``--build N`` also builds a real RN50 cache of N sentences (bytes on disk per text, texts/s)
and times reading a 512-text batch from it: projected on the CPU in the loader, deferred (the
projection then runs on the training device), and the old layout's fp16 → float32 read.

    OMP_NUM_THREADS=2 python benchmarks/text_cache_footprint.py [--build 5000] [--json PATH]

4-7 minutes on 2 shared CPU cores without ``--build`` (tokenising 618k texts); ``--build N``
adds N / 2-5 seconds there (RN50's text encoder at its full 77-token context).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np
import torch

from mlr_bench.clip import CLIPBackbone
from mlr_bench.features import FeatureStore, TextFeatureDataset, text_features
from mlr_bench.features.store import ArraySpec
from mlr_bench.features.text import finish_text_batch, text_cache_specs
from mlr_bench.text.corpus import TextCorpus

PVP_SENTENCES, COCO_CAPTIONS, CLASSES = 500_000, 118_287, 80
#: Issue 13's target: 500k RN50 PVP sentences in at most this many bytes.
TARGET_BYTES = 12 * 10**9
WORDS = (  # noqa: SIM905 (a list literal would take 130 lines)
    "a an the two three some several many one of on in at with near next to under over behind "
    "beside front top side while and or is are was being sitting standing lying walking riding "
    "holding eating looking playing parked flying covered filled stacked hanging waiting "
    "person man woman child boy girl people dog cat horse sheep cow bird bicycle car bus train "
    "truck boat motorcycle airplane bench chair couch bed table toilet television laptop "
    "keyboard phone book clock vase bottle cup bowl fork knife spoon pizza sandwich banana "
    "apple orange cake umbrella kite skateboard surfboard frisbee ball street road field beach "
    "kitchen room building window wall grass water snow sky tree red blue green white black "
    "yellow brown large small young old wooden little tall busy empty sunny cloudy city park "
    "refrigerator microwave toothbrush hydrant giraffe zebra elephant broccoli carrot donut "
    "suitcase backpack handbag snowboard racket scissors teddy skier skateboarder surfer "
    "pedestrians intersection countertop sidewalk crosswalk cluttered graffiti colorful"
).split()
#: Share of words followed by a comma.
COMMA = 0.08


# ---- corpora -------------------------------------------------------------------------------
def sentences(n: int, words: tuple[int, int] | np.ndarray, seed: int) -> list[str]:
    """``n`` capitalised sentences ending in a period, a few commas; word counts uniform in
    ``words`` (or the given array of counts)."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(words[0], words[1] + 1, n) if isinstance(words, tuple) else words
    out = []
    for count in counts:
        words_ = [w + "," if rng.random() < COMMA else w for w in rng.choice(WORDS, int(count))]
        text = " ".join(words_).rstrip(",")
        out.append(text[0].upper() + text[1:] + ".")
    return out


def coco_word_counts(n: int, seed: int) -> np.ndarray:
    """COCO captions' word counts: 8 or more, mean ~10.5, a thin tail to 25."""
    rng = np.random.default_rng(seed)
    return np.minimum(8 + rng.poisson(2.5, n), 25)


def token_lengths(tokenizer: Callable, texts: list[str], chunk: int = 50_000) -> np.ndarray:
    """Tokens per text, SOS to EOT, as CLIP's tokenizer cuts them (at most its context)."""
    parts = [tokenizer(texts[i : i + chunk]) for i in range(0, len(texts), chunk)]
    return np.concatenate([(ids.argmax(-1) + 1).numpy() for ids in parts])


# ---- sizes ---------------------------------------------------------------------------------
def total(specs: dict[str, ArraySpec]) -> int:
    return sum(spec.nbytes() for spec in specs.values())


def padded_bytes(lengths: np.ndarray, width: int, dim: int) -> int:
    """The old layout: ``tokens [N, L, D]``, ``eot [N, D]`` (fp16), ``length``, ``target``."""
    n = len(lengths)
    return total(
        {
            "tokens": ArraySpec((n, width, dim), "float16"),
            "eot": ArraySpec((n, dim), "float16"),
            "length": ArraySpec((n,), "int16"),
            "target": ArraySpec((n, CLASSES), "int8"),
        }
    )


def ragged_bytes(lengths: np.ndarray, backbone: CLIPBackbone, storage: str) -> int:
    parts = frozenset({"eot", "tokens"})
    return total(text_cache_specs(lengths, CLASSES, backbone, parts, storage, "float16"))


def footprint(backbones: dict[str, CLIPBackbone], corpora: dict[str, Any]) -> list[dict]:
    rows = []
    for corpus, (lengths, width) in corpora.items():
        for name, backbone in backbones.items():
            dim = backbone.embed_dim
            rows.append(
                {
                    "corpus": corpus,
                    "texts": len(lengths),
                    "mean_tokens": float(lengths.mean()),
                    "padded_width": int(width),
                    "backbone": name,
                    "padded": padded_bytes(lengths, width, dim),
                    "ragged_projected": ragged_bytes(lengths, backbone, "projected"),
                    "ragged_pre_projection": ragged_bytes(lengths, backbone, "pre_projection"),
                }
            )
    return rows


# ---- a real cache --------------------------------------------------------------------------
def seconds(fn: Callable[[], Any], repeats: int = 5) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def read_ms(cache, backbone: CLIPBackbone, rows: list[int], longest: int) -> dict[str, float]:
    """Milliseconds to read one batch: projected in the loader (CPU), deferred (the loader's
    part, then the projection, here on the CPU too), and the old layout's fp16 → float32."""
    now, later = TextFeatureDataset(cache), TextFeatureDataset(cache, defer_projection=True)
    deferred = later.read_batch(rows)
    old = np.zeros((len(rows), longest, backbone.embed_dim), np.float16)
    return {
        "old_padded_fp16_to_float32": 1e3 * seconds(lambda: torch.from_numpy(old).float()),
        "ragged_projected_in_loader": 1e3 * seconds(lambda: now.read_batch(rows)),
        "ragged_deferred_loader_part": 1e3 * seconds(lambda: later.read_batch(rows)),
        "ragged_deferred_projection_on_cpu": 1e3
        * seconds(lambda: finish_text_batch(deferred, backbone)),
    }


def build(backbone: CLIPBackbone, n: int, batch: int = 512) -> dict[str, Any]:
    """Build an RN50 cache of ``n`` sentences; bytes per text and the cost of reading batches."""
    texts = sentences(n, (7, 22), seed=1)
    lengths = token_lengths(backbone.tokenizer, texts)
    labels = np.zeros((n, CLASSES), np.int8)
    labels[np.arange(n), np.arange(n) % CLASSES] = 1
    rows = list(range(0, n, max(n // batch, 1)))[:batch]
    with tempfile.TemporaryDirectory() as root:
        start = time.perf_counter()
        cache = text_features(FeatureStore(root), backbone, TextCorpus(texts, labels))
        build_s = time.perf_counter() - start
        disk = sum(f.stat().st_size for f in cache.path.iterdir())
        costs = read_ms(cache, backbone, rows, int(lengths.max()))
    batch_tokens = float(lengths[rows].sum())
    return {
        "texts": n,
        "build_s": build_s,
        "build_texts_per_s": n / build_s,
        "disk_bytes_per_text": disk / n,
        "spec_bytes_per_text": ragged_bytes(lengths, backbone, "pre_projection") / n,
        "read_batch": len(rows),
        "read_batch_mean_tokens": batch_tokens / len(rows),
        "read_ms": costs,
        "projection_gflop": 2 * batch_tokens * backbone.text_width * backbone.embed_dim / 1e9,
    }


# ---- output --------------------------------------------------------------------------------
def gb(n: int) -> str:
    return f"{n / 1e9:.1f} GB"


def table(rows: list[dict]) -> str:
    lines = [
        "| corpus | CLIP | padded (old) | ragged, projected | ragged, before projection |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        corpus = f"{r['texts']:,} {r['corpus']} (mean {r['mean_tokens']:.1f} tokens, L = "
        corpus += f"{r['padded_width']})"
        lines.append(
            f"| {corpus} | {r['backbone']} | {gb(r['padded'])} | {gb(r['ragged_projected'])} "
            f"| {gb(r['ragged_pre_projection'])} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build", type=int, default=0, help="build a real RN50 cache of N texts")
    parser.add_argument(
        "--coco-padded-width",
        type=int,
        default=77,
        help="L of the old layout for COCO: its longest caption (real COCO has captions of 50+ "
        "words, cut at CLIP's 77 tokens); the generated captions stop at 25 words",
    )
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    torch.manual_seed(0)
    backbones = {name: CLIPBackbone(name, None) for name in ("RN50", "ViT-B-16")}
    tokenizer = backbones["RN50"].tokenizer
    start = time.perf_counter()
    pvp = token_lengths(tokenizer, sentences(PVP_SENTENCES, (7, 22), seed=0))
    coco = token_lengths(tokenizer, sentences(COCO_CAPTIONS, coco_word_counts(COCO_CAPTIONS, 0), 0))
    tokenize_s = time.perf_counter() - start
    corpora = {
        "PVP sentences": (pvp, int(pvp.max())),
        "COCO captions": (coco, max(args.coco_padded_width, int(coco.max()))),
    }
    rows = footprint(backbones, corpora)
    print(table(rows))
    rn50_pvp = next(r for r in rows if r["backbone"] == "RN50" and r["corpus"] == "PVP sentences")
    chosen = rn50_pvp["ragged_pre_projection"]
    print(
        f"\nRN50, 500k PVP sentences, default (auto = before projection): {gb(chosen)} "
        f"(target {gb(TARGET_BYTES)}: {'met' if chosen <= TARGET_BYTES else 'MISSED'})"
    )
    print(f"tokenised {len(pvp) + len(coco):,} texts in {tokenize_s:.0f} s")
    figures: dict[str, Any] = {"rows": rows, "tokenize_s": tokenize_s}
    if args.build:
        figures["build"] = build(backbones["RN50"], args.build)
        print(json.dumps(figures["build"], indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)


if __name__ == "__main__":
    main()
