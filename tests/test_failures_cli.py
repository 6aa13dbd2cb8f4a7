"""Wrong input to the parser, help, config files and defaults: one line, exit code 2, no run
folder (issue 15). Every case goes through the real entry point, ``run_cli``."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
import yaml

from mlr_bench import registry
from mlr_bench.cli import _cli, rewrite_argv, run_cli
from mlr_bench.testing import world_args

WORLD = world_args(num_test=8, num_val=8, num_captions=32, num_sentences=32)
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in an empty folder, with a user config that does not exist unless a test writes it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLR_BENCH_CONFIG", str(tmp_path / "user.yaml"))
    (tmp_path / "user.yaml").write_text("")
    return tmp_path


def fails(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run the CLI, expect exit code 2 and exactly one error line; return that line."""
    with pytest.raises(SystemExit) as exc:
        run_cli(args)
    assert exc.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(err) == 1, err
    assert "Traceback" not in err[0]
    assert not Path("runs").exists(), "a run folder was left behind"
    return err[0]


# ---- 1. out-of-range data arguments -----------------------------------------------------------
@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        ("batch_size", "0", "--data.batch_size: expected an integer >= 1, got 0"),
        ("batch_size", "-4", "--data.batch_size: expected an integer >= 1, got -4"),
        ("num_test", "0", "--data.num_test: expected an integer >= 1, got 0"),
        ("image_size", "0", "--data.image_size: expected an integer >= 1 (or null), got 0"),
        ("image_size", "-3", "--data.image_size: expected an integer >= 1 (or null), got -3"),
    ],
)
def test_out_of_range_data_argument(option, value, expected, capsys):
    line = fails(["fit", "--method", "zeroshot", *WORLD, f"--data.{option}", value], capsys)
    assert line.endswith(expected)


def test_image_size_the_backbone_cannot_take(capsys):
    line = fails(["validate", "--method", "zeroshot", *WORLD, "--data.image_size", "100"], capsys)
    assert "--data.image_size 100" in line and "multiples of 32 (..., 96, 128, ...)" in line
    assert "native 96" in line  # world micro-CLIP: a ResNet, stride 32
    line = fails(["validate", "--method", "zeroshot", *WORLD, "--data.image_size", "0"], capsys)
    assert "--data.image_size" in line and "got 0" in line
    # twice the native size is no longer refused: the positional embedding is resized
    args = ["--method", "zeroshot", *WORLD, "--data.image_size", "192"]
    cli = _cli(rewrite_argv(args), run=False)
    cli.datamodule.check_image_size(cli.model)
    cli.datamodule.image_size = 0  # reached only by code that skips the constructor's check
    with pytest.raises(ValueError, match=r"image_size 0: .*multiples of 32 \(32, 64, \.\.\.\)"):
        cli.datamodule.check_image_size(cli.model)


# ---- 2. config files: unknown keys, method: ---------------------------------------------------
def test_unknown_key_in_config_names_file_section_and_closest(tmp_path, capsys):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text("model:\n  class_path: taidpt\n  init_args:\n    lrr: 0.1\n")
    line = fails(["fit", *WORLD, "--config", str(cfg)], capsys)
    assert str(cfg) in line and "model.init_args" in line
    assert "'lrr'" in line and "did you mean 'lr'?" in line


def test_unknown_trainer_key_in_config(tmp_path, capsys):
    cfg = tmp_path / "t.yaml"
    cfg.write_text("trainer:\n  max_epochz: 3\n")
    line = fails(["fit", "--method", "zeroshot", *WORLD, "--config", str(cfg)], capsys)
    assert str(cfg) in line and "trainer" in line and "did you mean 'max_epochs'?" in line


@pytest.mark.parametrize(
    "content",
    [
        "method: zeroshot\n",
        "method:\n  class_path: zeroshot\n  init_args:\n    templates: ensemble\n",
        "method: mlr_bench.methods.zeroshot.ZeroShotCLIP\n",
    ],
    ids=["short-name", "class_path-short-name", "class-path"],
)
def test_method_key_in_config_is_accepted(content, tmp_path):
    cfg = tmp_path / "m.yaml"
    cfg.write_text(content)
    cli = _cli(rewrite_argv(["--config", str(cfg), *WORLD]), run=False)
    assert type(cli.model).__name__ == "ZeroShotCLIP"
    if "ensemble" in content:
        assert cli.model.templates == "ensemble"


def test_method_and_model_both_in_config(tmp_path, capsys):
    cfg = tmp_path / "both.yaml"
    cfg.write_text("method: zeroshot\nmodel: taidpt\n")
    line = fails(["fit", *WORLD, "--config", str(cfg)], capsys)
    assert "both 'method:' and 'model:'" in line and "both.yaml" in line


# ---- 3. plugin entry points that are not methods/datamodules ----------------------------------
@pytest.fixture
def fake_plugins(monkeypatch: pytest.MonkeyPatch):
    """Register a class that is no MLRMethod and a function, next to the real entry points."""
    real = registry.entry_points
    fakes = [
        EntryPoint("notamethod", "mlr_bench.errors:MLRBenchError", registry.METHODS_GROUP),
        EntryPoint("afunction", "os.path:join", registry.METHODS_GROUP),
    ]

    def entry_points(group: str):
        found = list(real(group=group))
        return found + [e for e in fakes if e.group == group]

    monkeypatch.setattr(registry, "entry_points", entry_points)
    registry.load_group.cache_clear()
    yield
    registry.load_group.cache_clear()


def test_invalid_plugin_is_marked_in_list(fake_plugins, capsys):
    assert run_cli(["list"]) is None
    out = capsys.readouterr().out
    line = next(row for row in out.splitlines() if row.strip().startswith("notamethod"))
    assert "INVALID" in line and "not a subclass of MLRMethod" in line
    assert "INVALID" in next(r for r in out.splitlines() if r.strip().startswith("afunction"))
    assert "function" in next(r for r in out.splitlines() if r.strip().startswith("afunction"))


def test_running_an_invalid_plugin_gives_the_reason(fake_plugins, capsys):
    line = fails(["fit", "--method", "notamethod", *WORLD], capsys)
    assert "--method notamethod" in line and "not a subclass of MLRMethod" in line


def test_class_path_of_the_wrong_kind(capsys):
    line = fails(["fit", "--method", "mlr_bench.datamodules.world.World", *WORLD], capsys)
    assert "not a subclass of MLRMethod" in line


# ---- 4. missing required arguments ------------------------------------------------------------
def test_missing_root_names_the_option_and_how_to_get_data(capsys):
    line = fails(["fit", "--method", "pvp", "--data", "voc2007"], capsys)
    assert "missing --data.root" in line
    assert "mlr-bench prepare voc2007 --root DIR" in line


def test_missing_method_is_named_as_typed(capsys):
    line = fails(["train", *WORLD], capsys)
    assert "missing --method NAME" in line and "train.model" not in line


# ---- 5. help --------------------------------------------------------------------------------
def test_subcommand_help_uses_the_short_names(capsys):
    with pytest.raises(SystemExit) as exc:
        run_cli(["fit", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--method CONFIG" in out and "--logger NAME" in out and "tensorboard" in out
    assert "--model" not in out


def test_method_help_takes_short_names(capsys):
    with pytest.raises(SystemExit) as exc:
        run_cli(["fit", "--method.help", "zeroshot"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--method.templates" in out and "--model" not in out


def test_top_level_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exc:
        run_cli(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for command in ("fit", "train", "list", "benchmark", "generate", "prepare", "captions"):
        assert f"\n  {command} " in out, command


# ---- 6. --logger tensorboard without tensorboard ----------------------------------------------
def test_tensorboard_missing_is_an_install_hint(capsys, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name in ("tensorboard", "tensorboardX") else find_spec(name, *a),
    )
    line = fails(["fit", "--method", "zeroshot", *WORLD, "--logger", "tensorboard"], capsys)
    assert "pip install tensorboard" in line


# ---- 7. the user config -----------------------------------------------------------------------
def test_user_config_data_roots_apply_only_to_their_dataset(tmp_path, demo_root, capsys):
    (tmp_path / "user.yaml").write_text(
        yaml.safe_dump({"data_roots": {"folder": demo_root, "voc2007": str(tmp_path / "voc")}})
    )
    # world takes no root: the folder's root must not leak into it
    cli = run_cli(["validate", "--method", "zeroshot", *WORLD, *QUIET])
    assert type(cli.datamodule).__name__ == "World"
    # folder gets its root from the file, announced on stderr
    cli = run_cli(["validate", "--method", "zeroshot", "--data", "folder", *QUIET])
    assert cli.datamodule.root == Path(demo_root) or str(cli.datamodule.root) == demo_root
    assert "data_roots.folder" in capsys.readouterr().err
    # an explicit --data.root wins
    with pytest.raises(SystemExit):
        run_cli(["validate", "--method", "zeroshot", "--data", "folder", "--data.root", "nowhere"])
    assert "nowhere" in capsys.readouterr().err


def test_user_config_defaults(tmp_path):
    (tmp_path / "user.yaml").write_text("defaults:\n  trainer:\n    max_epochs: 3\n")
    cli = _cli(rewrite_argv(["--method", "zeroshot", *WORLD]), run=False)
    assert cli.config.trainer.max_epochs == 3


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("data:\n  root: /data/voc\n", "data_roots: {voc2007: /data/voc}"),
        ("data_roots:\n  voc2007s: /x\n", "did you mean 'voc2007'?"),
        ("data_roots:\n  world: /x\n", "takes no --data.root"),
        ("data_root:\n  voc2007: /x\n", "did you mean 'data_roots'?"),
        ("defaults:\n  trainer:\n    max_epochz: 3\n", "did you mean 'max_epochs'?"),
        ("data_roots: [unclosed\n", "not valid YAML"),
    ],
    ids=[
        "legacy-data-root",
        "unknown-dataset",
        "no-root",
        "unknown-section",
        "bad-default",
        "yaml",
    ],
)
def test_bad_user_config_names_the_file(content, expected, tmp_path, capsys):
    (tmp_path / "user.yaml").write_text(content)
    line = fails(["fit", "--method", "zeroshot", *WORLD], capsys)
    assert str(tmp_path / "user.yaml") in line and expected in line


def test_legacy_trainer_section_keeps_working(tmp_path):
    (tmp_path / "user.yaml").write_text("trainer:\n  max_epochs: 2\n")
    cli = _cli(rewrite_argv(["--method", "zeroshot", *WORLD]), run=False)
    assert cli.config.trainer.max_epochs == 2


def test_missing_user_config_named_by_env(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLR_BENCH_CONFIG", str(tmp_path / "absent.yaml"))
    line = fails(["fit", "--method", "zeroshot", *WORLD], capsys)
    assert "absent.yaml" in line and "no such file" in line


# ---- 8. defaults a new user meets ---------------------------------------------------------
def test_unset_epochs_become_the_reference_twenty():
    cli = _cli(rewrite_argv(["--method", "taidpt", *WORLD]), run=False)
    assert cli.config.trainer.max_epochs == 20
    cli = _cli(rewrite_argv(["--method", "taidpt", *WORLD, "--trainer.max_steps", "5"]), run=False)
    assert cli.config.trainer.max_epochs is None  # a step budget is the user's choice


# ---- 9. siblings ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["fit", "--method", "zeroshot", *WORLD, "--trainer.devices", "0"], "devices"),
        (["fit", "--config", "nope.yaml"], "--config: no such file"),
        (["fit", "--method", "zeroshot", *WORLD, "--seed_everything", "abc"], "got 'abc'"),
        (["frobnicate"], "unknown command 'frobnicate'"),
        (["fitt", "--method", "zeroshot"], "Did you mean 'fit'?"),
        ([], "a command is required"),
        (["fit", "--method", "zeroshot", *WORLD, "--data.root", "x"], "--data.root"),
        (["fit", "--method", "taidpt", *WORLD, "--method.lrr", "1"], "--method.lr?"),
        (["fit", "--method", "zeroshot", *WORLD, "--trainer.max_epochz", "1"], "max_epochs?"),
        (["fit", "--method", "zeroshot", *WORLD, "--data.batch_size", "abc"], "an integer"),
        (["fit", "--method", "zeroshot", *WORLD, "--method.templates", "x"], "'single'"),
        (["fit", "--method.help", "zeroshoot"], "Did you mean 'zeroshot'"),
        (["fit", "--method", "nope.mod.Cls", *WORLD], "--method nope.mod.Cls: not a name"),
    ],
    ids=[
        "devices-0",
        "missing-config",
        "seed-abc",
        "unknown-command",
        "misspelled-command",
        "no-command",
        "root-not-accepted",
        "misspelled-method-option",
        "misspelled-trainer-option",
        "batch-size-abc",
        "bad-choice",
        "help-unknown-name",
        "unimportable-class-path",
    ],
)
def test_sibling_mistakes_are_one_line(args, expected, capsys):
    assert expected in fails(args, capsys)


@pytest.mark.slow
def test_console_script_missing_root(tmp_path):
    """The installed entry point, as users run it: one line, exit code 2."""
    out = subprocess.run(
        [sys.executable, "-m", "mlr_bench.cli", "fit", "--method", "pvp", "--data", "voc2007"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**__import__("os").environ, "MLR_BENCH_CONFIG": str(tmp_path / "user.yaml")},
    )
    assert out.returncode == 2
    lines = [line for line in out.stderr.splitlines() if "warning: plugin" not in line]
    assert len(lines) == 1 and "--data.root" in lines[0], out.stderr
