"""Phase timings from inside an ``mlr-bench`` subprocess (added with ``--trainer.callbacks+=``).

Only the process itself knows how long its feature caches took to build, how long each training
step took and how long validation and testing ran; wall time from outside mixes all of that with
imports and model construction. The callback records:

- every feature-cache request (``FeatureStore.get_or_build``, wrapped when the callback is
  created, i.e. before the Trainer prepares data): kind, rows, built or opened, seconds of the
  whole request and of the encoder pass alone (``fill``);
- every training-corpus read (``load_corpus`` as the official datamodules call it): seconds and
  texts kept;
- each training step, each validation pass and the test pass.

It writes them as JSON to ``$SCALE_TIMER_OUT`` (atomically, after every stage and at exit).
The wrapping is measurement only: arguments and results pass through unchanged.
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import time
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer

from scale import TIMER_ENV_OUT as ENV_OUT
from scale import TIMER_ENV_T0 as ENV_T0

_RECORD: dict[str, Any] = {"caches": [], "corpora": [], "steps": [], "val": [], "test": []}


def _save() -> None:
    out = os.environ.get(ENV_OUT)
    if not out:
        return
    path = Path(out)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(_RECORD, indent=1, default=str))
    os.replace(tmp, path)


def _resident_mb() -> dict[str, float]:
    """Resident memory now, MB: ``VmRSS`` (all), ``RssAnon`` (heap, tensors) and ``RssFile``
    (memory-mapped caches, code: page cache the kernel can drop). Empty off Linux."""
    try:
        status = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return {}
    fields = (line.split(":", 1) for line in status)
    return {
        key: int(value.split()[0]) / 1024
        for key, value in fields
        if key in ("VmRSS", "RssAnon", "RssFile")
    }


def _sample_memory() -> None:
    """Keep the largest anonymous and file-backed resident sizes seen."""
    for key, mb in _resident_mb().items():
        if key != "VmRSS":
            name = f"max_{key.lower()}_mb"
            _RECORD[name] = max(_RECORD.get(name, 0.0), mb)


def _folder_bytes(path: Path) -> int:
    return sum(f.stat().st_blocks * 512 for f in path.iterdir() if f.is_file())


def _wrap_feature_store() -> None:
    """Time every cache request; ``fill`` is the encoder pass over the data."""
    from mlr_bench.features.store import FeatureStore

    original = FeatureStore.get_or_build
    if getattr(original, "_scale_timed", False):
        return

    @functools.wraps(original)
    def timed(self: Any, key: Any, specs: Any, fill: Any, *args: Any, **kwargs: Any) -> Any:
        spent: list[float] = []

        def timed_fill(arrays: Any) -> Any:
            start = time.perf_counter()
            try:
                return fill(arrays)
            finally:
                spent.append(time.perf_counter() - start)

        start = time.perf_counter()
        cache = original(self, key, specs, timed_fill, *args, **kwargs)
        data = key.get("data") if isinstance(key.get("data"), dict) else {}
        entry = {
            "kind": key.get("kind"),
            "split": data.get("split"),
            "seconds": time.perf_counter() - start,
            "built": bool(spent),
            "fill_seconds": sum(spent),
            "rows": len(cache["target"]) if "target" in cache else len(cache),
            "arrays": {name: list(array.shape) for name, array in cache.arrays.items()},
            "path": str(cache.path),
            "bytes": _folder_bytes(Path(cache.path)),
        }
        _RECORD["caches"].append(entry)
        _save()
        return cache

    timed._scale_timed = True  # type: ignore[attr-defined]
    FeatureStore.get_or_build = timed  # type: ignore[method-assign]


def _wrap_corpus_loader() -> None:
    """Time each corpus read (parse, cut, label; or open its cache)."""
    try:
        from mlr_bench.datamodules import _official
    except ImportError:
        return
    original = getattr(_official, "load_corpus", None)
    if original is None or getattr(original, "_scale_timed", False):
        return

    @functools.wraps(original)
    def timed(kind: str, path: Any, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        loaded = original(kind, path, *args, **kwargs)
        corpus = getattr(loaded, "corpus", None)
        _RECORD["corpora"].append(
            {
                "kind": kind,
                "file": str(path),
                "seconds": time.perf_counter() - start,
                "kept": len(corpus) if corpus is not None else None,
                "read": getattr(loaded, "read", None),
            }
        )
        _save()
        return loaded

    timed._scale_timed = True  # type: ignore[attr-defined]
    _official.load_corpus = timed


class PhaseTimer(Callback):
    """Records cache builds, corpus reads, steps, validation and test passes (see module)."""

    def __init__(self) -> None:
        t0 = float(os.environ.get(ENV_T0, "0") or 0)
        _RECORD["started_to_callback_s"] = time.time() - t0 if t0 else None
        # LightningCLI builds the model before the Trainer's callbacks: this is the process's
        # own memory (imports + model) before any data, the base of "peak above model".
        now = _resident_mb()
        _RECORD["model_rss_mb"], _RECORD["model_rssanon_mb"] = now.get("VmRSS"), now.get("RssAnon")
        _sample_memory()
        _wrap_feature_store()
        _wrap_corpus_loader()
        atexit.register(_save)
        self._step = self._val = self._test = 0.0

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        _RECORD["fit_start_s"] = self._since_start()
        _RECORD["batch_size"] = getattr(trainer.datamodule, "batch_size", None)

    def on_train_batch_start(self, trainer: Trainer, *args: Any) -> None:
        self._step = time.perf_counter()

    def on_train_batch_end(self, trainer: Trainer, *args: Any) -> None:
        _RECORD["steps"].append(time.perf_counter() - self._step)
        _sample_memory()

    def on_validation_batch_end(self, trainer: Trainer, *args: Any) -> None:
        _sample_memory()

    def on_test_batch_end(self, trainer: Trainer, *args: Any) -> None:
        _sample_memory()

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._val = time.perf_counter()

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        _RECORD["val"].append(time.perf_counter() - self._val)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        _RECORD["fit_end_s"] = self._since_start()
        _save()

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._test = time.perf_counter()

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        _RECORD["test"].append(time.perf_counter() - self._test)
        _save()

    @staticmethod
    def _since_start() -> float | None:
        t0 = float(os.environ.get(ENV_T0, "0") or 0)
        return time.time() - t0 if t0 else None
