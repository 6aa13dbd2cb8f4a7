"""`mlr-bench benchmark`: the matrix, its outputs, resuming after a kill, failing cells."""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import pytest
from bench_fixtures import COMC_TINY, TINY
from PIL import Image

from mlr_bench import registry
from mlr_bench.benchmark import CellSettings, run_benchmark
from mlr_bench.benchmark import command as command_module
from mlr_bench.benchmark.matrix import Cell, cell_args, resolve_names
from mlr_bench.benchmark.reference import load_reference
from mlr_bench.benchmark.report import leaderboard_markdown
from mlr_bench.benchmark.runner import run_in_process
from mlr_bench.cli import run_cli
from mlr_bench.errors import MLRBenchError

#: A world small enough for seconds per cell; pass-through args reach every cell.
COLUMNS = ["method", "dataset", "backbone", "seed", "status", "mAP", "CF1", "OF1"]
COLUMNS += ["CF1_top3", "OF1_top3", "train_time_s", "eval_time_s", "peak_memory_mb"]


class CountingRunner:
    """Runs cells in-process and records which ran; ``interrupt_at`` simulates Ctrl-C."""

    def __init__(self, interrupt_at: str | None = None) -> None:
        self.ran: list[str] = []
        self.interrupt_at = interrupt_at

    def __call__(self, cell: Cell, cell_dir: Path, args: Sequence[str]) -> None:
        if cell.name == self.interrupt_at:
            raise KeyboardInterrupt
        self.ran.append(cell.name)
        run_in_process(cell, cell_dir, args)


def tiny_recipes(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "comc_world.yaml").write_text(COMC_TINY)
    return folder


def tiny_settings(recipes: Path) -> CellSettings:
    return CellSettings(recipes=recipes, extra_args=TINY, max_epochs=1)


@pytest.fixture(scope="module")
def matrix(tmp_path_factory: pytest.TempPathFactory):
    """zeroshot + comc on the tiny world, seeds 1 and 2, run once for the module."""
    root = tmp_path_factory.mktemp("benchmark")
    recipes = tiny_recipes(root / "recipes")
    runner = CountingRunner()
    result = run_benchmark(
        ["zeroshot", "comc"], ["world"], [1, 2], root / "out", tiny_settings(recipes),
        isolation="in-process", runner=runner,
    )  # fmt: skip
    return result, root, runner


@pytest.mark.slow
def test_outputs_have_expected_columns(matrix) -> None:
    _, root, runner = matrix
    assert runner.ran == [
        "zeroshot-world-s1", "zeroshot-world-s2", "comc-world-s1", "comc-world-s2"
    ]  # fmt: skip
    with (root / "out" / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4
    assert set(COLUMNS) <= set(rows[0])
    assert {r["status"] for r in rows} == {"ok"}
    assert {r["backbone"] for r in rows} == {"world"}
    assert all(float(r["peak_memory_mb"]) > 10 and float(r["train_time_s"]) > 0 for r in rows)
    data = json.loads((root / "out" / "results.json").read_text())
    assert [r["seed"] for r in data["rows"]] == [1, 2, 1, 2]
    assert set(COLUMNS) <= set(data["columns"])
    # budgets: CoMC's steps recorded (1 epoch) against its COCO reference (the world's
    # anchor, 4,200 steps); zero-shot trains nothing and has no ratio
    steps = {r["method"]: r["optimizer_steps"] for r in data["rows"]}
    assert steps["comc"] > 0 and steps["zeroshot"] == 0
    ratios = {r["method"]: r["steps_x_reference"] for r in data["rows"]}
    assert ratios["zeroshot"] is None and ratios["comc"] == steps["comc"] / 4200
    board = (root / "out" / "leaderboard.md").read_text()
    assert f" · {steps['comc']:,} steps ({steps['comc'] / 4200:.2g}× ref)" in board
    # intervals from the kept per-image scores, paired over the two methods
    assert "## Uncertainty" in board and "bootstrap replicates" in board


@pytest.mark.slow
def test_results_match_each_cells_results_test_json(matrix) -> None:
    _, root, _ = matrix
    rows = json.loads((root / "out" / "results.json").read_text())["rows"]
    for row in rows:
        cell_dir = root / "out" / f"{row['method']}-{row['dataset']}-s{row['seed']}"
        found = list(cell_dir.rglob("results_test.json"))
        assert len(found) == 1 and (cell_dir / "result.json").is_file()
        written = json.loads(found[0].read_text())
        for key in ("mAP", "CF1", "OF1", "CF1_top3", "OF1_top3"):
            assert row[key] == pytest.approx(written["metrics"][key])
        assert row["per_class_ap"] == written["per_class_ap"]
        assert written["seed"] == row["seed"]  # --seeds reached --seed_everything


@pytest.mark.slow
def test_leaderboard_has_mean_std_and_bold_best(matrix) -> None:
    result, root, _ = matrix
    text = (root / "out" / "leaderboard.md").read_text()
    rows = json.loads((root / "out" / "results.json").read_text())["rows"]
    means = {}
    for method in ("zeroshot", "comc"):
        values = [r["mAP"] for r in rows if r["method"] == method]
        mean = sum(values) / 2
        std = (sum((v - mean) ** 2 for v in values) / 2) ** 0.5
        means[method] = mean
        assert f"{mean:.2f} ± {std:.2f}" in text
    best = max(means, key=means.get)
    assert f"| {best} | **{means[best]:.2f} ± " in text
    assert text.count("**") >= 2 and result.leaderboard == text


@pytest.mark.slow
def test_plots_are_real_pngs(matrix) -> None:
    result, root, _ = matrix
    names = sorted(p.name for p in result.plots)
    assert names == ["map_by_method.png", "per_class_ap_world.png"]
    for path in result.plots:
        assert path.parent == root / "out" / "plots" and path.stat().st_size > 5_000
        with Image.open(path) as image:
            assert image.format == "PNG" and image.width > 300 and image.height > 150


@pytest.mark.slow
def test_resume_after_kill_runs_only_missing_cells(matrix, tmp_path: Path) -> None:
    _, root, _ = matrix
    out = tmp_path / "out"
    shutil.copytree(root / "out", out)
    for name in ("comc-world-s1", "comc-world-s2"):  # as if killed before these finished
        (out / name / "result.json").unlink()
    settings = tiny_settings(root / "recipes")
    killed = CountingRunner(interrupt_at="comc-world-s2")
    with pytest.raises(KeyboardInterrupt):
        run_benchmark(["zeroshot", "comc"], ["world"], [1, 2], out, settings, runner=killed)
    assert killed.ran == ["comc-world-s1"]
    assert (out / "comc-world-s1" / "result.json").is_file()
    assert not (out / "comc-world-s2" / "result.json").exists()

    resumed = CountingRunner()
    result = run_benchmark(["zeroshot", "comc"], ["world"], [1, 2], out, settings, runner=resumed)
    assert resumed.ran == ["comc-world-s2"]
    assert result.outcome.executed == ["comc-world-s2"] and not result.outcome.failed
    assert len(result.outcome.records) == 4


@pytest.mark.slow
def test_failing_cell_is_reported_and_others_complete(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipes = tiny_recipes(tmp_path / "recipes")
    recipes.joinpath("comc_world.yaml").write_text(  # an option CoMC does not have
        COMC_TINY.replace("template_copies: 1", "template_copies: 1\n    no_such_option: 3")
    )
    out = tmp_path / "out"
    argv = ["benchmark", "--methods", "zeroshot,comc", "--data", "world", "--seeds", "1"]
    argv += ["--out", str(out), "--recipes", str(recipes), "--isolation", "in-process"]
    argv += ["--max-epochs", "1", "--", *TINY]
    with pytest.raises(SystemExit) as exit_info:
        run_cli(argv)
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "1 cell(s) failed" in err and "comc-world-s1" in err
    error = (out / "comc-world-s1" / "error.txt").read_text()
    first = error.splitlines()[0]
    assert first.startswith("cell comc-world-s1 failed: exit code 2") and "no_such_option" in first
    assert not (out / "comc-world-s1" / "result.json").exists()
    rows = {r["method"]: r for r in csv.DictReader((out / "results.csv").open())}
    assert rows["zeroshot"]["status"] == "ok" and float(rows["zeroshot"]["mAP"]) > 0
    assert rows["comc"]["status"] == "failed" and rows["comc"]["mAP"] == ""
    assert "## Failed cells" in (out / "leaderboard.md").read_text()


@pytest.mark.slow
def test_cli_subprocess_cells(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The default isolation: each cell in a child process, output in the cell's log."""
    out = tmp_path / "out"
    argv = ["benchmark", "--methods", "zeroshot", "--data", "world", "--seeds", "3"]
    run_cli([*argv, "--out", str(out), "--", *TINY])  # exit code 0: returns
    printed = capsys.readouterr().out
    assert "# Leaderboard: out" in printed and "plots/map_by_method.png" in printed
    record = json.loads((out / "zeroshot-world-s3" / "result.json").read_text())
    assert record["status"] == "ok" and record["memory"] == "cpu_max_rss"
    assert "Seed set to 3" in (out / "zeroshot-world-s3" / "log.txt").read_text()


# ---- fast unit tests ------------------------------------------------------------------------
def test_all_methods_in_registry_order() -> None:
    loaded = registry.load_group(registry.METHODS_GROUP)[0]
    expected = [n for n in registry.entries(registry.METHODS_GROUP) if n in loaded]
    assert resolve_names("method", "all") == expected
    assert resolve_names("method", "CoMC,zeroshot") == ["comc", "zeroshot"]
    with pytest.raises(MLRBenchError, match=r"--methods: unknown method name\(s\) 'nope'"):
        resolve_names("method", "zeroshot,nope")


def test_cell_args_use_recipe_then_configs_then_pass_through(tmp_path: Path) -> None:
    recipes = tiny_recipes(tmp_path / "recipes")
    settings = CellSettings(
        recipes=recipes, configs=["extra.yaml"], extra_args=["--data.num_test", "7"],
        max_epochs=2, logger="wandb", project="demo", group="demo-1",
    )  # fmt: skip
    args = cell_args(Cell("comc", "world", 5), tmp_path / "cell", settings)
    assert args[:5] == [
        "train",
        "--config",
        str(recipes / "comc_world.yaml"),
        "--config",
        "extra.yaml",
    ]
    assert args[args.index("--seed_everything") + 1] == "5"
    assert args[args.index("--trainer.max_epochs") + 1] == "2"
    assert args[args.index("--trainer.logger") + 1] == "mlr_bench.loggers.MLRWandbLogger"
    assert "demo-1" in args and args[-2:] == ["--data.num_test", "7"]
    plain = cell_args(Cell("zeroshot", "world", 1), tmp_path / "cell", settings)
    assert plain[:5] == ["train", "--method", "zeroshot", "--data", "world"]


def test_reference_numbers_are_marked_and_only_verified_shown() -> None:
    reference = load_reference()
    assert {r.status for r in reference.numbers} == {"log", "seen", "unverified"}
    record = {
        "method": "taidpt", "dataset": "voc2007", "seed": 1, "status": "ok", "backbone": "RN50",
        "weights": "pretrained", "metrics": {"mAP": 88.0, "CF1": 1.0, "OF1": 1.0},
        "per_class_ap": {},
    }  # fmt: skip
    text = leaderboard_markdown("t", [record], ["taidpt"], ["voc2007"], [1], reference)
    assert "voc2007 (reported)" in text and "88.38 [1]" in text and "[log]" in text
    assert "88.30" not in text.split("Unverified")[0]  # the unverified paper number
    assert "taidpt on voc2007 (RN50): 88.30" in text


def test_wandb_leaderboard_is_logged_when_available(monkeypatch, tmp_path: Path) -> None:
    from mlr_bench import loggers

    calls = []

    def fake(rows, project, group, save_dir="runs"):
        calls.append((rows, project, group, save_dir))

    monkeypatch.setattr(loggers, "log_leaderboard", fake, raising=False)
    command_module.log_to_wandb([{"method": "m"}], {"name": "demo", "id": "demo-1"}, tmp_path)
    assert calls == [([{"method": "m"}], "demo", "demo-1", str(tmp_path))]
    monkeypatch.delattr(loggers, "log_leaderboard")
    command_module.log_to_wandb([], {"name": "demo", "id": "demo-1"}, tmp_path)  # no error


@pytest.mark.slow
def test_parallel_workers_give_the_sequential_results(tmp_path: Path, monkeypatch) -> None:
    """--workers 2 runs two cells at once (one thread each); every cell's numbers equal those
    of a sequential run with one thread, exactly, and the records keep the matrix order."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    recipes = tiny_recipes(tmp_path / "recipes")
    argv = ["benchmark", "--methods", "zeroshot,comc", "--data", "world", "--seeds", "1"]
    argv += ["--recipes", str(recipes), "--max-epochs", "1", "--bootstrap", "0"]
    found = {}
    for workers in ("1", "2"):
        out = tmp_path / f"out{workers}"
        run_cli([*argv, "--out", str(out), "--workers", workers, "--", *TINY])
        rows = json.loads((out / "results.json").read_text())["rows"]
        found[workers] = [(r["method"], r["seed"], r["mAP"], r["CF1"], r["OF1"]) for r in rows]
    assert found["2"] == found["1"] and len(found["1"]) == 2


@pytest.mark.slow
def test_submitit_launcher_runs_cells_as_jobs_with_the_same_results(tmp_path: Path) -> None:
    """--launcher submitit-local: the SLURM path (one array job, the benchmark polling) with
    submitit's local executor; the records equal a local run's and a re-run skips them."""
    recipes = tiny_recipes(tmp_path / "recipes")
    argv = ["benchmark", "--methods", "zeroshot,comc", "--data", "world", "--seeds", "1"]
    argv += ["--recipes", str(recipes), "--max-epochs", "1", "--bootstrap", "0"]
    found = {}
    for launcher in ("local", "submitit-local"):
        out = tmp_path / launcher
        run_cli([*argv, "--out", str(out), "--launcher", launcher, "--", *TINY])
        rows = json.loads((out / "results.json").read_text())["rows"]
        found[launcher] = [(r["method"], r["seed"], r["mAP"], r["status"]) for r in rows]
    assert found["submitit-local"] == found["local"]
    assert any((tmp_path / "submitit-local" / ".submitit").iterdir())  # the jobs' logs
    again = [*argv, "--out", str(tmp_path / "submitit-local"), "--launcher", "submitit-local"]
    run_cli([*again, "--", *TINY])  # everything done: nothing submitted, exit code 0


def test_backbones_axis_runs_each_cell_per_backbone_and_splits_columns(tmp_path: Path) -> None:
    """--backbones world,world-vit: one cell per backbone, TagCLIP only on the ViT (skipped on
    the ResNet, not failed), and one leaderboard column per backbone."""
    settings = tiny_settings(tmp_path / "no-recipes")
    settings.recipes = None
    settings.backbones = ("world", "world-vit")
    settings.extra_args = [*TINY, "--method.pretrained", "none"]
    runner = CountingRunner()
    result = run_benchmark(
        ["zeroshot", "tagclip"], ["world"], [1], tmp_path / "out", settings,
        isolation="in-process", runner=runner,
    )  # fmt: skip
    assert runner.ran == ["zeroshot-world-world-s1", "zeroshot-world-world-vit-s1",
                          "tagclip-world-world-vit-s1"]  # fmt: skip
    records = result.outcome.records
    backbones = {(r["method"], r["backbone"]) for r in records if r["status"] == "ok"}
    assert backbones == {("zeroshot", "world"), ("zeroshot", "world-vit"), ("tagclip", "world-vit")}
    board = (tmp_path / "out" / "leaderboard.md").read_text()
    assert "world · world" in board and "world · world-vit" in board
    # the stored settings name the backbone: the same folder resumes without re-running
    again = CountingRunner()
    run_benchmark(
        ["zeroshot", "tagclip"], ["world"], [1], tmp_path / "out", settings,
        isolation="in-process", runner=again,
    )  # fmt: skip
    assert again.ran == []
