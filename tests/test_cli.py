"""The real ``mlr-bench`` CLI on CPU: short names, LightningCLI features, runs, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mlr_bench.cli import rewrite_argv, run_cli
from mlr_bench.registry import UnknownNameError

CLI = [sys.executable, "-m", "mlr_bench.cli"]


def console(args: list[str], cwd: Path, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        CLI + args, cwd=cwd, capture_output=True, text=True, timeout=300, **kwargs
    )


# ---- argv rewriting --------------------------------------------------------------------------
def test_short_names_become_class_paths():
    out = rewrite_argv(["fit", "--method", "zeroshot", "--data=folder", "--method.prompt", "x {}"])
    assert out == [
        "fit",
        "--model=mlr_bench.methods.zeroshot.ZeroShotCLIP",
        "--data=mlr_bench.datamodules.folder.MultiLabelFolder",
        "--model.prompt",
        "x {}",
    ]


def test_class_names_paths_and_files_pass_through():
    assert rewrite_argv(["--method", "ZeroShotCLIP"]) == [
        "--model=mlr_bench.methods.zeroshot.ZeroShotCLIP"
    ]
    assert rewrite_argv(["--data", "my_pkg.data.MyData"]) == ["--data=my_pkg.data.MyData"]
    assert rewrite_argv(["--method=cfg/method.yaml"]) == ["--model=cfg/method.yaml"]
    assert rewrite_argv(["--data.root", "/x"]) == ["--data.root", "/x"]


def test_unknown_name_suggests_the_closest():
    with pytest.raises(UnknownNameError, match=r"Did you mean 'zeroshot'\?.*Known method names"):
        rewrite_argv(["--method", "zeroshoot"])
    with pytest.raises(UnknownNameError, match="folder"):
        rewrite_argv(["--data", "voc"])


# ---- running the CLI in-process ----------------------------------------------------------
def test_fit_fast_dev_run(zeroshot_args, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = run_cli(["fit", *zeroshot_args, "--trainer.fast_dev_run", "1"])
    assert type(cli.model).__name__ == "ZeroShotCLIP"
    assert cli.model.class_names == ["circle", "square", "triangle", "cross", "bar"]  # linked
    assert 0.0 <= float(cli.trainer.callback_metrics["val/mAP"]) <= 100.0


def test_train_writes_config_checkpoint_and_results_per_run(zeroshot_args, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runs = []
    for _ in range(2):  # a second run must not clash with the first
        cli = run_cli(["train", *zeroshot_args, "--seed_everything", "7"])
        runs.append(Path(cli.trainer.logger.log_dir).resolve())
    assert runs[0] != runs[1]
    for run in runs:
        assert run.parent == tmp_path / "runs" / "zeroshot" / "folder"
        config = yaml.safe_load((run / "config.yaml").read_text())
        assert config["model"]["class_path"] == "mlr_bench.methods.zeroshot.ZeroShotCLIP"
        assert config["data"]["init_args"]["root"].endswith("demo-data0")
        results = json.loads((run / "results_test.json").read_text())
        assert results["num_samples"] == 41
        assert results["seed"] == 7
        assert set(results["per_class_ap"]) == {"circle", "square", "triangle", "cross", "bar"}
        assert results["ckpt_path"].startswith(str(run / "checkpoints"))
        assert {"mAP", "CF1", "OF1", "CF1_top3", "OF1_top3"} <= set(results["metrics"])
        ckpt = Path(results["ckpt_path"])
        # only learned parameters are checkpointed: the frozen CLIP is not copied per run
        from mlr_bench.checkpoints import load_weights_file

        state = load_weights_file(ckpt)["state_dict"]  # weights only: no code runs
        assert not any(k.startswith("backbone.") for k in state)
    # same seed, same data, same random tiny backbone -> the same numbers
    r0, r1 = (json.loads((r / "results_test.json").read_text())["metrics"] for r in runs)
    assert r0 == r1


def test_test_subcommand_with_ckpt_path(zeroshot_args, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fitted = run_cli(["fit", *zeroshot_args])
    ckpt = fitted.trainer.checkpoint_callback.best_model_path
    tested = run_cli(["test", *zeroshot_args, "--ckpt_path", ckpt])
    assert tested.trainer.callback_metrics["test/mAP"] > 0


def test_print_config_and_config_roundtrip(zeroshot_args, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        run_cli(["fit", *zeroshot_args, "--method.templates", "ensemble", "--print_config"])
    assert exc.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["init_args"]["templates"] == "ensemble"
    assert printed["evaluator"]["difficult"] == "negative"
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(printed))
    cli = run_cli(["fit", "--config", str(tmp_path / "cfg.yaml"), "--trainer.fast_dev_run", "1"])
    assert cli.model.templates == "ensemble"


def test_evaluator_options_from_cli(zeroshot_args, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = run_cli(
        ["validate", *zeroshot_args, "--evaluator.threshold", "1e9", "--evaluator.top_k", "2"]
    )
    metrics = cli.trainer.callback_metrics
    assert float(metrics["val/OP"]) == 0.0  # nothing reaches the threshold
    assert "val/CF1_top2" in metrics


# ---- the console entry point, as users call it -------------------------------------------
@pytest.mark.slow
def test_help_and_list(tmp_path):
    help_out = console(["fit", "--help"], tmp_path)
    assert help_out.returncode == 0, help_out.stderr
    assert "--trainer.max_epochs" in help_out.stdout
    listing = console(["list"], tmp_path)
    assert listing.returncode == 0, listing.stderr
    assert "zeroshot" in listing.stdout and "Zero-shot CLIP" in listing.stdout
    assert "folder" in listing.stdout


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["fit", "--method", "zeroshoot", "--data", "folder"], "Did you mean 'zeroshot'"),
        (["fit", "--method", "zeroshot", "--data", "folder"], "root"),  # required, missing
        (["fit", "--config", "bad.yaml"], "bad.yaml"),
        (["fit", "--method", "zeroshot", "--data", "folder", "--data.root", "nowhere"], "nowhere"),
    ],
    ids=["unknown-name", "missing-required", "malformed-yaml", "missing-dataset"],
)
def test_bad_input_is_one_clear_message(args, expected, tmp_path):
    (tmp_path / "bad.yaml").write_text("model: [unclosed\n  class_path: x\n")
    out = console(args, tmp_path)
    assert out.returncode == 2, out.stderr
    assert expected in out.stderr
    assert "Traceback" not in out.stderr


def test_predict_writes_scores_per_image(zeroshot_args, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = run_cli(["predict", *zeroshot_args])
    run = Path(cli.trainer.logger.log_dir)
    lines = (run / "predictions.csv").read_text().splitlines()
    assert lines[0] == "index,circle,square,triangle,cross,bar"
    assert len(lines) == 1 + 41
    assert [int(line.split(",")[0]) for line in lines[1:]] == list(range(41))


def test_prepare_is_a_cli_command(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        run_cli(["prepare", "nuswide", "--root", str(tmp_path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Concepts81.txt" in err and "incomplete" in err


def test_the_cli_does_not_import_the_benchmark_that_imports_it():
    """No import circle: a benchmark cell imports the CLI; the CLI names the benchmark command
    as a string (EXTRA_COMMANDS) and imports it only when that command runs."""
    import ast

    import mlr_bench.cli as cli

    tree = ast.parse(Path(cli.__file__).read_text())
    imported = [
        node.module if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    ]
    assert not [m for m in imported if m and m.startswith("mlr_bench.benchmark")]
    code = "import sys, mlr_bench.cli; print('mlr_bench.benchmark' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
