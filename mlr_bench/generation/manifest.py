"""The manifest: one JSON line per finished image, appended only after the image is in place.

A line counts once its newline is written: an unterminated last line is what a kill mid-append
leaves, so readers ignore it and the next run of that shard cuts it off. A single-process run
writes ``manifest.jsonl``; rank ``r`` of a multi-process run writes ``manifest.rank<r>.jsonl``
(when a rank sees every image listed it also writes the merged ``manifest.jsonl``).
:func:`read_manifest` merges all of them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mlr_bench.generation.base import GeneratedImage, GenerationError

MANIFEST = "manifest.jsonl"
SETTINGS = "settings.json"
ENTRY_FORMAT = (
    'one JSON object per line: {"caption_id": str, "k": int, "text": str, "labels": [str], '
    '"seed": int, "file": "images/<caption_id>_<k>.<ext>", "generator": str}'
)
_FIELDS: dict[str, type | tuple[type, ...]] = {
    "caption_id": str,
    "k": int,
    "text": str,
    "labels": list,
    "seed": int,
    "file": str,
    "generator": str,
}


class ManifestError(GenerationError):
    """A manifest line is malformed, contradicts another, or lists a missing image."""


def manifest_name(rank: int, world_size: int) -> str:
    return MANIFEST if world_size == 1 else f"manifest.rank{rank}.jsonl"


def manifest_files(folder: Path) -> list[Path]:
    """The merged manifest first, then the rank manifests in rank order."""
    ranks = sorted(
        folder.glob("manifest.rank*.jsonl"),
        key=lambda p: (
            int(p.name[len("manifest.rank") : -len(".jsonl")] or 0)
            if p.name[len("manifest.rank") : -len(".jsonl")].isdigit()
            else 1 << 30
        ),
    )
    main = folder / MANIFEST
    return ([main] if main.is_file() else []) + ranks


def entry(image: GeneratedImage, folder: Path) -> dict[str, Any]:
    return {
        "caption_id": image.caption_id,
        "k": image.k,
        "text": image.text,
        "labels": list(image.labels),
        "seed": image.seed,
        "file": Path(image.path).relative_to(folder).as_posix(),
        "generator": image.generator,
    }


def encode_line(record: dict[str, Any]) -> bytes:
    return (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode()


def _parse(path: Path, number: int, line: bytes, folder: Path) -> GeneratedImage:
    def bad(problem: str) -> ManifestError:
        return ManifestError(f"{path}, line {number}: {problem}; expected {ENTRY_FORMAT}")

    try:
        record = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise bad(f"invalid JSON ({exc})") from None
    if not isinstance(record, dict):
        raise bad("not a JSON object")
    for field, kind in _FIELDS.items():
        value = record.get(field)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise bad(f'missing or bad "{field}"')
    if not all(isinstance(label, str) for label in record["labels"]):
        raise bad('"labels" must be a list of strings')
    file = Path(record["file"])
    if file.is_absolute() or ".." in file.parts or file.parts[:1] != ("images",):
        raise bad(f'"file" must be a path inside images/, not {record["file"]!r}')
    return GeneratedImage(
        caption_id=record["caption_id"],
        k=record["k"],
        text=record["text"],
        labels=tuple(record["labels"]),
        seed=record["seed"],
        path=folder / file,
        generator=record["generator"],
    )


def iter_manifest(path: Path, folder: Path) -> Iterator[tuple[int, GeneratedImage]]:
    """``(line number, entry)`` of every committed (newline-terminated, non-blank) line."""
    data = path.read_bytes()
    lines = data.split(b"\n")[:-1]  # the last piece is "" or an unterminated, torn line
    for number, line in enumerate(lines, start=1):
        if line.strip():
            yield number, _parse(path, number, line, folder)


def sort_key(image: GeneratedImage) -> tuple[int, int, str, int]:
    """Caption ids in numeric order when they are numbers, else as text; then ``k``."""
    cid = image.caption_id
    return (0, int(cid), cid, image.k) if cid.isdigit() else (1, 0, cid, image.k)


def load_entries(folder: Path, check_files: bool = False) -> dict[tuple[str, int], GeneratedImage]:
    """All entries of all manifests, keyed by ``(caption_id, k)``; contradictions fail."""
    found: dict[tuple[str, int], tuple[GeneratedImage, str]] = {}
    for path in manifest_files(folder):
        for number, image in iter_manifest(path, folder):
            if check_files and not image.path.is_file():
                raise ManifestError(
                    f"{path}, line {number}: lists {image.path}, which does not exist "
                    "(re-run the generation to complete the folder)"
                )
            key = (image.caption_id, image.k)
            if key in found and found[key][0] != image:
                raise ManifestError(
                    f"{path}, line {number}: caption {image.caption_id!r} image {image.k} "
                    f"contradicts the entry at {found[key][1]} (the folder mixes two "
                    "different caption lists; generate into a new --out folder)"
                )
            found.setdefault(key, (image, f"{path.name} line {number}"))
    return {key: image for key, (image, _) in found.items()}


def read_manifest(folder: str | Path) -> list[GeneratedImage]:
    """Every generated image of an output folder, sorted by caption id then ``k``.

    Merges the single-process and per-rank manifests (duplicates listed by more than one
    manifest count once), so the result is the same for interrupted-and-resumed, sharded and
    one-shot runs. Fails naming the file and line for a malformed entry or a missing image.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ManifestError(
            f"{folder}: no such folder; expected an output folder of `mlr-bench generate` "
            "(settings.json, images/, manifest.jsonl)"
        )
    if not (folder / SETTINGS).is_file() and not manifest_files(folder):
        inside = sorted(p for p in folder.iterdir() if (p / SETTINGS).is_file())
        hint = f"; it holds {', '.join(map(str, inside))}: pass one of those" if inside else ""
        raise ManifestError(
            f"{folder}: no settings.json or manifest.jsonl; expected an output folder of "
            "`mlr-bench generate` (its subfolder named <generator>-<hash>, the path it printed "
            f"last){hint}"
        )
    return sorted(load_entries(folder, check_files=True).values(), key=sort_key)


def repair(path: Path) -> int:
    """Cut an unterminated last line (a torn append); returns the bytes removed."""
    if not path.is_file():
        return 0
    size = path.stat().st_size
    if size == 0:
        return 0
    with path.open("rb+") as f:
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return 0
        # Scan backwards for the last newline; lines are short, so read the tail in blocks.
        pos, keep = size, 0
        while pos > 0:
            start = max(0, pos - 65536)
            f.seek(start)
            block = f.read(pos - start)
            cut = block.rfind(b"\n")
            if cut >= 0:
                keep = start + cut + 1
                break
            pos = start
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())
    return size - keep
