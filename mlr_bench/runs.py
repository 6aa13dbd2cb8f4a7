"""Where a run's files live, and writing them without leaving half-written output behind."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any, BinaryIO

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


def default_file_mode() -> int:
    """``0o666 & ~umask``: the mode ``open()`` gives a new file. ``mkstemp`` makes 0600 files,
    which would leave results readable by their owner only on a shared machine."""
    try:  # Linux exposes the umask without changing it (os.umask() is process-wide)
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_bytes(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write(file)`` on a temporary file in ``path``'s folder, flush it to disk, then
    rename it to ``path``: readers see the old file or the whole new one, never a partial one
    (a full disk fails the write and leaves ``path`` untouched)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, default_file_mode())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write to a temporary file in the same folder, then rename: no reader sees a partial file."""
    atomic_write_bytes(path, lambda f: f.write(text.encode("utf-8")))


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


#: File written into a run folder whose command failed or was interrupted: its other files
#: (config, partial metrics, early checkpoints) are not results.
FAILED_MARKER = "FAILED"


def mark_failed(folder: Path, exc: BaseException) -> Path | None:
    """Write ``FAILED`` (what went wrong, when) into ``folder`` if it exists, so that listings
    and the benchmark never take a half-finished run for a result. Best effort: on a full disk
    an empty marker is written when the message does not fit; None when nothing could be."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    path = folder / FAILED_MARKER
    what = "interrupted" if isinstance(exc, KeyboardInterrupt | SystemExit) else "failed"
    detail = " ".join(str(exc).split()) or "(no message)"
    text = f"{what}: {type(exc).__name__}: {detail}\ntime: {time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n"
    try:
        atomic_write_text(path, text)
    except OSError:
        try:
            path.touch()
        except OSError:
            return None
    return path


def run_failed(folder: Path) -> bool:
    """Whether ``folder`` is a run that failed (holds the ``FAILED`` marker)."""
    return (Path(folder) / FAILED_MARKER).exists()
