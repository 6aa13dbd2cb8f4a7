"""Entry-point discovery: built-ins and third-party plugins are found the same way."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mlr_bench import registry
from mlr_bench.datamodule import MLRDataModule
from mlr_bench.method import MLRMethod


def test_builtins_register_through_entry_points():
    methods = registry.entries(registry.METHODS_GROUP)
    data = registry.entries(registry.DATAMODULES_GROUP)
    assert methods["zeroshot"].class_path == "mlr_bench.methods.zeroshot.ZeroShotCLIP"
    assert methods["zeroshot"].distribution == "mlr-bench"
    assert issubclass(methods["zeroshot"].load(), MLRMethod)
    assert issubclass(data["folder"].load(), MLRDataModule)


def test_resolve_is_case_insensitive_and_suggests():
    assert registry.resolve("method", "ZeroShot").name == "zeroshot"
    with pytest.raises(registry.UnknownNameError, match="Did you mean 'folder'"):
        registry.resolve("data", "foldr")


def test_describe_uses_the_first_docstring_line():
    from mlr_bench.methods.zeroshot import ZeroShotCLIP

    assert registry.describe(ZeroShotCLIP).startswith("Zero-shot CLIP baseline")


def write_plugin(root: Path) -> None:
    """A third-party plugin as pip would install it: a package plus its dist-info."""
    (root / "mlr_plugin_demo").mkdir()
    (root / "mlr_plugin_demo" / "__init__.py").write_text(
        textwrap.dedent(
            '''
            from mlr_bench.methods.zeroshot import ZeroShotCLIP

            class PromptedZeroShot(ZeroShotCLIP):
                """A plugin method: zero-shot CLIP with a different default prompt."""

                def __init__(self, class_names=None, backbone="mlr-tiny-rn",
                             pretrained=None, prompt="an image of {}."):
                    super().__init__(class_names, backbone, pretrained, "single", prompt)
            '''
        )
    )
    dist = root / "mlr_plugin_demo-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: mlr-plugin-demo\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[mlr_bench.methods]\n"
        "prompted = mlr_plugin_demo:PromptedZeroShot\n"
        "broken = mlr_plugin_missing_module:Nothing\n"
    )


@pytest.mark.slow
def test_third_party_plugin_is_listed_and_selectable(tmp_path, demo_root):
    write_plugin(tmp_path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    cli = [sys.executable, "-m", "mlr_bench.cli"]
    listing = subprocess.run(
        [*cli, "list"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert listing.returncode == 0, listing.stderr
    assert "prompted" in listing.stdout and "A plugin method" in listing.stdout
    # the broken plugin is reported with its name and error, and the others still load
    assert "broken" in listing.stdout and "ModuleNotFoundError" in listing.stdout
    assert "zeroshot" in listing.stdout

    fit = subprocess.run(
        [*cli, "validate", "--method", "prompted", "--data", "folder", "--data.root", demo_root,
         "--method.prompt", "a {} icon."],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert fit.returncode == 0, fit.stderr
    assert "plugin 'broken'" in fit.stderr  # warned about, not fatal
    assert "val/mAP" in fit.stdout
