"""The example plugin package (examples/mlr-bench-plugin-example) builds, installs and runs.

It is installed for real, with pip, into a temporary folder (``--target``), and used from fresh
interpreters that find it through ``PYTHONPATH``: entry-point discovery, the CLI and the
conformance checks see it exactly as they would see any pip-installed plugin.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "mlr-bench-plugin-example"
CLI = [sys.executable, "-m", "mlr_bench.cli"]
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


def install_example(tmp_path: Path) -> Path:
    """Build and install the example into ``tmp_path/site`` (offline: no dependencies are
    fetched, the build uses this environment's setuptools). pip builds a local folder in
    place, so it builds a copy and leaves no build/ or *.egg-info in the repository."""
    source, site = tmp_path / "src", tmp_path / "site"
    ignore = shutil.ignore_patterns("build", "*.egg-info", "__pycache__")
    shutil.copytree(EXAMPLE, source, ignore=ignore)
    pip = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation"]
    pip += ["--no-index", "--no-cache-dir", "--disable-pip-version-check", "--quiet"]
    done = subprocess.run(
        [*pip, "--target", str(site), str(source)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return site


def run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    done = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stderr[-3000:]}"
    return done


@pytest.mark.slow
def test_example_plugin_installs_lists_runs_and_conforms(tmp_path, demo_root):
    site = install_example(tmp_path)
    entry_points = next(site.glob("mlr_bench_plugin_example-*.dist-info")) / "entry_points.txt"
    assert "textprobe = mlr_plugin_example.method:TextProbe" in entry_points.read_text()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), *sys.path])}

    listing = run([*CLI, "list"], env, tmp_path)
    assert "textprobe" in listing.stdout
    assert "initialised from CLIP class prompts" in listing.stdout  # its docstring's first line

    validate = [*CLI, "validate", "--method", "textprobe", "--data", "folder"]
    validate += ["--data.root", demo_root, "--method.prompt", "a {} icon.", *QUIET]
    validate += ["--trainer.default_root_dir", str(tmp_path / "runs")]
    assert "val/mAP" in run(validate, env, tmp_path).stdout

    # The conformance checks (training step, scores, checkpoint round-trip) on a small world,
    # run where the plugin is installed; DDP is left to the built-in methods' tests (time).
    check = textwrap.dedent(
        f"""
        from mlr_bench import testing
        testing.check_method("textprobe", {str(tmp_path / "checks")!r}, ddp=False)
        print("conforms")
        """
    )
    assert "conforms" in run([sys.executable, "-c", check], env, tmp_path).stdout
