"""Where a run's files live, and writing them without leaving half-written output behind."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

from lightning.pytorch import Trainer


def run_dir(trainer: Trainer) -> Path:
    """The run's own directory: the parent of its ``checkpoints/`` folder.

    Mirrors how ``ModelCheckpoint`` places checkpoints (``<save_dir>/<name>/<version>``) so the
    saved config, checkpoints and results JSON of one run sit together and never collide with
    another run's, whichever logger is used (``trainer.log_dir`` is shared across W&B runs).
    """
    if trainer.loggers:
        logger = trainer.loggers[0]
        save_dir = logger.save_dir or trainer.default_root_dir
        version = logger.version
        version = version if isinstance(version, str) else f"version_{version}"
        path = os.path.join(save_dir, str(logger.name), version)
    else:
        path = trainer.default_root_dir
    return Path(trainer.strategy.broadcast(path))


def atomic_write_text(path: Path, text: str) -> None:
    """Write to a temporary file in the same folder, then rename: no reader sees a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


@cache
def git_revision() -> str | None:
    """Commit of the mlr-bench checkout in use (None for a non-git install)."""
    repo = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    dirty = subprocess.run(
        ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        timeout=5,
    ).stdout.strip()
    return out.stdout.strip() + ("-dirty" if dirty else "")


def versions() -> dict[str, str]:
    """Versions of the packages that change results."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for pkg in ("mlr-bench", "torch", "torchvision", "lightning", "open_clip_torch", "numpy"):
        try:
            found[pkg] = version(pkg)
        except PackageNotFoundError:
            continue
    return found
