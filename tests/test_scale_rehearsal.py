"""benchmarks/scale.py at a tiny fraction: the data it writes is what the real datamodules read,
a rerun rewrites nothing, one real CLI cell fills the table, bad input is one line and exit 2.

The full-size run takes tens of minutes (docs/scale.md); this keeps the script working.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from bench_fixtures import run_benchmark_script

from mlr_bench.datamodules.coco2014 import COCO2014
from mlr_bench.datamodules.nuswide import NUSWIDE
from mlr_bench.datamodules.voc2007 import VOC2007

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "scale.py"
FRACTION = 0.002

sys.path.insert(0, str(REPO / "benchmarks"))
from scale.write import Sizes, default_num_val, inventory  # noqa: E402


def _script_module():
    """benchmarks/scale.py itself (its name is taken by the ``scale`` package beside it)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("scale_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


finished_rows = _script_module().finished_rows

SIZES = Sizes().scaled(FRACTION)


def run_script(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return run_benchmark_script(SCRIPT, *args, timeout=timeout)


def mtimes(folder: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def check_datamodules(data: Path) -> None:
    """Every split and corpus the recipes use reads, at the sizes written."""
    captions = data / "coco2014" / "annotations" / "captions_train2017.json"
    voc = VOC2007(str(data / "voc2007"), captions_file=str(captions))
    coco = COCO2014(str(data / "coco2014"), captions_file=str(captions))
    nus = NUSWIDE(
        str(data / "nuswide"),
        captions_file=str(data / "openimages" / "open_images_train_v6_captions.jsonl"),
        sentences_file=str(data / "pvp" / "sentences_nuswide_stage1.txt"),
    )
    expected = {
        voc: (SIZES.voc_test, min(default_num_val("voc2007"), SIZES.voc_trainval)),
        coco: (SIZES.coco_val, min(default_num_val("coco2014"), SIZES.coco_train)),
        nus: (SIZES.nus_test, min(default_num_val("nuswide"), SIZES.nus_train)),
    }
    for dm, (n_test, n_val) in expected.items():
        test, val = dm.split("test"), dm.split("val")
        assert (len(test), len(val)) == (n_test, n_val), type(dm).__name__
        assert all(p.is_file() for p in [*test.paths, *val.paths]), "an image the split lists"
        assert (test.targets == 1).any(dim=1).float().mean() > 0.7, "most images are labelled"
        assert len(dm.text_corpus("captions")) > 0
    assert len(coco.class_names) == 80 and len(nus.class_names) == 81
    assert len(nus.text_corpus("sentences")) > SIZES.pvp_stage1 // 2


@pytest.mark.slow
def test_tiny_rehearsal_writes_official_data_and_runs_a_cell(tmp_path: Path) -> None:
    out = tmp_path / "rehearsal"
    written = run_script("--out", str(out), "--fraction", str(FRACTION), "--skip-run")
    assert written.returncode == 0, written.stderr[-3000:]
    check_datamodules(out / "data")
    before = mtimes(out / "data")
    counted = inventory(out / "data", ["voc2007", "coco2014"])  # what --skip-write reports
    report = json.loads((out / "scale.json").read_text())
    for name in ("data/voc2007", "data/coco2014"):
        assert counted[name]["images"] == report["written"][name]["images"]

    again = run_script("--out", str(out), "--fraction", str(FRACTION), "--skip-run")
    assert again.returncode == 0, again.stderr[-3000:]
    report = json.loads((out / "scale.json").read_text())
    assert all(w["images_written"] == 0 for w in report["written"].values())
    assert all(w["files_written"] == 0 for w in report["written"].values())
    assert mtimes(out / "data") == before, "a resumed write touched existing files"

    ran = run_script(
        "--out", str(out), "--fraction", str(FRACTION), "--skip-write", "--no-probe",
        "--methods", "zeroshot", "--datasets", "voc2007",
    )  # fmt: skip
    assert ran.returncode == 0, ran.stdout[-2000:] + ran.stderr[-3000:]
    report = json.loads((out / "scale.json").read_text())
    (cell,) = report["cells"]
    assert cell["id"] == "zeroshot/voc2007/train/full" and cell["status"] == "ok"
    assert cell["images_encoded"] == SIZES.voc_test + min(500, SIZES.voc_trainval)
    assert cell["peak_rss_mb"] > 0 and cell["wall_s"] > 0 and cell["caches_built"]
    assert 0 < cell["model_rss_mb"] <= cell["peak_rss_mb"], "the model's memory is measured"
    assert cell["peak_above_model_mb"] == cell["peak_rss_mb"] - cell["model_rss_mb"]
    assert cell["anon_above_model_mb"] is not None and cell["max_file_backed_mb"] > 0
    assert "## Memory (MB)" in (out / "scale.md").read_text()
    (row,) = report["extrapolation"]
    assert (row["method"], row["dataset"], row["stage"]) == ("zeroshot", "voc2007", "train")
    assert row["images"] == Sizes().voc_test + 500  # extrapolations are for the full sizes
    assert "| zeroshot/voc2007/train/full | world@64px | ok |" in (out / "scale.md").read_text()

    kept = run_script(
        "--out", str(out), "--fraction", str(FRACTION), "--skip-write", "--no-probe",
        "--methods", "zeroshot", "--datasets", "voc2007",
    )  # fmt: skip
    assert kept.returncode == 0 and "done earlier, kept" in kept.stdout, kept.stderr[-2000:]
    assert json.loads((out / "scale.json").read_text())["cells"] == [cell]


def test_rerun_patterns_name_the_cells_to_run_again() -> None:
    previous = {
        "cells": [
            {"id": "zeroshot/coco2014/train/full", "status": "ok"},
            {"id": "zeroshot/nuswide/train/full", "status": "ok"},
            {"id": "comc/nuswide/train/full", "status": "ok"},
            {"id": "comc/voc2007/train/full", "status": "failed (exit 1)"},
        ]
    }
    assert set(finished_rows(previous, None)) == {
        "zeroshot/coco2014/train/full", "zeroshot/nuswide/train/full", "comc/nuswide/train/full"
    }  # fmt: skip
    assert set(finished_rows(previous, "*/nuswide/*")) == {"zeroshot/coco2014/train/full"}
    assert set(finished_rows(previous, "zeroshot/*, comc/nuswide/train/full")) == set()
    assert finished_rows(previous, "*") == {}


@pytest.mark.parametrize(
    "args",
    [
        ["--fraction", "0"],
        ["--fraction", "1.5"],
        ["--methods", "zeroshot,nope"],
        ["--datasets", "imagenet"],
        ["--backbone-subset-images", "0"],
        ["--world-image-size", "50"],
        ["--bogus"],
        ["--skip-write"],
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, args: list[str]) -> None:
    done = run_script("--out", str(tmp_path / "x"), *args, "--skip-run", timeout=60)
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not (tmp_path / "x").exists()


def test_out_inside_the_repository_is_refused() -> None:
    done = run_script("--out", str(REPO / "scale-data"), "--skip-run", timeout=60)
    assert done.returncode == 2 and "inside the repository" in done.stderr
    assert not (REPO / "scale-data").exists()
