"""Tables of the rehearsal: what each cell measured, RN50's unit costs, the extrapolations.

The extrapolated time of a full recipe with RN50 on this CPU is the sum of its dominant terms,
each a count at full size times a unit cost measured with RN50 on the probe subset:

- text cache: texts (kept corpus + template copies, counted by the full-size world run)
  x seconds per text;
- image caches: (test + validation [+ generated]) images x seconds per image at the recipe's
  resolution;
- CoMC's bank: classes x 80 templates x seconds per text;
- training: epochs x ceil(texts / batch) steps x seconds per step (the probe's, on its dataset,
  scaled by classes / probe classes: every step encodes 2 x classes prompts, which dominates);
- evaluation: one validation pass per epoch and the test pass (the probe's pass times, scaled
  the same way; scoring from the cache is negligible beside the prompt encoding).

Everything is written atomically after every cell, so a killed rehearsal keeps its rows.
"""

from __future__ import annotations

import importlib
import inspect
import io
import json
import math
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image

from scale.runs import REPO, Cell, recipe
from scale.text import class_table
from scale.write import Sizes, default_num_val

#: CoMC's bank: the 80-template ensemble (configs: bank_templates ensemble).
BANK_TEMPLATES = 80
HOUR = 3600.0


# ---- per-cell summary ------------------------------------------------------------------------
def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def _rate(count: float, seconds: float) -> float | None:
    return count / seconds if count and seconds > 0 else None


def cell_row(cell: Cell) -> dict[str, Any]:
    """One table row: throughput, memory and disk of a finished (or failed) cell."""
    result, timing = cell.result, cell.result.get("timing", {})
    built = [c for c in timing.get("caches", []) if c.get("built")]
    images = [c for c in built if c.get("kind") in ("image", "generated_images")]
    texts = [c for c in built if c.get("kind") == "text"]
    steps = [] if cell.method == "zeroshot" else list(timing.get("steps", []))  # nothing trains
    step_s = _mean(steps[1:]) if len(steps) > 1 else _mean(steps)
    corpora = timing.get("corpora", [])
    n_img = sum(c["rows"] for c in images)
    n_txt = sum(c["rows"] for c in texts)
    corpus = [c["rows"] for c in timing.get("caches", []) if c.get("kind") == "text"]
    return {
        "id": cell.id,
        "method": cell.method,
        "dataset": cell.dataset,
        "stage": cell.stage,
        "kind": cell.kind,
        "backbone": cell_backbone(cell),
        "status": result.get("status", "not run"),
        "wall_s": result.get("wall_s"),
        "peak_rss_mb": result.get("peak_rss_mb"),
        "model_rss_mb": timing.get("model_rss_mb"),
        "peak_above_model_mb": _above(result.get("peak_rss_mb"), timing.get("model_rss_mb")),
        # sampled after every batch: heap/tensors vs memory-mapped files (droppable page cache)
        "anon_above_model_mb": _above(timing.get("max_rssanon_mb"), timing.get("model_rssanon_mb")),
        "max_file_backed_mb": timing.get("max_rssfile_mb"),
        "images_encoded": n_img,
        "image_seconds": sum(c["fill_seconds"] for c in images),
        "images_per_s": _rate(n_img, sum(c["fill_seconds"] for c in images)),
        "texts_encoded": n_txt,
        "texts_in_corpus": max(corpus) if corpus else 0,  # built or opened: what it trains on
        "text_seconds": sum(c["fill_seconds"] for c in texts),
        "texts_per_s": _rate(n_txt, sum(c["fill_seconds"] for c in texts)),
        "corpus_read_s": sum(c["seconds"] for c in corpora) or None,
        "corpus_texts": [(c.get("read"), c.get("kept")) for c in corpora],
        "steps": len(steps),
        "step_s": step_s,
        "steps_per_s": 1 / step_s if step_s else None,
        "val_pass_s": _mean(timing.get("val", [])),
        "test_pass_s": _mean(timing.get("test", [])),
        "caches_built": {c["path"].rsplit("/", 1)[-1]: c["bytes"] for c in built},
        "cache_dirs_new": result.get("new_caches", {}),
        "generated_images": result.get("generated_images"),
        "log": result.get("log"),
    }


def _above(peak: float | None, base: float | None) -> float | None:
    return None if peak is None or base is None else peak - base


def cell_backbone(cell: Cell) -> str:
    if cell.stage == "generate":
        return "world renderer"
    if cell.kind == "full":
        size = _arg(cell.command, "--data.image_size") or "?"
        return f"world@{size}px"
    return f"RN50@{recipe_settings(cell.method, cell.dataset)['image_size']}px"


def _arg(command: list[str], option: str) -> str | None:
    return command[command.index(option) + 1] if option in command else None


# ---- recipes and unit costs ------------------------------------------------------------------
def recipe_settings(method: str, dataset: str) -> dict[str, Any]:
    """Epochs, batch, resolution and template copies of the shipped recipe (the method's own
    defaults where the recipe leaves them out)."""
    config = yaml.safe_load(recipe(method, dataset).read_text())
    model = {**method_defaults(config["model"]["class_path"]), **config["model"]["init_args"]}
    data = config.get("data", {}).get("init_args", {})
    return {
        "epochs": int(config.get("trainer", {}).get("max_epochs", 20)),
        "pretrain_epochs": int(model.get("pretrain_epochs") or 0),
        "batch_size": int(data.get("batch_size", 64)),
        "image_size": int(data.get("image_size") or 224),
        "template_copies": int(model.get("template_copies") or 0),
        "pretrain_template_copies": int(model.get("pretrain_template_copies") or 0),
    }


def method_defaults(class_path: str) -> dict[str, Any]:
    """Init defaults of a method class, e.g. PVP's 400 / 200 template copies."""
    module, name = class_path.rsplit(".", 1)
    cls = getattr(importlib.import_module(module), name)
    parameters = inspect.signature(cls.__init__).parameters.values()
    return {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}


def unit_costs(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """RN50 seconds per image (by resolution), per text, per step and per eval pass."""
    probes = [r for r in rows if r["kind"] == "probe" and r["status"] == "ok"]
    per_image: dict[str, float] = {}
    for size in sorted({r["backbone"] for r in probes if r["images_encoded"]}):
        chosen = [r for r in probes if r["backbone"] == size and r["images_encoded"]]
        n = sum(r["images_encoded"] for r in chosen)
        per_image[size.split("@")[1]] = sum(r["image_seconds"] for r in chosen) / n
    texts = [r for r in probes if r["texts_encoded"]]
    n_text = sum(r["texts_encoded"] for r in texts)
    steps = {f"{r['method']}/{r['stage']}": r["step_s"] for r in probes if r["step_s"]}
    evals = {
        f"{r['method']}/{r['stage']}": {"val": r["val_pass_s"], "test": r["test_pass_s"]}
        for r in probes
    }
    datasets = sorted({r["dataset"] for r in probes})
    return {
        "per_image_s": per_image,
        "per_text_s": sum(r["text_seconds"] for r in texts) / n_text if n_text else None,
        "per_step_s": steps,
        "eval_pass_s": evals,
        "probe_dataset": datasets[0] if datasets else None,
        "probe_classes": len(class_table(datasets[0])[0]) if datasets else None,
    }


# ---- extrapolation ---------------------------------------------------------------------------
def image_counts(dataset: str, sizes: Sizes) -> tuple[int, int]:
    """(test, validation) images the recipe encodes at these sizes."""
    test, train = {
        "voc2007": (sizes.voc_test, sizes.voc_trainval),
        "coco2014": (sizes.coco_val, sizes.coco_train),
        "nuswide": (sizes.nus_test, sizes.nus_train),
    }[dataset]
    return test, min(default_num_val(dataset), train)


def stage_texts(
    rows: list[dict[str, Any]], method: str, dataset: str, stage: str, written: int, extra: int,
    fraction: float,
) -> tuple[int, str]:  # fmt: skip
    """Texts a stage trains on: counted by its world run (kept corpus + ``extra`` template
    texts; the corpus part divided by the fraction of a partial rehearsal), else the full
    written count + templates."""
    for row in rows:
        same = (row["method"], row["dataset"], row["stage"]) == (method, dataset, stage)
        counted = row.get("texts_in_corpus") or row["texts_encoded"]
        if same and row["kind"] == "full" and counted:
            if fraction >= 1:
                return counted, "counted"
            scaled = int(max(counted - extra, 0) / fraction) + extra
            return scaled, f"counted at {fraction:g}, scaled"
    return written + extra, "written"


def extrapolate(
    rows: list[dict[str, Any]], costs: dict[str, Any], sizes: Sizes, methods: list[str],
    datasets: list[str], fraction: float = 1.0,
) -> list[dict[str, Any]]:  # fmt: skip
    """Hours of each full recipe (per stage) with RN50 on this machine, term by term."""
    out = []
    c_text = costs.get("per_text_s")
    probe_classes = costs.get("probe_classes") or 1
    for dataset in datasets:
        classes = len(class_table(dataset)[0])
        n_test, n_val = image_counts(dataset, sizes)
        for method in methods:
            for stage in stages_of(method):
                out.append(
                    _extrapolate_stage(
                        rows,
                        costs,
                        sizes,
                        method,
                        dataset,
                        stage,
                        classes,
                        n_test,
                        n_val,
                        c_text,
                        classes / probe_classes,
                        fraction,
                    )
                )
    return out


def stages_of(method: str) -> list[str]:
    return ["stage1", "stage2"] if method == "pvp" else ["train"]


def _written_texts(method: str, dataset: str, stage: str, sizes: Sizes) -> int:
    if method == "pvp":
        return sizes.pvp_stage1 if stage == "stage1" else sizes.pvp_stage2
    if method == "comc":
        return sizes.comc
    if method in ("taidpt", "t2ipal"):
        return sizes.narratives if dataset == "nuswide" else sizes.caption_images
    return 0


def _extrapolate_stage(
    rows: list[dict[str, Any]], costs: dict[str, Any], sizes: Sizes, method: str, dataset: str,
    stage: str, classes: int, n_test: int, n_val: int, c_text: float | None, scale: float,
    fraction: float,
) -> dict[str, Any]:  # fmt: skip
    settings = recipe_settings(method, dataset)
    key = f"{method}/{stage}"
    c_img = costs["per_image_s"].get(f"{settings['image_size']}px")
    c_step = costs["per_step_s"].get(key)
    passes = costs["eval_pass_s"].get(key, {})
    copies = (
        settings["pretrain_template_copies"] if stage == "stage1" else settings["template_copies"]
    )
    row: dict[str, Any] = {"method": method, "dataset": dataset, "stage": stage}
    terms: dict[str, float | None] = {}
    n_text, source = 0, "-"
    if method != "zeroshot":
        written = _written_texts(method, dataset, stage, sizes)
        templates = classes * (copies + 79) if copies > 0 else 0  # see template_corpus
        n_text, source = stage_texts(rows, method, dataset, stage, written, templates, fraction)
        terms["text_cache"] = n_text * c_text if c_text else None
    epochs = settings["pretrain_epochs"] if stage == "stage1" else settings["epochs"]
    batch = settings["batch_size"]
    images = 0 if stage == "stage1" else n_test + n_val
    steps_per_epoch = math.ceil(n_text / batch) if n_text else 0
    if method == "t2ipal":  # one generated image per kept caption; epochs run the larger source
        generated = max(n_text - classes * (copies + 79), 0)
        images += generated
    terms["image_caches"] = images * c_img if c_img and images else (0.0 if not images else None)
    if method == "comc":
        terms["bank"] = classes * BANK_TEMPLATES * c_text if c_text else None
    if method != "zeroshot":
        terms["training"] = epochs * steps_per_epoch * c_step * scale if c_step else None
    val, test = passes.get("val"), passes.get("test")
    eval_s = 0.0
    if stage != "stage1":
        val_passes = 1 if method == "zeroshot" else epochs
        eval_s = (val_passes * (val or 0) + (test or 0)) * scale
    terms["evaluation"] = eval_s if (val or test or stage == "stage1") else None
    known = [v for v in terms.values() if v is not None]
    row.update(
        {
            "texts": n_text,
            "texts_from": source,
            "images": images,
            "image_size": settings["image_size"] if images else None,
            "epochs": epochs if method != "zeroshot" else 0,
            "steps_per_epoch": steps_per_epoch,
            "hours": {k: (v / HOUR if v is not None else None) for k, v in terms.items()},
            "total_hours": sum(known) / HOUR if known else None,
            "complete": len(known) == len(terms),
        }
    )
    return row


# ---- image loading at real sizes ---------------------------------------------------------
def loading_costs(repeats: int = 100) -> dict[str, float]:
    """Seconds to decode + preprocess (224 px) one generated 64 px JPEG and one 500 x 375 JPEG
    of photo-like content (VOC's typical size): the probe reads the small ones, real data the
    large ones, so the difference is added per image in the docs' reading."""
    from mlr_bench.transforms import clip_eval_transform
    from scale.write import jpeg_bytes

    rng = np.random.default_rng(0)
    small = jpeg_bytes(0, 0, 0)
    base = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
    big_pixels = np.asarray(base.resize((500, 375), Image.BICUBIC), dtype=np.int16)
    big_pixels = (big_pixels + rng.integers(-20, 21, (375, 500, 1))).clip(0, 255)
    buffer = io.BytesIO()
    Image.fromarray(big_pixels.astype(np.uint8)).save(buffer, format="JPEG", quality=90)
    big = buffer.getvalue()
    transform = clip_eval_transform(224)
    out = {}
    for name, data in (("64px_jpeg_s", small), ("500x375_jpeg_s", big)):
        start = time.perf_counter()
        for _ in range(repeats):
            with Image.open(io.BytesIO(data)) as im:
                transform(im.convert("RGB"))
        out[name] = (time.perf_counter() - start) / repeats
    out["500x375_jpeg_bytes"] = len(big)
    return out


# ---- machine, output ---------------------------------------------------------------------
def machine() -> dict[str, Any]:
    import torch

    model = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    try:
        revision = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, check=False,
        ).stdout.strip()  # fmt: skip
    except OSError:
        revision = ""
    return {
        "cpu": model or platform.processor(),
        "cores": os.cpu_count(),
        "gpu": torch.cuda.is_available(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "memory_gb": _memory_gb(),
        "git": revision,
    }


def _memory_gb() -> float | None:
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return None
    return round(pages / 2**30, 1)


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _mb(nbytes: int) -> str:
    return f"{nbytes / 2**20:,.1f} MB"


def _gb_or_mb(nbytes: int) -> str:
    return f"{nbytes / 2**30:,.2f} GB" if nbytes >= 2**30 else _mb(nbytes)


def markdown(report: dict[str, Any]) -> str:
    """The report as markdown: settings, data, cells, unit costs, extrapolations."""
    lines = ["# Scale rehearsal", ""]
    s, m = report["settings"], report["machine"]
    cells_s = sum(r.get("wall_s") or 0 for r in report.get("cells", []))
    writing_s = sum(w.get("seconds") or 0 for w in report.get("written", {}).values())
    commands = report.get("commands") or [s["command"]]
    lines += [
        "Commands (in order; a later one keeps the cells an earlier one finished):",
        "",
        *(f"    {command}" for command in commands),
        "",
        f"Time: writing the data {_fmt(writing_s / 60)} min, the cells {_fmt(cells_s / 60)} min "
        f"(sum of their wall times), this invocation {_fmt(report.get('total_wall_s', 0) / 60)} "
        "min.",
        "",
        f"Machine: {m['cores']} cores ({m['cpu']}), {m['memory_gb']} GB RAM, GPU: {m['gpu']}; "
        f"OMP_NUM_THREADS={m['omp_num_threads']}, torch threads {m['torch_threads']}, "
        f"torch {m['torch']}, git {m['git']}. Fraction {s['fraction']}, seed {s['seed']}.",
        "",
        "## Data written",
        "",
        "| dataset | images | image bytes | seconds | files written |",
        "|---|---|---|---|---|",
    ]
    for name, w in report.get("written", {}).items():
        lines.append(
            f"| {name} | {_fmt(w.get('images'))} | {_gb_or_mb(w.get('image_bytes', 0))} | "
            f"{_fmt(w.get('seconds'))} | {_fmt(w.get('images_written'))} images, "
            f"{_fmt(w.get('files_written'))} text files |"
        )
    if any(w.get("counted_on_disk") for w in report.get("written", {}).values()):
        lines += ["", "Written by an earlier invocation whose report was lost: counted on disk."]
    if report.get("data_bytes"):
        lines += ["", f"Data folder on disk: {_gb_or_mb(report['data_bytes'])}."]
    lines += ["", "## Cells", "", CELL_HEADER, "|" + "---|" * CELL_COLUMNS]
    lines += [cell_line(r) for r in report.get("cells", [])]
    lines += memory_lines(report.get("cells", []))
    lines += ["", "## RN50 unit costs (probe subset, random weights)", ""]
    costs = report.get("rn50_costs", {})
    for size, value in costs.get("per_image_s", {}).items():
        lines.append(f"- per image at {size}: {_fmt(value, 3)} s")
    lines.append(f"- per text (77 tokens): {_fmt(costs.get('per_text_s'), 3)} s")
    for key, value in costs.get("per_step_s", {}).items():
        lines.append(
            f"- per step, {key} on {costs.get('probe_dataset')} "
            f"({costs.get('probe_classes')} classes): {_fmt(value, 1)} s"
        )
    load = report.get("loading", {})
    if load:
        lines.append(
            f"- decode + preprocess one image: {_fmt(load['64px_jpeg_s'] * 1000, 2)} ms (64 px "
            f"JPEG as written) vs {_fmt(load['500x375_jpeg_s'] * 1000, 2)} ms (500x375 JPEG, "
            f"{_fmt(load['500x375_jpeg_bytes'] // 1024)} KB)"
        )
    lines += ["", "## Extrapolated full recipes, RN50 on this machine (hours)", ""]
    lines += [EXTRA_HEADER, "|" + "---|" * EXTRA_COLUMNS]
    lines += [extrapolation_line(e) for e in report.get("extrapolation", [])]
    return "\n".join(lines) + "\n"


CELL_HEADER = (
    "| cell | backbone | status | wall s | images (img/s) | texts (texts/s) | s/step (steps) "
    "| val s | test s | corpus read s | peak RSS MB (above model) | caches built |"
)
CELL_COLUMNS = 12
EXTRA_HEADER = (
    "| method | dataset | stage | texts | images | epochs x steps | text cache | image caches "
    "| CoMC bank | training | evaluation | total |"
)
EXTRA_COLUMNS = 12


def _cache_kind(name: str) -> str:
    """``image-<hash>`` → image, ``corpora/coco_captions-<hash>.npz`` → corpus."""
    return "corpus" if name.startswith("corpora/") else name.split("-")[0]


def cell_line(r: dict[str, Any]) -> str:
    caches = ", ".join(f"{_cache_kind(n)} {_gb_or_mb(b)}" for n, b in r["cache_dirs_new"].items())
    images = (
        f"{_fmt(r['images_encoded'])} ({_fmt(r['images_per_s'])})" if r["images_encoded"] else "–"
    )
    if r.get("generated_images"):
        images = f"{_fmt(r['generated_images'])} generated"
    texts = f"{_fmt(r['texts_encoded'])} ({_fmt(r['texts_per_s'])})" if r["texts_encoded"] else "–"
    if not r["texts_encoded"] and r.get("texts_in_corpus"):
        texts = f"{_fmt(r['texts_in_corpus'])} (cached)"
    steps = f"{_fmt(r['step_s'], 2)} ({r['steps']})" if r["steps"] else "–"
    return (
        f"| {r['id']} | {r['backbone']} | {r['status']} | {_fmt(r['wall_s'])} | {images} | "
        f"{texts} | {steps} | {_fmt(r['val_pass_s'])} | {_fmt(r['test_pass_s'])} | "
        f"{_fmt(r['corpus_read_s'])} | {_peak(r)} | {caches or '–'} |"
    )


def memory_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Peak memory against the process's own (imports + model, before any data): the true peak
    (``ru_maxrss``, with memory-mapped cache pages) and, sampled after every batch, the heap
    above the model's and the file-backed pages (page cache the kernel can drop)."""
    measured = [r for r in rows if r.get("model_rss_mb") is not None]
    if not measured:
        return []
    lines = [
        "",
        "## Memory (MB)",
        "",
        "| cell | model | peak | peak above model | heap above model | file-backed |",
        "|---|---|---|---|---|---|",
    ]
    for r in measured:
        lines.append(
            f"| {r['id']} | {_fmt(r['model_rss_mb'], 0)} | {_fmt(r['peak_rss_mb'], 0)} | "
            f"{_fmt(r['peak_above_model_mb'], 0)} | {_fmt(r.get('anon_above_model_mb'), 0)} | "
            f"{_fmt(r.get('max_file_backed_mb'), 0)} |"
        )
    return lines


def _peak(r: dict[str, Any]) -> str:
    above = r.get("peak_above_model_mb")
    return _fmt(r["peak_rss_mb"], 0) + ("" if above is None else f" ({_fmt(above, 0)})")


def extrapolation_line(e: dict[str, Any]) -> str:
    h = e["hours"]
    total = _fmt(e["total_hours"]) + ("" if e["complete"] else " (partial)")
    texts = f"{_fmt(e['texts'])} ({e['texts_from']})" if e["texts"] else "–"
    return (
        f"| {e['method']} | {e['dataset']} | {e['stage']} | {texts} | {_fmt(e['images'])} | "
        f"{e['epochs']} x {_fmt(e['steps_per_epoch'])} | {_fmt(h.get('text_cache'))} | "
        f"{_fmt(h.get('image_caches'))} | {_fmt(h.get('bank'))} | {_fmt(h.get('training'))} | "
        f"{_fmt(h.get('evaluation'))} | {total} |"
    )


def save(out: Path, report: dict[str, Any]) -> None:
    """``scale.json`` and ``scale.md`` in the rehearsal folder, both atomically."""
    write_atomic(out / "scale.json", json.dumps(report, indent=1, default=str))
    write_atomic(out / "scale.md", markdown(report))
