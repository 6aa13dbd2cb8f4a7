"""Every shipped YAML config parses with the real CLI (catches renamed arguments)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mlr_bench.cli import run_cli

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def print_config(args: list[str], capsys) -> dict:
    with pytest.raises(SystemExit) as exc:
        run_cli(["fit", *args, "--print_config"])
    assert exc.value.code == 0
    return yaml.safe_load(capsys.readouterr().out)


@pytest.mark.parametrize("path", sorted((CONFIGS / "method").glob("*.yaml")), ids=lambda p: p.stem)
def test_method_configs(path, demo_root, capsys):
    config = print_config(
        ["--method", str(path), "--data", "folder", "--data.root", demo_root], capsys
    )
    assert config["model"]["class_path"] == yaml.safe_load(path.read_text())["class_path"]


@pytest.mark.parametrize("path", sorted((CONFIGS / "data").glob("*.yaml")), ids=lambda p: p.stem)
def test_data_configs(path, demo_root, capsys):
    root = ["--data.root", demo_root] if path.stem == "folder" else []  # a required argument
    config = print_config(["--method", "zeroshot", "--data", str(path), *root], capsys)
    assert config["data"]["class_path"] == yaml.safe_load(path.read_text())["class_path"]


@pytest.mark.parametrize("path", sorted((CONFIGS / "trainer").glob("*.yaml")), ids=lambda p: p.stem)
def test_trainer_configs(path, demo_root, capsys):
    args = ["--method", "zeroshot", "--data", "folder", "--data.root", demo_root]
    config = print_config([*args, "--trainer", str(path)], capsys)
    for key, value in yaml.safe_load(path.read_text()).items():
        assert config["trainer"][key] == value


@pytest.mark.parametrize(
    "path", sorted((CONFIGS / "experiment").glob("*.yaml")), ids=lambda p: p.stem
)
def test_experiment_configs(path, capsys):
    config = print_config(["--config", str(path)], capsys)
    assert config["model"]["class_path"].startswith("mlr_bench.methods.")
