"""On-disk, memory-mapped feature caches that are either complete or absent.

A cache is a directory ``<root>/<kind>-<digest>/`` holding one ``.npy`` file per array and a
``meta.json`` written last. The digest is a hash of the *key*: a JSON-able description of
everything that changes the features (backbone and weights fingerprint, preprocessing, data
identity, code version). A changed key therefore means a different directory, i.e. a recompute.

Building happens in a temporary directory named after its builder (host and pid) that is renamed
into place only when every array is written and flushed, under a file lock so that two processes
(DDP ranks, parallel jobs) never build the same cache twice or see half of one. Before building,
the free space is checked against the arrays' sizes and the files are preallocated, so a full
disk is a clear error instead of a ``SIGBUS`` in the middle of a memory-mapped write; a failed
build removes its folder, and the temporary folders of builders that died (killed, power loss)
are removed the next time the store is used. Opening checks the metadata against the files
(shapes, dtypes, byte sizes); a cache that fails the check is deleted and rebuilt.

Folders and files are created with the user's umask (not ``mkdtemp``'s 0700), so a cache on
shared storage (``MLR_BENCH_CACHE``) is usable by every user and node the umask allows.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlr_bench.errors import MLRBenchError

log = logging.getLogger(__name__)

#: Bump when the way features are computed changes: every existing cache becomes stale.
FEATURE_CODE_VERSION = 1
META = "meta.json"
#: A temporary folder of a builder on another host is removed once untouched for this long
#: (its process cannot be checked from here).
STALE_AFTER_S = 24 * 3600
#: Free space kept beyond a cache's own size: 5% of it plus this many bytes.
MARGIN_BYTES = 16 << 20
#: errno values that mean "the disk (or the user's quota) is full".
FULL_DISK = frozenset({errno.ENOSPC, errno.EDQUOT})
_HOW_TO_MOVE = (
    "free some space, or put the caches on a larger disk with MLR_BENCH_CACHE=/other/dir "
    "(or --data.cache_dir /other/dir)"
)


class CacheWriteError(MLRBenchError):
    """A cache cannot be written: full disk or quota, or an unwritable cache folder."""

    def __init__(self, errno_: int | None, message: str) -> None:
        super().__init__(message)
        self.errno = errno_


def default_cache_root() -> Path:
    """``$MLR_BENCH_CACHE`` if set, else ``~/.cache/mlr-bench``."""
    env = os.environ.get("MLR_BENCH_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mlr-bench"


def digest(key: Mapping[str, Any]) -> str:
    """Stable short hash of a JSON-able key (sorted keys, so dict order never matters)."""
    text = json.dumps(key, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def human_bytes(n: int) -> str:
    """``1.5 GiB``-style size for messages (the exact byte count is printed beside it)."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


# ---- permissions, builders and debris (shared with the corpus cache) -------------------------
def current_umask() -> int:
    """The process umask, read without changing it where Linux allows (``/proc``)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def shared_mode(path: str | os.PathLike, directory: bool) -> None:
    """Give ``path`` the mode a plain ``mkdir``/``open`` would (``mkdtemp``/``mkstemp`` make
    private 0700/0600 entries, which other users of a shared cache could not read)."""
    os.chmod(path, (0o777 if directory else 0o666) & ~current_umask())


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:63] or "host"


def builder_tag() -> str:
    """``<host>~<pid>``: who writes a temporary entry, so that debris of dead builders can be
    told from work in progress."""
    return f"{_host()}~{os.getpid()}"


def parse_builder_tag(text: str) -> tuple[str, int] | None:
    host, sep, pid = text.rpartition("~")
    return (host, int(pid)) if sep and host and pid.isdigit() else None


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists but belongs to someone else
        return True
    return True


def last_modified(path: Path) -> float:
    """Newest mtime of ``path`` and, for a folder, its direct entries (0 if it is gone)."""
    try:
        newest = path.stat().st_mtime
        if path.is_dir():
            for entry in os.scandir(path):
                with contextlib.suppress(OSError):
                    newest = max(newest, entry.stat(follow_symlinks=False).st_mtime)
        return newest
    except OSError:
        return 0.0


def is_dead_builder(tag: tuple[str, int] | None, path: Path, stale_after: float) -> bool:
    """A temporary entry's builder is gone: same host and its pid is dead, or (another host
    or unknown builder) nothing touched the entry for ``stale_after`` seconds."""
    if tag is not None and tag[0] == _host():
        return not pid_alive(tag[1])
    return time.time() - last_modified(path) > stale_after


def is_full_disk(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in FULL_DISK


def check_free_space(root: Path, needed: int, what: str) -> None:
    """Refuse before writing ``needed`` bytes under ``root`` when the disk lacks room for them
    plus a margin (5% + 16 MiB): a full disk would otherwise stop the build half-way."""
    try:
        free = shutil.disk_usage(root).free
    except OSError:  # unknown (exotic file system): the write itself will report
        return
    margin = needed // 20 + MARGIN_BYTES
    if free < needed + margin:
        raise CacheWriteError(
            errno.ENOSPC,
            f"not enough free space for the {what} in {root}: it needs {needed:,} bytes "
            f"({human_bytes(needed)}) plus a margin of {human_bytes(margin)}, and only "
            f"{free:,} bytes ({human_bytes(free)}) are free; {_HOW_TO_MOVE}",
        )


def preallocate(path: Path, start: int = 0) -> None:
    """Reserve the disk blocks of ``path`` (a sparse file of its final size) now, so that
    writing through a memory map can never hit a full disk (which the kernel reports as
    ``SIGBUS``, killing the process without a message); a full disk raises ``OSError`` here.
    Where the file system cannot preallocate, the bytes from ``start`` on are written as zeros.
    """
    with open(path, "r+b") as f:
        size = os.fstat(f.fileno()).st_size
        fallocate = getattr(os, "posix_fallocate", None)
        if fallocate is not None:
            try:
                fallocate(f.fileno(), 0, size)
                return
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                    raise
        block = b"\0" * (4 << 20)
        f.seek(start)
        remaining = size - start
        while remaining > 0:
            remaining -= f.write(block[: min(len(block), remaining)])
        f.flush()
        os.fsync(f.fileno())


# ---- the cache ------------------------------------------------------------------------------
@dataclass(frozen=True)
class ArraySpec:
    shape: tuple[int, ...]
    dtype: str

    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


class CacheCorrupt(Exception):
    """A cache directory does not match its metadata (internal: it gets rebuilt)."""


class FeatureCache:
    """A complete cache: named read-only memory-mapped arrays plus the key they belong to.

    ``info`` is what the builder recorded beside the arrays (e.g. which images were replaced
    by a stand-in), so that every run using the cache can report it, not only the first.
    """

    def __init__(
        self,
        path: Path,
        key: dict[str, Any],
        arrays: dict[str, np.ndarray],
        info: dict[str, Any] | None = None,
        fresh: bool = False,
    ) -> None:
        self.path = path
        self.key = key
        self.arrays = arrays
        self.info = info or {}
        #: True when this process built the cache (False when an existing one was opened).
        self.fresh = fresh

    def __getitem__(self, name: str) -> np.ndarray:
        return self.arrays[name]

    def __contains__(self, name: str) -> bool:
        return name in self.arrays

    def __len__(self) -> int:
        return len(next(iter(self.arrays.values())))

    @classmethod
    def load(cls, path: Path) -> FeatureCache:
        """Open a finished cache directory, checking every array against ``meta.json``.

        Empty, truncated or malformed metadata is corruption (rebuilt), never a crash.
        """
        try:
            meta = json.loads((path / META).read_text())
            if not isinstance(meta, dict) or not isinstance(meta.get("key"), dict):
                raise ValueError("not a metadata object with a key")
            specs = {n: ArraySpec(tuple(s["shape"]), s["dtype"]) for n, s in meta["arrays"].items()}
            if not specs:
                raise ValueError("no arrays listed")
            info = meta.get("info") or {}
            if not isinstance(info, dict):
                raise ValueError("info is not an object")
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CacheCorrupt(f"unreadable {path / META}: {exc}") from exc
        arrays = {}
        for name, spec in specs.items():
            file = path / f"{name}.npy"
            try:
                array = np.load(file, mmap_mode="r")
            except (OSError, ValueError) as exc:
                raise CacheCorrupt(f"unreadable {file}: {exc}") from exc
            if array.shape != spec.shape or array.dtype != np.dtype(spec.dtype):
                raise CacheCorrupt(
                    f"{file} holds {array.dtype}{list(array.shape)}, metadata says "
                    f"{spec.dtype}{list(spec.shape)}"
                )
            expected = array.offset + spec.nbytes()
            if file.stat().st_size != expected:
                raise CacheCorrupt(f"{file} has {file.stat().st_size} bytes, expected {expected}")
            arrays[name] = array
        return cls(path, meta["key"], arrays, info)


#: Writes the arrays in place; may return facts to keep in the metadata (``FeatureCache.info``).
Filler = Callable[[dict[str, np.ndarray]], "Mapping[str, Any] | None"]
#: Says why an opened cache is stale despite its key (None when it is fine).
Checker = Callable[[FeatureCache], "str | None"]


class FeatureStore:
    """Finds or builds caches under one root directory."""

    def __init__(self, root: str | os.PathLike | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else default_cache_root()

    def path_for(self, key: Mapping[str, Any]) -> Path:
        return self.root / f"{key.get('kind', 'features')}-{digest(key)}"

    def open(
        self, key: Mapping[str, Any], *, discard: bool = True, check: Checker | None = None
    ) -> FeatureCache | None:
        """The finished cache for ``key``; None if absent or broken (deleted if ``discard``).

        ``check`` may declare an intact cache stale (e.g. an image that was unreadable when it
        was built can be read now).
        """
        path = self.path_for(key)
        if not (path / META).exists():
            if path.exists() and discard:  # a directory without metadata is never complete
                self._discard(path, "it has no metadata")
            return None
        try:
            cache = FeatureCache.load(path)
        except CacheCorrupt as exc:
            if discard:
                self._discard(path, str(exc))
            return None
        reason = check(cache) if check is not None else None
        if reason is None:
            return cache
        if discard:
            del cache
            self._discard(path, reason, corrupt=False)
        return None

    def get_or_build(
        self,
        key: Mapping[str, Any],
        specs: Callable[[], Mapping[str, ArraySpec]],
        fill: Filler,
        check: Checker | None = None,
    ) -> FeatureCache:
        """Open the cache for ``key`` or build it with ``fill(arrays)``, which writes in place.

        ``specs()`` (called only when building, as it may need a forward pass to know shapes)
        gives the arrays' shapes; ``fill`` receives them as writable memory maps and may return
        a dict kept as ``info``. Concurrent callers wait on a lock; the first builds, the
        others open its result. A cache is only ever deleted under the lock.
        """
        key = dict(key, code_version=FEATURE_CODE_VERSION)
        self.remove_stale_builds()
        cache = self.open(key, discard=False, check=check)
        if cache is not None:
            return cache
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise self._write_error(exc, self.root, None) from exc
        with self._lock(key):
            cache = self.open(key, check=check)  # someone may have built it while we waited
            if cache is not None:
                return cache
            return self._build(key, dict(specs()), fill)

    def _build(
        self, key: dict[str, Any], specs: dict[str, ArraySpec], fill: Filler
    ) -> FeatureCache:
        final = self.path_for(key)
        # .npy headers are at most a few hundred bytes; metadata a few KiB.
        needed = sum(spec.nbytes() + 4096 for spec in specs.values()) + (64 << 10)
        check_free_space(self.root, needed, f"feature cache {final.name}")
        try:
            tmp = Path(
                tempfile.mkdtemp(
                    dir=self.root, prefix=f".{final.name}.{builder_tag()}.", suffix=".tmp"
                )
            )
            shared_mode(tmp, directory=True)
        except OSError as exc:
            raise self._write_error(exc, self.root, needed) from exc
        try:
            arrays = {}
            for name, spec in specs.items():
                file = tmp / f"{name}.npy"
                arrays[name] = np.lib.format.open_memmap(
                    file, mode="w+", dtype=spec.dtype, shape=spec.shape
                )
                preallocate(file, arrays[name].offset)
            info = fill(arrays)
            for array in arrays.values():
                array.flush()
            del arrays
            meta = {
                "key": key,
                "arrays": {n: {"shape": list(s.shape), "dtype": s.dtype} for n, s in specs.items()},
                "info": dict(info or {}),
            }
            with open(tmp / META, "w") as f:
                f.write(json.dumps(meta, indent=2, default=str))
                f.flush()
                os.fsync(f.fileno())
            self._publish(tmp, final)
        except BaseException as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            if is_full_disk(exc):
                raise self._write_error(exc, self.root, needed, tmp) from exc
            raise
        log.info("feature cache written: %s", final)
        cache = FeatureCache.load(final)
        cache.fresh = True
        return cache

    def _publish(self, tmp: Path, final: Path) -> None:
        """Rename into place; a complete cache already there (built by a host whose lock we
        cannot see) wins and ours is dropped."""
        try:
            os.replace(tmp, final)
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            try:
                FeatureCache.load(final)
            except CacheCorrupt:
                shutil.rmtree(final, ignore_errors=True)
                os.replace(tmp, final)
            else:
                shutil.rmtree(tmp, ignore_errors=True)

    @staticmethod
    def _write_error(
        exc: OSError, root: Path, needed: int | None, tmp: Path | None = None
    ) -> CacheWriteError:
        size = f" ({needed:,} bytes, {human_bytes(needed)}, needed)" if needed else ""
        if is_full_disk(exc):
            where = f"{tmp} in {root}" if tmp is not None else str(root)
            what = "quota exceeded" if exc.errno == errno.EDQUOT else "no space left on device"
            return CacheWriteError(
                exc.errno,
                f"{what} while writing the feature cache {where}{size}; the partial cache "
                f"was removed. To fix it, {_HOW_TO_MOVE}",
            )
        return CacheWriteError(
            exc.errno,
            f"cannot write the feature cache under {root}{size}: {exc.strerror or exc}; make "
            "the folder writable, or point MLR_BENCH_CACHE (or --data.cache_dir) to a "
            "writable folder",
        )

    def remove_stale_builds(self) -> list[Path]:
        """Delete the temporary folders of builds that died (killed, crashed, power loss).

        A folder is debris when no process holds its key's lock (a live builder holds it from
        before creating the folder until after renaming it) and its builder is gone: on this
        host its pid is dead; on another host (or unknown, from an older version) nothing
        touched the folder for ``STALE_AFTER_S``, in case locks are not shared between hosts.
        """
        removed: list[Path] = []
        try:
            entries = [p for p in self.root.iterdir() if p.name.endswith(".tmp") and p.is_dir()]
        except OSError:
            return removed
        for path in entries:
            parts = path.name[1:-4].split(".")
            if not path.name.startswith(".") or len(parts) not in (2, 3):
                continue
            tag = parse_builder_tag(parts[1]) if len(parts) == 3 else None
            if not self._lock_is_free(parts[0]):
                continue
            if is_dead_builder(tag, path, STALE_AFTER_S):
                shutil.rmtree(path, ignore_errors=True)
                if not path.exists():
                    removed.append(path)
                    who = f"process {tag[1]} on {tag[0]}" if tag else "an unknown process"
                    log.warning(
                        "removed %s: the temporary folder of a feature cache build by %s that "
                        "did not finish",
                        path,
                        who,
                    )
        return removed

    def _lock_is_free(self, name: str) -> bool:
        try:
            fd = os.open(self.root / f".{name}.lock", os.O_RDONLY)
        except OSError:
            return True  # never locked
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            return True
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def _lock(self, key: Mapping[str, Any]) -> Iterator[None]:
        """An exclusive ``flock`` (released by the kernel if the holder dies, so a killed
        builder never blocks the next run). The lock file gets the umask's mode; an existing
        one we may not write (another user's) is locked through a read-only descriptor."""
        lock_path = self.root / f".{self.path_for(key).name}.lock"
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        except PermissionError:
            try:
                fd = os.open(lock_path, os.O_RDONLY)
            except OSError as exc:
                raise self._write_error(exc, self.root, None) from exc
        except OSError as exc:
            raise self._write_error(exc, self.root, None) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    @staticmethod
    def _discard(path: Path, reason: str, corrupt: bool = True) -> None:
        state = "incomplete or corrupt" if corrupt else "stale"
        log.warning("feature cache %s is %s (%s); rebuilding it", path, state, reason)
        shutil.rmtree(path, ignore_errors=True)
