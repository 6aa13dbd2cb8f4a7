"""Why PVP trails TaI-DPT on the world: branch by branch, from a benchmark's trained cells.

Reads the PVP and TaI-DPT cells of a finished ``mlr-bench benchmark`` folder (their tested
checkpoints and test sets) and prints, per seed and as mean ± std:

- the test mAP of each branch alone (PVP: text-global, text-local, PVP-global, PVP-local;
  TaI-DPT: global, local) and of the sums the methods use (PVP: all four, equal weights;
  TaI-DPT: its merge) plus the other partial sums;
- PVP's stage-1 loss per epoch (the pre-training curve, from the cell's stage-1 metrics.csv);
- how close each learned PVP embedding (the stage-1/2 pixel prompts through the frozen image
  encoder, before the adapter) is to its class's text embedding ("a photo of a {c}.") and to
  the mean embedding of real test images of the class, against the other classes' (a PVP
  meant to stand in for images should sit with the images);
- the backbone's modality gap, ‖mean image embedding − mean caption embedding‖.

    python benchmarks/pvp_diagnosis.py --bench runs/bench [--json diagnosis.json]
"""

from __future__ import annotations

import argparse
import csv
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mlr_bench.cli_messages import load_class
from mlr_bench.eval.metrics import compute_metrics

PVP_SUMS = {
    "text (global + local)": ("text_global", "text_local"),
    "PVP (global + local)": ("pvp_global", "pvp_local"),
    "global (text + PVP)": ("text_global", "pvp_global"),
    "local (text + PVP)": ("text_local", "pvp_local"),
    "all four (PVP's inference)": ("text_global", "text_local", "pvp_global", "pvp_local"),
}


def _load(record: dict[str, Any]) -> tuple[Any, Any, dict[str, Any]]:
    """The cell's tested model (its checkpoint) and its datamodule, and its results file."""
    results = json.loads(Path(record["results_file"]).read_text())
    method_cls = load_class(results["method"]["class_path"])
    model = method_cls.load_from_checkpoint(results["ckpt_path"], map_location="cpu")
    data_cls = load_class(results["data"]["class_path"])
    args = {k: v for k, v in results["data"]["init_args"].items() if not k.startswith("_")}
    datamodule = data_cls(**args)
    datamodule.attach(model)
    datamodule.setup("test")
    model.eval()
    return model, datamodule, results


@torch.no_grad()
def _test_features(datamodule: Any) -> dict[str, torch.Tensor]:
    batches = list(datamodule.test_dataloader())
    return {k: torch.cat([b[k] for b in batches]) for k in batches[0] if k != "index"}


def _map(scores: torch.Tensor, targets: torch.Tensor) -> float:
    return float(compute_metrics(scores.numpy(), targets.numpy()).mAP)


@torch.no_grad()
def pvp_cell(record: dict[str, Any]) -> dict[str, Any]:
    model, datamodule, results = _load(record)
    feats = _test_features(datamodule)
    branches = model.branch_logits(feats)
    targets = feats["target"]
    out: dict[str, Any] = {name: _map(s, targets) for name, s in branches.items()}
    for name, parts in PVP_SUMS.items():
        out[name] = _map(sum(branches[p] for p in parts), targets)
    out["test/mAP (results file)"] = results["metrics"]["mAP"]
    model.swap_test_spatial_scales = not model.swap_test_spatial_scales
    swapped = model.branch_logits(feats)
    model.swap_test_spatial_scales = not model.swap_test_spatial_scales
    for name in ("text_local", "pvp_local"):
        out[f"{name}, test spatial scales not swapped"] = _map(swapped[name], targets)
    out["all four, scales not swapped"] = _map(sum(swapped.values()), targets)
    out.update(_without_adapters(model, feats))
    out.update(_stage1_alone(model, feats, Path(record["run_dir"]).parents[2]))
    out.update(_closeness(model, datamodule, feats))
    out["stage-1 loss per epoch"] = _stage1_curve(Path(record["run_dir"]).parents[2])
    return out


@torch.no_grad()
def taidpt_cell(record: dict[str, Any]) -> dict[str, Any]:
    model, datamodule, results = _load(record)
    feats = _test_features(datamodule)
    pooled = feats["global_no_pos"] if model.global_pool == "no_pos" else feats["global"]
    s_global, s_local = model.branch_scores(
        pooled.float(), feats["dense"].float(), None, model.image_spatial_scale
    )
    targets, r = feats["target"], model.merge_rate
    return {
        "global": _map(s_global, targets),
        "local": _map(s_local, targets),
        "merged (TaI-DPT's inference)": _map((1 - r) * s_global + r * s_local, targets),
        "test/mAP (results file)": results["metrics"]["mAP"],
    }


def _without_adapters(model: Any, feats: dict[str, torch.Tensor]) -> dict[str, float]:
    """The local branches with their class vectors taken before the adapters (raw local text
    prompt, raw local PVP): does the adapter, trained on sentence-level (EOT) features, suit
    the token-level vectors it is also applied to?"""
    dense, targets = feats["dense"].float(), feats["target"]
    text_scale, pvp_scale = model.test_spatial_scales()
    raw_text = model.prompts(model.ctx_local)
    _, raw_pvp = model.encode_pvps()
    return {
        "text_local, no text adapter": _map(
            model._local(dense, raw_text, text_scale, None), targets
        ),
        "pvp_local, no image adapter": _map(model._local(dense, raw_pvp, pvp_scale, None), targets),
    }


def _stage1_alone(model: Any, feats: dict[str, torch.Tensor], cell_dir: Path) -> dict[str, float]:
    """The stage-1 prompts as stage 2 received them (the cell's artifact), scored alone: what
    pre-training on sentences gave before the adapters and the text prompts joined."""
    from mlr_bench.methods.pvp import ARTIFACT_NAME, load_prompts

    artifact = next(iter(sorted(cell_dir.rglob(ARTIFACT_NAME))), None)
    if artifact is None:
        return {}
    stage1 = type(model)(**{**model.settings, "stage": "pretrain"}).eval()
    for name, value in load_prompts(artifact, model.class_names).items():
        getattr(stage1, name).data.copy_(value)
    branches = stage1.branch_logits(feats)
    out = {f"stage 1 alone: {k}": _map(v, feats["target"]) for k, v in branches.items()}
    out["stage 1 alone: both"] = _map(sum(branches.values()), feats["target"])
    return out


def _closeness(model: Any, datamodule: Any, feats: dict[str, torch.Tensor]) -> dict[str, float]:
    """Cosines of each class's PVP (global set, before the adapter) to its text prompt and to
    the mean test image of the class (own class vs the mean over the other classes)."""
    pvp, _ = model.encode_pvps()
    text = F.normalize(
        model.backbone.encode_text([f"a photo of a {c}." for c in model.class_names]), dim=-1
    )
    pooled = feats["global_no_pos"] if model.global_pool == "no_pos" else feats["global"]
    images = F.normalize(pooled.float(), dim=-1)
    positive = (feats["target"] > 0).float()
    class_means = F.normalize(positive.T @ images / positive.sum(0).clamp(min=1)[:, None], dim=-1)
    to_images = pvp @ class_means.T
    to_text = pvp @ text.T
    off = ~torch.eye(len(pvp), dtype=torch.bool)
    captions = datamodule.text_corpus("captions").texts[:2000]
    caption_emb = F.normalize(model.backbone.encode_text(list(captions)), dim=-1)
    gap = (images.mean(0) - caption_emb.mean(0)).norm()
    return {
        "cos(PVP_c, text_c)": float(to_text.diagonal().mean()),
        "cos(PVP_c, text_other)": float(to_text[off].mean()),
        "cos(PVP_c, images_c)": float(to_images.diagonal().mean()),
        "cos(PVP_c, images_other)": float(to_images[off].mean()),
        "cos(text_c, images_c)": float((text @ class_means.T).diagonal().mean()),
        "modality gap |mean image - mean caption|": float(gap),
    }


def _stage1_curve(cell_dir: Path) -> list[float]:
    """Mean stage-1 ``train/loss`` per epoch, from the stage's CSV log under the cell."""
    files = sorted(cell_dir.rglob("pretrain/version_*/metrics.csv"))
    if not files:
        return []
    per_epoch: dict[int, list[float]] = defaultdict(list)
    with files[-1].open() as f:
        for row in csv.DictReader(f):
            if row.get("train/loss"):
                per_epoch[int(row["epoch"])].append(float(row["train/loss"]))
    return [float(np.mean(per_epoch[e])) for e in sorted(per_epoch)]


def _summarise(cells: list[dict[str, Any]]) -> dict[str, str]:
    keys = [k for k, v in cells[0].items() if isinstance(v, float)]
    out = {}
    for key in keys:
        values = np.array([c[key] for c in cells])
        out[key] = f"{values.mean():.3f} ± {values.std(ddof=1) if len(values) > 1 else 0:.3f}"
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench", type=Path, required=True, help="a benchmark --out folder")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    records = [json.loads(p.read_text()) for p in sorted(args.bench.glob("*/result.json"))]
    report: dict[str, Any] = {}
    for method, analyse in (("pvp", pvp_cell), ("taidpt", taidpt_cell)):
        cells = sorted(
            (r for r in records if r.get("method") == method and r.get("status") == "ok"),
            key=lambda r: r["seed"],
        )
        if not cells:
            continue
        per_seed = {r["seed"]: analyse(r) for r in cells}
        report[method] = {"per_seed": per_seed, "mean_std": _summarise(list(per_seed.values()))}
        print(f"\n== {method} ({len(cells)} seeds) ==")
        for key, value in report[method]["mean_std"].items():
            print(f"  {key:45s} {value}")
        for seed, cell in per_seed.items():
            curve = cell.get("stage-1 loss per epoch")
            if curve:
                marks = sorted({0, 1, 4, 9, 19, 39, len(curve) - 1} & set(range(len(curve))))
                points = ", ".join(f"epoch {e + 1}: {curve[e]:.2f}" for e in marks)
                print(f"  seed {seed} stage-1 loss  {points}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
