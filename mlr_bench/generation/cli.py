"""``mlr-bench generate``: text-to-image training images from a caption file or a datamodule.

Caption sources: a JSON-lines file ``{"id", "text", "labels"}``, a COCO captions json
(``captions_train2017.json``; labels parsed with ``--data``'s synonym table, ids = annotation
ids), or ``--data world`` alone (the world's caption corpus; ids = corpus index).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mlr_bench.errors import MLRBenchError
from mlr_bench.generation.base import CaptionItem, GenerationError, TextToImage

PROG = "mlr-bench generate"
JSONL_FORMAT = 'JSON lines, each {"id": str or int, "text": str, "labels": [class names]}'
COCO_FORMAT = 'a COCO captions json {"annotations": [{"id": int, "caption": str}, ...]}'
DATASETS = ("world", "voc2007", "coco2014", "nuswide")


class CaptionFileError(GenerationError):
    """A caption file, or one line in it, is not in an expected format."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Generate training images from captions (resumable, shardable). Output: "
        "OUT/<generator>-<hash of settings>/ with settings.json, images/ and manifest.jsonl.",
    )
    p.add_argument("--generator", required=True, choices=("world", "diffusers"))
    p.add_argument("--model", help="diffusers pipeline folder or cached hub id (diffusers)")
    p.add_argument(
        "--captions", help=f"caption file: .jsonl ({JSONL_FORMAT}) or .json ({COCO_FORMAT})"
    )
    p.add_argument(
        "--data",
        choices=DATASETS,
        help="world: its caption corpus (without --captions); others: the synonym "
        "table that labels a COCO captions file",
    )
    p.add_argument("--out", required=True, help="output root folder")
    p.add_argument("--images-per-caption", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=25, help="sampler steps (diffusers)")
    p.add_argument("--guidance", type=float, default=7.5, help="CFG scale (diffusers)")
    p.add_argument("--size", type=int, help="image size in pixels (diffusers 512, world 96)")
    p.add_argument("--format", default="png", choices=("png", "jpeg"), help="(diffusers)")
    p.add_argument("--dtype", default="auto", help="auto (fp16 on GPU, fp32 on CPU), float32...")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1...")
    p.add_argument("--limit", type=int, help="only the first N captions")
    p.add_argument(
        "--num-captions",
        type=int,
        default=20_000,
        help="size of the world's caption corpus (--data world)",
    )
    p.add_argument(
        "--one-per-image",
        action="store_true",
        help="COCO json: keep each image's lowest-id caption (TaI-DPT)",
    )
    p.add_argument(
        "--protocol",
        choices=("clean", "reference"),
        default="clean",
        help="clean (default): a COCO captions json with --data coco2014 drops the captions of "
        "test images (give --test-annotations); reference: keeps them, as the reference code",
    )
    p.add_argument(
        "--test-annotations",
        metavar="FILE",
        help="COCO instances_val2014.json: its image ids are the test images whose captions "
        "the clean protocol drops",
    )
    p.add_argument("--rank", type=int, help="this shard (default: RANK or torch.distributed)")
    p.add_argument("--world-size", type=int, help="number of shards (default: WORLD_SIZE)")
    p.add_argument("--no-progress", action="store_true")
    return p


def read_caption_jsonl(path: Path) -> list[CaptionItem]:
    """``{"id", "text", "labels"}`` lines; the labels are taken as given (UTF-8, BOM and CRLF
    handled; a bad line is an error naming the file, line and column)."""
    from mlr_bench.text.sources import iter_text_lines

    items = []
    for number, line in iter_text_lines(path, JSONL_FORMAT):
        if not line.strip():
            continue
        where = f"{path}, line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CaptionFileError(
                f"{where}: invalid JSON at column {exc.colno} ({exc.msg}); expected {JSONL_FORMAT}"
            ) from None
        cid = record.get("id") if isinstance(record, dict) else None
        text = record.get("text") if isinstance(record, dict) else None
        labels = record.get("labels", []) if isinstance(record, dict) else None
        if isinstance(cid, int) and not isinstance(cid, bool):
            cid = str(cid)
        if (
            not isinstance(cid, str)
            or not isinstance(text, str)
            or not isinstance(labels, list)
            or not all(isinstance(x, str) for x in labels)
        ):
            raise CaptionFileError(
                f'{where}: missing or bad "id", "text" or "labels"; expected {JSONL_FORMAT}'
            )
        if not text.strip():
            raise CaptionFileError(f'{where}: empty "text"; expected {JSONL_FORMAT}')
        items.append(CaptionItem(cid, text, tuple(labels)))
    return items


def read_coco_caption_items(
    path: Path,
    data: str | None,
    one_per_image: bool,
    exclude_image_ids: frozenset[int] = frozenset(),
) -> list[CaptionItem]:
    """COCO captions labelled with ``data``'s synonyms; captions naming no class are dropped,
    and so are those of ``exclude_image_ids`` (test images, under the clean protocol).

    Stable Diffusion's CLIP text encoder reads 77 tokens: a caption is cut to them before it is
    labelled, so that no label names something the image was never asked to show.
    """
    from mlr_bench.text.labeler import SynonymLabeler
    from mlr_bench.text.sources import read_json_file
    from mlr_bench.text.synonyms import synonym_table
    from mlr_bench.text.truncate import ContextTruncator

    if data is None or data == "world":
        raise CaptionFileError(
            f"{path}: a COCO captions file needs --data voc2007|coco2014|nuswide to label it "
            "(or write JSON lines with labels)"
        )
    document = read_json_file(path, COCO_FORMAT)
    annotations = document.get("annotations") if isinstance(document, dict) else None
    if not isinstance(annotations, list):
        raise CaptionFileError(f'{path}: no "annotations" list; expected {COCO_FORMAT}')
    records, truncate = [], ContextTruncator()
    for i, ann in enumerate(annotations, start=1):
        ok = isinstance(ann, dict) and isinstance(ann.get("caption"), str)
        if not ok or not isinstance(ann.get("id"), int):
            raise CaptionFileError(
                f'{path}, annotation {i}: missing or bad "id" or "caption"; expected {COCO_FORMAT}'
            )
        records.append((ann["id"], ann.get("image_id"), truncate(ann["caption"].strip())))
    records.sort(key=lambda r: r[0])
    if exclude_image_ids:
        records = [r for r in records if r[1] not in exclude_image_ids]
    if one_per_image:
        seen: set = set()
        records = [r for r in records if not (r[1] in seen or seen.add(r[1]))]
    classes, synonyms = synonym_table(data)
    labels = SynonymLabeler(classes, synonyms)([r[2] for r in records])
    return [
        CaptionItem(str(r[0]), r[2], tuple(classes[c] for c in row.nonzero()[0]))
        for r, row in zip(records, labels, strict=True)
        if row.any()
    ]


def world_caption_items(num_captions: int) -> list[CaptionItem]:
    """The world datamodule's caption corpus, as its T2I-PAL path requests it."""
    from mlr_bench.datamodules.world import World
    from mlr_bench.generated_data import caption_items
    from mlr_bench.world import CLASS_NAMES

    return caption_items(World(num_captions=num_captions).caption_corpus, CLASS_NAMES)


def test_image_ids(args: argparse.Namespace) -> frozenset[int] | None:
    """Ids of the test images whose captions the clean protocol drops (None: nothing to drop,
    the captions describe other images than the dataset's test images, or reference protocol).
    COCO keeps an image's id across releases, so val2014 ids are caption ids' image ids."""
    if args.data != "coco2014" or args.protocol != "clean":
        return None
    if not args.test_annotations:
        raise GenerationError(
            "--data coco2014 under the clean protocol drops the captions of test images "
            "(captions_train2017.json describes 35,504 of the 40,504 val2014 test images): give "
            "--test-annotations <coco>/annotations/instances_val2014.json, or --protocol "
            "reference to keep them as the reference code does"
        )
    from mlr_bench.text.sources import read_json_file

    path = Path(args.test_annotations).expanduser()
    fmt = 'a COCO instances json {"images": [{"id": int, ...}, ...]}'
    if not path.is_file():
        raise CaptionFileError(f"{path}: no such file; expected {fmt}")
    document = read_json_file(path, fmt)
    images = document.get("images") if isinstance(document, dict) else None
    if not isinstance(images, list) or not all(
        isinstance(i, dict) and isinstance(i.get("id"), int) for i in images
    ):
        raise CaptionFileError(f'{path}: no "images" list with integer "id"s; expected {fmt}')
    return frozenset(i["id"] for i in images)


def captions_record(args: argparse.Namespace, excluded: frozenset[int] | None) -> dict | None:
    """What settings.json says about test-image captions (None: not a question here)."""
    if args.data != "coco2014" or args.captions is None:
        return None
    if excluded is None:
        return {"test_captions": "kept", "protocol": args.protocol}
    return {"test_captions": "dropped", "protocol": args.protocol, "test_images": len(excluded)}


def load_captions(args: argparse.Namespace, excluded: frozenset[int] | None = None) -> list:
    if args.captions is None:
        if args.data != "world":
            raise GenerationError("give --captions FILE, or --data world for the world's captions")
        items = world_caption_items(args.num_captions)
    else:
        path = Path(args.captions).expanduser()
        if not path.is_file():
            raise CaptionFileError(
                f"{path}: no such file; expected .jsonl ({JSONL_FORMAT}) or .json ({COCO_FORMAT})"
            )
        if path.suffix.lower() == ".json":
            items = read_coco_caption_items(
                path, args.data, args.one_per_image, excluded or frozenset()
            )
        else:
            items = read_caption_jsonl(path)
    if not items:
        raise GenerationError("no captions to generate from")
    return items[: args.limit] if args.limit is not None else items


def make_generator(args: argparse.Namespace) -> TextToImage:
    if args.generator == "world":
        from mlr_bench.generation.world import WorldRenderer

        return WorldRenderer(image_size=args.size or 96)
    if not args.model:
        raise GenerationError(
            "--generator diffusers needs --model: a local diffusers pipeline folder (with "
            "model_index.json) or a hub id already in the Hugging Face cache"
        )
    from mlr_bench.generation.stable_diffusion import DiffusersTextToImage

    size = args.size or 512
    return DiffusersTextToImage(
        args.model,
        height=size,
        width=size,
        steps=args.steps,
        guidance_scale=args.guidance,
        dtype=args.dtype,
        device=args.device,
        image_format=args.format,
    )


def generate_main(argv: list[str]) -> int:
    """Returns 0, or 2 after one error message the user can act on."""
    from mlr_bench.generation.runner import generate_images

    args = build_parser().parse_args(argv)
    try:
        excluded = test_image_ids(args) if args.captions else None
        generator = make_generator(args)
        items = load_captions(args, excluded)
        if excluded is not None:
            print(
                f"{PROG}: captions of the {len(excluded):,} test images dropped (clean "
                "protocol; --protocol reference keeps them)",
                file=sys.stderr,
            )
        folder = generate_images(
            generator,
            items,
            args.out,
            images_per_caption=args.images_per_caption,
            batch_size=args.batch_size,
            rank=args.rank,
            world_size=args.world_size,
            progress=not args.no_progress,
            captions_record=captions_record(args, excluded),
        )
    except MLRBenchError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    print(
        f"{PROG}: {len(items) * args.images_per_caption} images in {folder}; train on them with "
        f"--data.generated_dir {folder}" + (f" --data {args.data}" if args.data else ""),
        file=sys.stderr,
    )
    print(folder)
    return 0
