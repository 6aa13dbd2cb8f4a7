"""One process per cell: an ``fcntl.flock``-ed ``.lock`` file in the cell's folder.

Two benchmarks on the same ``--out`` (a re-run started while the first still runs, two
shells, two SLURM jobs on one file system) must not train the same cell at once, writing
into one folder. The benchmark process takes the cell's lock before it touches the folder and
its cell process inherits the lock (the same open file), so the lock is held until both are
gone: killing the benchmark alone does not free a cell whose process still runs. The kernel
drops the lock when the last holder dies, however it dies, so no stale lock is ever left.
The lock file stays in place (removing a flock-ed file races with the next locker); it holds
the holder's pid, and the cell process's, for the message of whoever finds it taken.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

LOCK = ".lock"

#: Lock file descriptors held by this process, by cell folder (the runner passes them on).
_HELD: dict[Path, int] = {}


class CellBusy(Exception):
    """The cell's lock is held by another process (another benchmark runs this cell)."""

    def __init__(self, cell_dir: Path, holder: str) -> None:
        super().__init__(f"{cell_dir} is locked by {holder}")
        self.cell_dir = cell_dir
        self.holder = holder


def holder_of(cell_dir: Path) -> str:
    """``pid N`` (plus the cell process when known) from the lock file, for messages."""
    try:
        fields = dict(
            line.split("=", 1) for line in (cell_dir / LOCK).read_text().splitlines() if "=" in line
        )
    except OSError:
        fields = {}
    pid = fields.get("pid", "?")
    cell_pid = fields.get("cell_pid")
    return f"pid {pid}" + (f" (cell process pid {cell_pid})" if cell_pid else "")


def _write_holder(fd: int, cell_pid: int | None = None) -> None:
    text = f"pid={os.getpid()}\n" + (f"cell_pid={cell_pid}\n" if cell_pid else "")
    os.ftruncate(fd, 0)
    os.pwrite(fd, text.encode(), 0)


@contextlib.contextmanager
def cell_lock(cell_dir: Path) -> Iterator[int]:
    """Hold the cell's lock (creating the folder) or raise ``CellBusy`` at once (no waiting:
    the other run may take hours)."""
    cell_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(cell_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CellBusy(cell_dir, holder_of(cell_dir)) from None
        _write_holder(fd)
        _HELD[cell_dir] = fd
        try:
            yield fd
        finally:
            _HELD.pop(cell_dir, None)
    finally:
        os.close(fd)  # the lock goes once the cell process (which shares it) is gone too


def held_fd(cell_dir: Path) -> int | None:
    """The lock this process holds on ``cell_dir`` (for the cell process to inherit)."""
    return _HELD.get(cell_dir)


def note_cell_process(cell_dir: Path, pid: int) -> None:
    """Record the cell process's pid in the lock file (shown to a second benchmark)."""
    fd = _HELD.get(cell_dir)
    if fd is not None:
        _write_holder(fd, pid)
