"""On-disk cache of parsed, labelled corpora, so big caption files are labelled once.

Parsing ~600k COCO captions or ~500k narratives takes minutes; the result depends only on the
file's bytes, the synonym table, the labeler version and the reader options, which together form
the cache key. A changed input therefore means a new key and a rebuild. Entries live under the
cache root (``$MLR_BENCH_CACHE`` or ``~/.cache/mlr-bench``), never the working directory (the
reference writes pickles there). Each entry is one ``.npz`` without pickles (texts as UTF-8 bytes
plus offsets), written to a temporary file and renamed, so readers see all of it or nothing; an
unreadable entry is rebuilt.

The cache only saves time, so a full disk or an unwritable cache folder never stops a run: the
corpus is used from memory and a warning names the folder, the bytes needed and the reason.
Temporary files carry their writer's host and pid; those of dead writers are removed on the next
use. Entries get the umask's mode (not ``mkstemp``'s 0600), so a shared cache works.
"""

from __future__ import annotations

import errno
import hashlib
import itertools
import json
import logging
import os
import shutil
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mlr_bench.features.store import (
    MARGIN_BYTES,
    builder_tag,
    current_umask,
    default_cache_root,
    digest,
    human_bytes,
    is_dead_builder,
    is_full_disk,
    parse_builder_tag,
)
from mlr_bench.text.corpus import TextCorpus
from mlr_bench.text.labeler import LABELER_VERSION, SynonymLabeler, synonym_table_hash
from mlr_bench.text.sources import (
    LoadedCorpus,
    read_coco_captions,
    read_llm_descriptions,
    read_localized_narratives,
    read_text_lines,
)
from mlr_bench.text.truncate import CLIP_CONTEXT_LENGTH, TRUNCATION_VERSION

log = logging.getLogger(__name__)

#: Bump when the entry layout changes.
CACHE_FORMAT = 1
_SUBDIR = "corpora"


#: A temporary file whose writer cannot be checked (another host, older format) is removed
#: once untouched for this long; a corpus entry is written in seconds.
STALE_TMP_AFTER_S = 3600.0


def _atomic_write_bytes(path: Path, write: Callable[[Any], None]) -> None:
    """Write through ``write(file)`` into a temporary sibling, then rename it into place.

    The file gets the umask's mode; the temporary name carries the writer (host, pid) so that
    :func:`remove_stale_tmp` can tell a dead writer's debris from a write in progress.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.{builder_tag()}.", suffix=".tmp"
    )
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~current_umask())
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_stale_tmp(folder: Path) -> list[Path]:
    """Delete temporary files of writers that died (same host: pid gone; otherwise untouched
    for ``STALE_TMP_AFTER_S``)."""
    removed = []
    try:
        candidates = [p for p in folder.iterdir() if p.name.startswith(".") and p.suffix == ".tmp"]
    except OSError:
        return removed
    for tmp in candidates:
        parts = tmp.name[: -len(".tmp")].split(".")
        tag = next((t for t in map(parse_builder_tag, parts) if t is not None), None)
        if is_dead_builder(tag, tmp, STALE_TMP_AFTER_S):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
            log.info("removed %s, left behind by a corpus cache writer that died", tmp)
    return removed


def _write_or_warn(
    path: Path, needed: int, write: Callable[[Any], None], quiet: bool = False
) -> bool:
    """:func:`_atomic_write_bytes` unless the disk is too full or the folder unwritable: then
    warn (naming the folder and the bytes) and go on without saving; True when saved."""
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(folder).free
        if free < needed + needed // 20 + MARGIN_BYTES:
            raise OSError(errno.ENOSPC, f"only {free:,} bytes ({human_bytes(free)}) are free")
        _atomic_write_bytes(path, write)
        return True
    except OSError as exc:
        why = "not enough free space" if is_full_disk(exc) else "cannot write there"
        message = (
            f"corpus cache not saved: {why} in {folder} ({needed:,} bytes, "
            f"{human_bytes(needed)}, needed; {exc.strerror or exc}); the corpus is used from "
            "memory and parsed again next time. Free some space, or point MLR_BENCH_CACHE "
            "(or --data.cache_dir) to a writable disk with more room."
        )
        if quiet:
            log.info(message)
        else:
            warnings.warn(message, stacklevel=3)
        return False


_hash_memo: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | Path, cache_root: Path | None = None) -> str:
    """SHA-256 of a file's bytes, remembered by (path, size, mtime) so big files hash once."""
    path = Path(path).resolve()
    stat = path.stat()
    memo_key = (str(path), stat.st_size, stat.st_mtime_ns)
    if memo_key in _hash_memo:
        return _hash_memo[memo_key]
    root = (cache_root or default_cache_root()) / _SUBDIR / "hashes"
    record = root / f"{hashlib.sha256(repr(memo_key).encode()).hexdigest()[:24]}.txt"
    try:
        value = record.read_text().strip()
        if len(value) == 64:
            _hash_memo[memo_key] = value
            return value
    except OSError:
        pass
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    value = h.hexdigest()
    _write_or_warn(record, len(value), lambda f: f.write(value.encode()), quiet=True)
    _hash_memo[memo_key] = value
    return value


def _save(path: Path, loaded: LoadedCorpus, key: Mapping[str, Any]) -> None:
    encoded = [t.encode("utf-8") for t in loaded.corpus.texts]
    offsets = np.cumsum([0, *map(len, encoded)], dtype=np.int64)
    meta = {"key": dict(key), "dropped": loaded.dropped, "skipped": loaded.skipped}
    meta |= {"capped": loaded.capped, "truncated": loaded.truncated, "excluded": loaded.excluded}
    arrays = {
        "labels": loaded.corpus.labels.astype(np.int8),
        "text_bytes": np.frombuffer(b"".join(encoded), dtype=np.uint8),
        "offsets": offsets,
        "meta": np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8),
    }
    needed = sum(a.nbytes for a in arrays.values()) + (64 << 10)  # + zip headers
    _write_or_warn(path, needed, lambda f: np.savez(f, **arrays))


def _load(path: Path, key: Mapping[str, Any]) -> LoadedCorpus | None:
    """The cached corpus, or None when the entry is missing, unreadable or for another key."""
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(z["meta"].tobytes().decode())
            if meta["key"] != json.loads(json.dumps(dict(key))):
                return None
            data, offsets, labels = z["text_bytes"].tobytes(), z["offsets"], z["labels"]
        texts = [data[a:b].decode("utf-8") for a, b in itertools.pairwise(offsets.tolist())]
        counts = [meta[k] for k in ("dropped", "skipped", "capped", "truncated")]
        counts.append(meta.get("excluded", 0))  # absent from caches written before it existed
        return LoadedCorpus(TextCorpus(texts, labels), *counts)
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile, UnicodeDecodeError) as e:
        log.warning("corpus cache %s is unreadable (%s); rebuilding it", path, e)
        return None


def cached_corpus(
    source: str | Path,
    kind: str,
    key: Mapping[str, Any],
    build: Callable[[], LoadedCorpus],
    *,
    cache_root: Path | None = None,
) -> LoadedCorpus:
    """``build()``'s corpus, from the cache when an entry for (file bytes, ``key``) exists.

    ``key`` must hold everything besides the file that changes the result (options, synonym
    table hash, labeler version); it must be JSON-able.
    """
    root = (cache_root or default_cache_root()).expanduser().resolve()
    full_key = {
        "format": CACHE_FORMAT,
        "kind": kind,
        "source_sha256": file_sha256(source, root),
        **key,
    }
    path = root / _SUBDIR / f"{kind}-{digest(full_key)}.npz"
    remove_stale_tmp(path.parent)
    remove_stale_tmp(path.parent / "hashes")
    loaded = _load(path, full_key)
    if loaded is None:
        loaded = build()
        _save(path, loaded, full_key)
    return loaded


#: Source kinds ``load_corpus`` reads, with the options each accepts.
SOURCES = {
    "coco_captions": ("one_per_image", "on_error", "cap", "context_length", "exclude_image_ids"),
    "localized_narratives": ("max_words", "on_error", "cap", "context_length"),
    "llm_descriptions": ("on_error", "cap", "context_length"),
    "text_lines": ("cap", "context_length"),
}


def load_corpus(
    kind: str,
    path: str | Path,
    class_names: Sequence[str],
    synonyms: Mapping[str, Iterable[str]],
    *,
    cache_root: Path | None = None,
    use_cache: bool = True,
    **options: Any,
) -> LoadedCorpus:
    """Read and label a corpus of one of the ``SOURCES`` kinds, through the cache."""
    if kind not in SOURCES:
        raise ValueError(f"unknown corpus kind {kind!r}; expected one of {sorted(SOURCES)}")
    unknown = set(options) - set(SOURCES[kind])
    if unknown:
        raise TypeError(f"{kind} takes options {SOURCES[kind]}, not {sorted(unknown)}")
    # Texts are cut to the encoder's context before labelling: the cut is part of the key.
    options.setdefault("context_length", CLIP_CONTEXT_LENGTH)

    def build() -> LoadedCorpus:
        if kind == "llm_descriptions":
            return read_llm_descriptions(path, class_names, synonyms, **options)
        labeler = SynonymLabeler(class_names, synonyms)
        reader = {
            "coco_captions": read_coco_captions,
            "localized_narratives": read_localized_narratives,
            "text_lines": read_text_lines,
        }[kind]
        return reader(path, labeler, **options)

    if not use_cache:
        return build()
    key_options = dict(sorted(options.items()))
    if key_options.get("exclude_image_ids") is not None:  # 40k ids: keyed by their hash
        ids = sorted(set(key_options["exclude_image_ids"]))
        key_options["exclude_image_ids"] = hashlib.sha256(str(ids).encode()).hexdigest()[:20]
    key = {
        "labeler": LABELER_VERSION,
        "truncation": TRUNCATION_VERSION,
        "table": synonym_table_hash(class_names, synonyms),
        "options": key_options,
    }
    return cached_corpus(path, kind, key, build, cache_root=cache_root)
