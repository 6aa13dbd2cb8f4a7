"""Batched, resumable, sharded generation into an output folder (see :mod:`.manifest`).

Resume and sharding both rest on one rule: the work is a fixed list of batches. Jobs are the
``(caption, k)`` pairs in caption order, cut into batches of ``batch_size``; batch ``b`` belongs
to rank ``b % world_size``. A batch with any image missing is generated again *whole*, so every
image is always computed in the same batch as in an uninterrupted run and the bytes match (batched
kernels are not bit-identical across batch compositions: another ``batch_size`` gives images
within one grey level at a small fraction of pixels, not the same bytes). Each image is written
to a temporary file and renamed into place; only then is its manifest line appended.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from mlr_bench.generation.base import (
    CaptionItem,
    GeneratedImage,
    GenerationError,
    TextToImage,
    folder_identity,
    image_seed,
    output_folder,
)
from mlr_bench.generation.manifest import (
    MANIFEST,
    SETTINGS,
    ManifestError,
    encode_line,
    entry,
    load_entries,
    manifest_name,
    repair,
    sort_key,
)

SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
Job = tuple[int, int]  # (caption index, k)


def detect_rank() -> tuple[int, int]:
    """``(rank, world_size)`` from an initialised ``torch.distributed``, else RANK/WORLD_SIZE."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    try:
        return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    except ValueError as exc:
        raise GenerationError(f"RANK/WORLD_SIZE must be integers ({exc})") from None


def _check_request(
    captions: Sequence[CaptionItem],
    images_per_caption: int,
    batch_size: int,
    rank: int,
    world_size: int,
) -> None:
    if images_per_caption < 1 or batch_size < 1:
        raise GenerationError(
            f"images_per_caption and batch_size must be >= 1, not {images_per_caption} and "
            f"{batch_size}"
        )
    if world_size < 1 or not 0 <= rank < world_size:
        raise GenerationError(f"rank must be in [0, world_size), not {rank} of {world_size}")
    seen: set[str] = set()
    for i, item in enumerate(captions):
        if not isinstance(item.caption_id, str) or not SAFE_ID.match(item.caption_id):
            raise GenerationError(
                f"caption {i}: id {item.caption_id!r} cannot name a file; expected letters, "
                "digits, '.', '_' or '-' (at most 128, not starting with '.', '_' or '-')"
            )
        if item.caption_id in seen:
            raise GenerationError(f"caption {i}: duplicate caption id {item.caption_id!r}")
        seen.add(item.caption_id)


def _write_settings(folder: Path, identity: dict) -> None:
    """``settings.json`` first (atomically); an existing one must say the same."""
    import json

    from mlr_bench.runs import atomic_write_json

    path = folder / SETTINGS
    if path.is_file():
        try:
            existing = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise GenerationError(f"{path}: not valid JSON ({exc}); delete the folder") from None
        if existing != json.loads(json.dumps(identity, default=str)):
            raise GenerationError(
                f"{path}: the folder was made with other settings ({existing}); expected "
                f"{identity}. Delete it or generate into another --out folder"
            )
        return
    atomic_write_json(path, identity)


@contextlib.contextmanager
def _exclusive(folder: Path, name: str) -> Iterator[None]:
    """One writer per manifest file: a second process on the same shard fails at once."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no locking, callers must not overlap shards
        yield
        return
    with open(folder / f".{name}.lock", "a+b") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise GenerationError(
                f"{folder / name}: another process is generating this shard right now"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _remove_temps(folder: Path, rank: int, world_size: int) -> None:
    """Temp files of a killed run. With several ranks, only this rank's own."""
    pattern = ".*.tmp" if world_size == 1 else f".*.r{rank}.tmp"
    for tmp in (folder / "images").glob(pattern):
        tmp.unlink(missing_ok=True)
    if world_size == 1:
        for tmp in folder.glob(f".{SETTINGS}.*.tmp"):
            tmp.unlink(missing_ok=True)


def write_image(path: Path, data: bytes, rank: int, durable: bool) -> None:
    """Temp file in the same folder, then ``os.replace``: the final name is never partial."""
    tmp = path.with_name(f".{path.name}.r{rank}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _expected(item: CaptionItem, k: int, folder: Path, generator: TextToImage) -> GeneratedImage:
    return GeneratedImage(
        caption_id=item.caption_id,
        k=k,
        text=item.text,
        labels=tuple(item.labels),
        seed=image_seed(item.caption_id, k),
        path=folder / "images" / f"{item.caption_id}_{k}.{generator.extension}",
        generator=generator.id,
    )


def _check_resume(done: dict, wanted: dict[tuple[str, int], GeneratedImage], folder: Path) -> None:
    for key, image in wanted.items():
        if key in done and done[key] != image:
            raise ManifestError(
                f"{folder}: caption {key[0]!r} image {key[1]} is already listed with other "
                f"content ({done[key]}) than requested ({image}); the folder holds another "
                "caption list. Generate into another --out folder"
            )


def _consolidate(folder: Path, wanted: dict[tuple[str, int], GeneratedImage]) -> None:
    """Write the merged ``manifest.jsonl`` once every rank's images are listed."""
    from mlr_bench.runs import atomic_write_text

    done = load_entries(folder)
    if not all(key in done for key in wanted):
        return
    with contextlib.suppress(GenerationError), _exclusive(folder, MANIFEST):
        ordered = sorted(done.values(), key=sort_key)
        lines = b"".join(encode_line(entry(image, folder)) for image in ordered)
        atomic_write_text(folder / MANIFEST, lines.decode())


def generate_images(
    generator: TextToImage,
    captions: Sequence[CaptionItem],
    out_root: str | Path,
    images_per_caption: int = 1,
    batch_size: int = 8,
    rank: int | None = 0,
    world_size: int | None = 1,
    progress: bool = True,
    captions_record: dict[str, Any] | None = None,
) -> Path:
    """Generate ``images_per_caption`` images per caption into the generator's output folder.

    ``captions_record`` (recorded in settings.json, part of the folder hash) says whether the
    captions of the dataset's test images were dropped (see ``mlr-bench generate --protocol``).

    Resumable (finished images are skipped, a torn manifest line and stray temp files are
    cleaned up) and sharded (this call does the batches ``b`` with ``b % world_size == rank``;
    ``rank=None``/``world_size=None`` detect them from ``torch.distributed`` or RANK/WORLD_SIZE).
    Returns the output folder; with several ranks it is complete once every rank has returned.
    """
    if rank is None or world_size is None:
        detected = detect_rank()
        rank = detected[0] if rank is None else rank
        world_size = detected[1] if world_size is None else world_size
    captions = list(captions)
    _check_request(captions, images_per_caption, batch_size, rank, world_size)
    folder = output_folder(generator, out_root, images_per_caption, captions_record)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    _write_settings(folder, folder_identity(generator, images_per_caption, captions_record))

    jobs: list[Job] = [(i, k) for i in range(len(captions)) for k in range(images_per_caption)]
    batches = [jobs[s : s + batch_size] for s in range(0, len(jobs), batch_size)]
    mine = batches[rank::world_size]
    wanted = {
        (captions[i].caption_id, k): _expected(captions[i], k, folder, generator) for i, k in jobs
    }
    name = manifest_name(rank, world_size)
    with _exclusive(folder, name):
        _remove_temps(folder, rank, world_size)
        repair(folder / name)
        done = load_entries(folder)
        _check_resume(done, wanted, folder)
        done = {key: im for key, im in done.items() if im.path.is_file()}  # deleted: redo
        _run_batches(generator, captions, mine, wanted, done, folder / name, rank, progress)
    if world_size > 1:
        _barrier()
        _consolidate(folder, wanted)
    return folder


def _run_batches(
    generator: TextToImage,
    captions: Sequence[CaptionItem],
    batches: Sequence[Sequence[Job]],
    wanted: dict[tuple[str, int], GeneratedImage],
    done: dict,
    manifest: Path,
    rank: int,
    progress: bool,
) -> None:
    from tqdm.auto import tqdm

    def key(job: Job) -> tuple[str, int]:
        return captions[job[0]].caption_id, job[1]

    total = sum(len(b) for b in batches)
    finished = sum(key(j) in done for b in batches for j in b)
    bar = tqdm(
        total=total,
        initial=finished,
        unit="img",
        disable=not progress or total == 0,
        desc=f"generate [{generator.id}] rank {rank}",
        dynamic_ncols=True,
    )
    with bar, open(manifest, "ab") as log:
        for batch in batches:
            if all(key(j) in done for j in batch):
                continue
            images = generator.generate(
                [captions[i].text for i, _ in batch], [wanted[key(j)].seed for j in batch]
            )
            if len(images) != len(batch):
                raise GenerationError(
                    f"{generator.id} returned {len(images)} images for {len(batch)} prompts"
                )
            for job, image in zip(batch, images, strict=True):
                if key(job) in done:
                    continue
                target = wanted[key(job)]
                write_image(target.path, generator.encode(image), rank, generator.durable)
                log.write(encode_line(entry(target, manifest.parent)))
                log.flush()  # the line reaches the OS only after its image is in place
                done[key(job)] = target
                bar.update(1)
            if generator.durable:
                os.fsync(log.fileno())


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
