"""Cell processes never outlive their benchmark.

The benchmark starts each cell in its own session (so its own process group: the cell's
worker plus whatever it starts, DDP ranks, data loader workers, the W&B service) and kills
that whole group when it stops for any reason: a finished cell's stragglers, Ctrl-C, SIGTERM,
SIGHUP, an exception. A benchmark killed with SIGKILL cannot clean up, so the cell watches
its parent instead: on Linux the kernel sends it SIGKILL when the parent dies
(``prctl(PR_SET_PDEATHSIG)``, set between fork and exec, and again by the worker), elsewhere
a thread in the worker polls ``os.getppid()``. Each DDP rank the worker starts runs the
worker too and watches the worker the same way. The death signal follows the thread that
started the child: cells are started from the benchmark's main thread, or (``--workers N``)
from worker threads that live until every cell they started has ended.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import IO

#: The pid a cell process must have as parent (set by whoever starts it).
PARENT_ENV = "MLR_BENCH_PARENT_PID"
PR_SET_PDEATHSIG = 1
POLL_S = 1.0


class Terminated(KeyboardInterrupt):
    """SIGTERM/SIGHUP to the benchmark: stop like Ctrl-C (cells killed, finished ones kept)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def report_interruption(exc: KeyboardInterrupt, command: str, detail: str) -> int:
    """Say how ``mlr-bench <command>`` was stopped (``detail``: what is kept, how to resume)
    and return its exit code: 128 + signal for SIGTERM/SIGHUP, 130 for Ctrl-C."""
    how = f"stopped by {exc}" if isinstance(exc, Terminated) else "interrupted"
    print(f"\nmlr-bench {command}: {how}; {detail}", file=sys.stderr)
    return 128 + exc.signum if isinstance(exc, Terminated) else 130


_terminating: list[int] = []
#: Set by the benchmark's main thread to stop cells waited on by other threads (parallel
#: cells): their waits raise KeyboardInterrupt, which kills their process groups.
_STOP = threading.Event()
#: Per-thread extra environment of the cells a thread starts (a parallel worker's slot:
#: ``CUDA_VISIBLE_DEVICES``, ``OMP_NUM_THREADS``).
_SLOT = threading.local()


def request_stop() -> None:
    """Make every cell wait in every thread stop (and kill its cell); see ``_STOP``."""
    _STOP.set()


def clear_stop() -> None:
    _STOP.clear()


@contextlib.contextmanager
def slot_environment(env: dict[str, str]) -> Iterator[None]:
    """Cells started by this thread in the block get ``env`` on top of the benchmark's."""
    _SLOT.env = dict(env)
    try:
        yield
    finally:
        _SLOT.env = {}


def terminating() -> bool:
    """Whether this process was asked to stop (a cell failing now is not a cell failure)."""
    return bool(_terminating)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Turn SIGTERM and SIGHUP into ``Terminated`` for the duration (main thread only), so the
    same clean-up as Ctrl-C runs; Python's default would die at once, leaving the cell."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        _terminating.append(signum)
        raise Terminated(signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
        _terminating.clear()


def _killpg(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _wait_unreaped(proc: subprocess.Popen, poll_s: float = 0.1) -> None:
    """Wait for the child's exit without reaping it: while it is a zombie its pid, the group's
    id, cannot be reused, so killing the group afterwards can only hit the cell's processes.

    Polls (``WNOHANG``) instead of blocking in ``waitid``: a signal sent to the process (Ctrl-C,
    SIGTERM) may be delivered to any of its threads (tqdm's monitor, ...), and then a blocking
    ``waitid`` in the main thread is never interrupted, so the handler would not run until the
    cell ended by itself. Between polls the main thread runs Python code, which runs handlers.
    """
    if not hasattr(os, "waitid"):  # pragma: no cover - POSIX without waitid
        while proc.poll() is None:
            if _STOP.is_set():
                raise KeyboardInterrupt
            time.sleep(poll_s)
        return
    options = os.WEXITED | os.WNOWAIT | os.WNOHANG
    while True:
        if _STOP.is_set():
            raise KeyboardInterrupt
        try:
            if os.waitid(os.P_PID, proc.pid, options) is not None:
                return
        except ChildProcessError:
            return
        time.sleep(poll_s)


def run_cell_process(
    command: Sequence[str],
    log: IO[str],
    pass_fds: Sequence[int] = (),
    started: object = None,
) -> int:
    """Run ``command`` in its own session, output to ``log``; its exit code (negative: the
    signal). On any exception here (Ctrl-C, ``Terminated``) the whole group is killed first.

    ``started(pid)`` is called once the process exists (to record it in the cell's lock).
    """
    env = {**os.environ, **getattr(_SLOT, "env", {}), PARENT_ENV: str(os.getpid())}
    proc = subprocess.Popen(
        list(command),
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
        pass_fds=tuple(pass_fds),
        preexec_fn=_death_signal_setter(),
    )
    try:
        if callable(started):
            started(proc.pid)
        _wait_unreaped(proc)
    finally:
        _killpg(proc.pid)  # stragglers after an exit, or everything on an interruption
        proc.wait()
    return proc.returncode


# ---- the cell's side ----------------------------------------------------------------------
def _set_parent_death_signal(signum: int) -> bool:
    """Linux: ask the kernel to send ``signum`` when the parent dies. False elsewhere."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(signum), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _death_signal_setter() -> Callable[[], None] | None:
    """A ``preexec_fn`` that sets the death signal in the forked child before it executes
    Python (whose imports take seconds: a benchmark killed meanwhile must not leave it
    running). Only async-signal-safe work there: one resolved libc call, getppid, _exit."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def set_in_child() -> None:
        prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent:  # the benchmark died between fork and prctl
            os._exit(137)

    return set_in_child


def _watch_parent(parent: int) -> None:
    while True:
        time.sleep(POLL_S)
        if os.getppid() != parent:
            _killpg(os.getpgrp())  # the cell's group: this process and what it started
            os._exit(137)


def die_with_parent() -> None:
    """Called first thing in a cell process started by ``run_cell_process``: exit with the
    benchmark, even when it was SIGKILLed. A no-op for processes started otherwise."""
    expected = os.environ.get(PARENT_ENV)
    if not expected or not expected.isdigit():
        return
    os.environ[PARENT_ENV] = str(os.getpid())  # processes this one starts watch this one
    if not _set_parent_death_signal(signal.SIGKILL):
        threading.Thread(target=_watch_parent, args=(int(expected),), daemon=True).start()
    if os.getppid() != int(expected):  # the parent died before the watch was in place
        os._exit(137)


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped, counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    with contextlib.suppress(OSError, IndexError):
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return True
