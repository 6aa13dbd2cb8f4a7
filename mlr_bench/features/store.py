"""On-disk, memory-mapped feature caches that are either complete or absent.

A cache is a directory ``<root>/<kind>-<digest>/`` holding one ``.npy`` file per array and a
``meta.json`` written last. The digest is a hash of the *key*: a JSON-able description of
everything that changes the features (backbone and weights fingerprint, preprocessing, data
identity, code version). A changed key therefore means a different directory, i.e. a recompute.

Building happens in a private temporary directory that is renamed into place only when every
array is written and flushed, under a file lock so that two processes (DDP ranks, parallel jobs)
never build the same cache twice or see half of one. Opening checks the metadata against the
files (shapes, dtypes, byte sizes); a cache that fails the check is deleted and rebuilt.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

#: Bump when the way features are computed changes: every existing cache becomes stale.
FEATURE_CODE_VERSION = 1
META = "meta.json"


def default_cache_root() -> Path:
    """``$MLR_BENCH_CACHE`` if set, else ``~/.cache/mlr-bench``."""
    env = os.environ.get("MLR_BENCH_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mlr-bench"


def digest(key: Mapping[str, Any]) -> str:
    """Stable short hash of a JSON-able key (sorted keys, so dict order never matters)."""
    text = json.dumps(key, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:20]


@dataclass(frozen=True)
class ArraySpec:
    shape: tuple[int, ...]
    dtype: str

    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


class CacheCorrupt(Exception):
    """A cache directory does not match its metadata (internal: it gets rebuilt)."""


class FeatureCache:
    """A complete cache: named read-only memory-mapped arrays plus the key they belong to."""

    def __init__(self, path: Path, key: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        self.path = path
        self.key = key
        self.arrays = arrays

    def __getitem__(self, name: str) -> np.ndarray:
        return self.arrays[name]

    def __contains__(self, name: str) -> bool:
        return name in self.arrays

    def __len__(self) -> int:
        return len(next(iter(self.arrays.values())))

    @classmethod
    def load(cls, path: Path) -> FeatureCache:
        """Open a finished cache directory, checking every array against ``meta.json``."""
        try:
            meta = json.loads((path / META).read_text())
            specs = {n: ArraySpec(tuple(s["shape"]), s["dtype"]) for n, s in meta["arrays"].items()}
        except (OSError, ValueError, KeyError, TypeError) as exc:
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
        return cls(path, meta["key"], arrays)


Filler = Callable[[dict[str, np.ndarray]], None]


class FeatureStore:
    """Finds or builds caches under one root directory."""

    def __init__(self, root: str | os.PathLike | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else default_cache_root()

    def path_for(self, key: Mapping[str, Any]) -> Path:
        return self.root / f"{key.get('kind', 'features')}-{digest(key)}"

    def open(self, key: Mapping[str, Any]) -> FeatureCache | None:
        """The finished cache for ``key``; None if absent. A corrupt one is deleted."""
        path = self.path_for(key)
        if not (path / META).exists():
            if path.exists():  # a directory without metadata is never complete
                self._discard(path, "it has no metadata")
            return None
        try:
            return FeatureCache.load(path)
        except CacheCorrupt as exc:
            self._discard(path, str(exc))
            return None

    def get_or_build(
        self,
        key: Mapping[str, Any],
        specs: Callable[[], Mapping[str, ArraySpec]],
        fill: Filler,
    ) -> FeatureCache:
        """Open the cache for ``key`` or build it with ``fill(arrays)``, which writes in place.

        ``specs()`` (called only when building, as it may need a forward pass to know shapes)
        gives the arrays' shapes; ``fill`` receives them as writable memory maps. Concurrent
        callers wait on a lock; the first builds, the others open its result.
        """
        key = dict(key, code_version=FEATURE_CODE_VERSION)
        cache = self.open(key)
        if cache is not None:
            return cache
        self.root.mkdir(parents=True, exist_ok=True)
        with self._lock(key):
            cache = self.open(key)  # someone else may have built it while we waited
            if cache is not None:
                return cache
            return self._build(key, dict(specs()), fill)

    def _build(
        self, key: dict[str, Any], specs: dict[str, ArraySpec], fill: Filler
    ) -> FeatureCache:
        final = self.path_for(key)
        tmp = Path(tempfile.mkdtemp(dir=self.root, prefix=f".{final.name}.", suffix=".tmp"))
        try:
            arrays = {
                name: np.lib.format.open_memmap(
                    tmp / f"{name}.npy", mode="w+", dtype=spec.dtype, shape=spec.shape
                )
                for name, spec in specs.items()
            }
            fill(arrays)
            for array in arrays.values():
                array.flush()
            del arrays
            meta = {
                "key": key,
                "arrays": {n: {"shape": list(s.shape), "dtype": s.dtype} for n, s in specs.items()},
            }
            (tmp / META).write_text(json.dumps(meta, indent=2, default=str))
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        log.info("feature cache written: %s", final)
        return FeatureCache.load(final)

    @contextlib.contextmanager
    def _lock(self, key: Mapping[str, Any]) -> Iterator[None]:
        lock_path = self.root / f".{self.path_for(key).name}.lock"
        with open(lock_path, "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    @staticmethod
    def _discard(path: Path, reason: str) -> None:
        log.warning("feature cache %s is incomplete or corrupt (%s); rebuilding it", path, reason)
        shutil.rmtree(path, ignore_errors=True)
