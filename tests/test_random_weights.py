"""Random-initialised CLIP (``--method.pretrained none``) is labelled wherever a number is read:
results files, the CLI's output, W&B runs and the benchmark's tables."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from test_wandb_logging import _records, offline_runs

from mlr_bench.benchmark.reference import load_reference
from mlr_bench.benchmark.report import RANDOM_LABEL, leaderboard_markdown, to_rows
from mlr_bench.cli import run_cli
from mlr_bench.provenance import weights_provenance, weights_record
from mlr_bench.testing import QUIET, world_args

WORLD = [*world_args(num_test=12, num_val=8, num_captions=64, num_sentences=64), *QUIET]
RANDOM_TINY = ["--method.backbone", "mlr-tiny-rn", "--method.pretrained", "none"]
WARNING = (
    "mlr-bench: warning: CLIP 'mlr-tiny-rn' has random weights (--method.pretrained none): "
    "for rehearsal and throughput only; its mAP means nothing"
)


def _test_run(root: Path, *args: str) -> dict[str, Any]:
    """``mlr-bench test`` of zero-shot CLIP on a tiny world; its ``results_test.json``."""
    run_cli(["test", "--method", "zeroshot", *args, *WORLD, f"--trainer.default_root_dir={root}"])
    (found,) = root.rglob("results_test.json")
    return json.loads(found.read_text())


@pytest.mark.parametrize(
    ("pretrained", "expected"),
    [
        *[(spelling, "random") for spelling in (None, "none", "", "random")],
        *[(source, "pretrained") for source in ("bundled", "openai", "/w/clip.pt")],
    ],
)
def test_provenance_follows_the_backbone(pretrained: str | None, expected: str) -> None:
    method = SimpleNamespace(backbone=SimpleNamespace(pretrained=pretrained))
    assert weights_provenance(method) == expected
    source = weights_record(method)["pretrained"]
    assert source == (None if expected == "random" else pretrained)


def test_provenance_of_a_method_without_a_backbone_is_unknown() -> None:
    assert weights_provenance(SimpleNamespace(hparams={})) == "unknown"
    assert weights_provenance(SimpleNamespace(hparams={"pretrained": "none"})) == "random"


def test_random_run_is_labelled_in_results_cli_and_wandb(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-home"))
    wandb = ["--logger", "wandb", "--seed_everything", "3"]
    results = _test_run(tmp_path / "runs", *RANDOM_TINY, *wandb)
    assert (results["weights"], results["pretrained"]) == ("random", None)
    lines = capsys.readouterr().err.splitlines()
    assert lines.count(WARNING) == 1, lines

    (run,) = offline_runs(tmp_path / "runs")
    assert run.config["weights"] == "random"
    assert run.name == "zeroshot-world-mlr-tiny-rn-random-s3"
    (log,) = run.folder.glob("run-*.wandb")
    tags = {t for r in _records(log) if r.WhichOneof("record_type") == "run" for t in r.run.tags}
    assert tags == {"random-weights"}


def test_bundled_run_is_pretrained_without_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    results = _test_run(tmp_path / "runs")
    assert (results["weights"], results["pretrained"]) == ("pretrained", "bundled")
    assert "random weights" not in capsys.readouterr().err


def _record(method: str, dataset: str, backbone: str, weights: str, mAP: float) -> dict:
    return {
        "method": method, "dataset": dataset, "seed": 1, "status": "ok", "backbone": backbone,
        "weights": weights, "metrics": {"mAP": mAP, "CF1": 1.0, "OF1": 1.0}, "per_class_ap": {},
    }  # fmt: skip


def test_leaderboard_labels_random_cells_and_shows_no_reported_number_beside_them() -> None:
    records = [
        _record("taidpt", "voc2007", "RN50", "random", 95.0),  # random beats real: not bold
        _record("zeroshot", "voc2007", "RN50", "pretrained", 80.0),
        _record("zeroshot", "coco2014", "ViT-B-16", "pretrained", 55.0),
        _record("taidpt", "coco2014", "RN50", "pretrained", 60.0),
        _record("comc", "coco2014", "RN50", "random", 60.0),  # ties the best: still not bold
    ]
    methods, datasets = ["taidpt", "zeroshot", "comc"], ["voc2007", "coco2014"]
    text = leaderboard_markdown("t", records, methods, datasets, [1], load_reference())
    table = text.split("## Details")[0]
    rows = {line.split(" | ")[0].strip("| "): line for line in table.splitlines()}
    assert f"95.00 (n=1) ({RANDOM_LABEL})" in rows["taidpt"]
    assert "**95.00" not in table and "**80.00** (n=1)" in rows["zeroshot"]
    assert "**60.00** (n=1)" in rows["taidpt"] and "**" not in rows["comc"]
    assert rows["comc"].endswith(f"60.00 (n=1) ({RANDOM_LABEL}) | – |")
    # random cell: none of taidpt's VOC numbers (88.38, 88.50 RN50; 88.90 RN101) beside it
    assert not any(n in text for n in ("88.38", "88.50", "88.90"))
    assert "- taidpt on voc2007: run with random weights" in text
    assert "79.70 [" in rows["zeroshot"]  # pretrained RN50 on VOC: RN50 numbers only
    assert "82.80" not in rows["zeroshot"] and "79.90" not in rows["zeroshot"]
    assert "55.50 [" in rows["zeroshot"] and "53.00" not in rows["zeroshot"]  # ViT-B-16 cell
    assert "65.28 [" in rows["taidpt"]  # pretrained RN50 TaI-DPT on COCO
    assert "--method.pretrained none" in text.split("| method")[0]  # the note above the table
    _, csv_rows = to_rows(records)
    assert [r["weights"] for r in csv_rows] == ["random", *["pretrained"] * 3, "random"]
