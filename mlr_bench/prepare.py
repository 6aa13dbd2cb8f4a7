"""``mlr-bench prepare <dataset> --root DIR``: download, verify and unpack the benchmark datasets.

Archives stream into ``<root>/.downloads/<file>.part`` (an interrupted download resumes with an
HTTP ``Range`` request), are checked against the size and checksum in :data:`DATASETS`, renamed to
``<root>/.downloads/<file>`` once verified (later runs reuse them), and unpacked into a temporary
folder inside ``root`` whose entries are then renamed into place. A ``.prepared-<asset>`` marker is
written last, so a crash never leaves something that looks finished. NUS-WIDE has no public
download: ``prepare nuswide`` prints what to fetch by hand and checks the layout.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal

from tqdm import tqdm

from mlr_bench.errors import MLRBenchError

PROG = "mlr-bench prepare"
MIRROR_ENV = "MLR_BENCH_MIRROR"
DOWNLOADS = ".downloads"
CHUNK = 1 << 20
TIMEOUT_S = 60
# fmt: off
VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)
# fmt: on


@dataclass(frozen=True)
class Asset:
    """One downloadable archive and the paths (relative to root, ``/``-suffixed for folders) it
    must produce; ``provides`` doubles as the layout check and as the "already done" test."""

    name: str
    url: str
    size: int | None
    checksum: str | None  # "md5:<hex>" or "sha256:<hex>"; None where nobody publishes one
    kind: Literal["tar", "zip"]
    provides: tuple[str, ...]
    optional: bool = False  # only fetched with --with-train

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


def _voc_split(split: str) -> tuple[str, ...]:
    main = "VOCdevkit/VOC2007/ImageSets/Main"
    files = [f"{main}/{split}.txt", *(f"{main}/{cls}_{split}.txt" for cls in VOC_CLASSES)]
    return (*files, "VOCdevkit/VOC2007/JPEGImages/")


_VOC = "http://host.robots.ox.ac.uk/pascal/VOC/voc2007"
_COCO = "http://images.cocodataset.org"
# Checksums: VOC md5s are torchvision's (torchvision/datasets/voc.py), which match the devkit-era
# values used across the ecosystem. COCO publishes no checksums; the md5s below are the values
# shipped by PaddleDetection (dataset/coco/download_coco.py) and Salesforce LAVIS, and the
# annotations md5 equals the S3 ETag of the official object. Sizes are the Content-Length the
# official hosts report.
DATASETS: dict[str, tuple[Asset, ...]] = {
    "voc2007": (
        Asset(
            "voc2007-test",
            f"{_VOC}/VOCtest_06-Nov-2007.tar",
            451020800,
            "md5:b6e924de25625d8de591ea690078ad9f",
            "tar",
            _voc_split("test"),
        ),
        Asset(
            "voc2007-trainval",
            f"{_VOC}/VOCtrainval_06-Nov-2007.tar",
            460032000,
            "md5:c52e279531787c972589f7e41ab4ae64",
            "tar",
            _voc_split("trainval"),
        ),
    ),
    "coco2014": (
        Asset(
            "coco2014-annotations",
            f"{_COCO}/annotations/annotations_trainval2014.zip",
            252872794,
            "md5:0a379cfc70b0e71301e0f377548639bd",
            "zip",
            ("annotations/instances_val2014.json", "annotations/instances_train2014.json"),
        ),
        Asset(
            "coco2014-val",
            f"{_COCO}/zips/val2014.zip",
            6645013297,
            "md5:a3d79f5ed8d289b7a7554ce06a5782b3",
            "zip",
            ("val2014/",),
        ),
        Asset(
            "coco2014-train",
            f"{_COCO}/zips/train2014.zip",
            13510573713,
            "md5:0da8c0bd3d6becc4dcb32757491aca88",
            "zip",
            ("train2014/",),
            optional=True,
        ),
    ),
    "nuswide": (),
}

NUSWIDE_PAGE = "https://lms.comp.nus.edu.sg/wp-content/uploads/2019/research/nuswide/NUS-WIDE.html"
NUSWIDE_INSTRUCTIONS = f"""\
NUS-WIDE has no public download URL; fetch it by hand and arrange it under --root:
  From the NUS-WIDE page ({NUSWIDE_PAGE}):
    - "Image List":   ImageList/TestImagelist.txt and ImageList/TrainImagelist.txt
    - "Concept List": Concepts81.txt
    - "Groundtruth":  TrainTestLabels/Labels_<concept>_Test.txt and ..._Train.txt
                      for each of the 81 concepts in Concepts81.txt
  Images: Flickr/<folder>/<file>.jpg, one for every line of the two image lists (same folder and
    file names). The page links the original Flickr URLs, most of which no longer resolve, so the
    images are commonly obtained from third-party mirrors of the NUS-WIDE image archive.
  Then run `mlr-bench prepare nuswide --root DIR` again to check the layout."""


# ---- mirrors ------------------------------------------------------------------------------------
def resolve_mirror(cli_value: str | None) -> str | None:
    """``--mirror`` wins over ``$MLR_BENCH_MIRROR``; an empty value means "no mirror"."""
    value = cli_value if cli_value is not None else os.environ.get(MIRROR_ENV)
    return value or None


def mirrored_url(url: str, mirror: str | None) -> str:
    """The asset's file name under ``mirror`` (a URL or a local folder), or ``url`` unchanged."""
    if not mirror:
        return url
    if "://" not in mirror:  # a plain folder: serve it through urllib's file: handler
        mirror = Path(mirror).expanduser().resolve().as_uri()
    return mirror.rstrip("/") + "/" + urllib.parse.quote(url.rsplit("/", 1)[-1])


# ---- download -----------------------------------------------------------------------------------
def _log(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _interrupted(
    url: str, part: Path, got: int, expected: int | None, reason: object = None
) -> MLRBenchError:
    of = f" of {expected}" if expected is not None else ""
    why = f" ({reason})" if reason else ""
    return MLRBenchError(
        f"download of {url} stopped after {got}{of} bytes{why}; the partial file {part} is "
        "kept: re-run the same command to resume"
    )


def _open(url: str, offset: int) -> http.client.HTTPResponse | None:
    """Open ``url`` from byte ``offset``; None when the server says nothing is left (416)."""
    headers = {"User-Agent": "mlr-bench"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        return urllib.request.urlopen(
            urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S
        )
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:
            return None
        raise MLRBenchError(
            f"could not download {url}: HTTP {exc.code} {exc.reason}; check the URL or --mirror"
        ) from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise MLRBenchError(
            f"could not reach {url}: {reason}; check the network, or pass --mirror URL "
            f"(or set {MIRROR_ENV}) to download from a mirror"
        ) from exc


def _range_start(resp: http.client.HTTPResponse) -> int | None:
    """First byte of a 206 answer (``Content-Range: bytes START-END/TOTAL``); None otherwise."""
    if (getattr(resp, "status", None) or 200) != 206:
        return None
    value = resp.headers.get("Content-Range", "")
    try:
        return int(value.split()[1].split("-")[0])
    except (IndexError, ValueError):
        return None


def _fetch_into(url: str, part: Path, size: int | None) -> None:
    """Append the rest of ``url`` to ``part``; restart from zero when the server ignores Range."""
    offset = _size(part)
    resp = _open(url, offset)
    if resp is None:
        return  # 416: the part already holds everything; verification decides
    with resp:
        if offset and _range_start(resp) != offset:
            _log(f"{url}: server did not resume at byte {offset}; starting over")
            offset = 0
        length = resp.headers.get("Content-Length")
        expected = offset + int(length) if length is not None else size
        _stream(resp, part, offset, expected, url)


def _stream(
    resp: http.client.HTTPResponse, part: Path, offset: int, expected: int | None, url: str
) -> None:
    """Copy the body into ``part`` from ``offset``; a short body keeps the part for resuming."""
    bar = tqdm(
        total=expected,
        initial=offset,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=part.name.removesuffix(".part"),
        file=sys.stderr,
        mininterval=1.0,
    )
    with bar, open(part, "r+b" if offset else "wb") as fh:
        fh.seek(offset)
        fh.truncate()
        try:
            while chunk := resp.read(CHUNK):
                fh.write(chunk)
                bar.update(len(chunk))
        except (http.client.HTTPException, OSError) as exc:
            fh.flush()
            raise _interrupted(url, part, fh.tell(), expected, exc) from exc
        got = fh.tell()
    if expected is not None and got < expected:
        raise _interrupted(url, part, got, expected)


def file_digest(path: Path, algorithm: str) -> str:
    """Hex digest of a file, read in chunks so multi-GB archives fit in memory."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _verify(url: str, part: Path, size: int | None, checksum: str | None) -> None:
    """Size then checksum; a too-short part is kept (resumable), a wrong one is deleted."""
    got = _size(part)
    if size is not None and got < size:
        raise _interrupted(url, part, got, size)
    if size is not None and got > size:
        part.unlink()
        raise MLRBenchError(
            f"download of {url} has {got} bytes, expected {size}; deleted it: re-run to "
            "download it again (or check --mirror)"
        )
    if checksum is None:
        _log(f"{part.name.removesuffix('.part')}: no official checksum; verified size only")
        return
    algorithm, _, expected = checksum.partition(":")
    _log(f"verifying {algorithm} of {part.name.removesuffix('.part')}")
    actual = file_digest(part, algorithm)
    if actual != expected.lower():
        part.unlink()
        raise MLRBenchError(
            f"checksum mismatch for {url}: expected {algorithm} {expected}, got {actual}; the "
            "corrupt download was deleted: re-run the command to download it again"
        )


def download(url: str, dest: Path, size: int | None = None, checksum: str | None = None) -> Path:
    """Fetch ``url`` to ``dest`` through ``dest.part`` (resumable), verified; reuse a ``dest``."""
    if dest.exists() and (size is None or _size(dest) == size):
        _log(f"reusing verified {dest}")
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.unlink(missing_ok=True)
    part = dest.with_name(dest.name + ".part")
    if size is not None and _size(part) > size:
        part.unlink()
    if size is None or _size(part) < size:
        _fetch_into(url, part, size)
    _verify(url, part, size, checksum)
    os.replace(part, dest)
    return dest


# ---- extraction ---------------------------------------------------------------------------------
def _check_member(name: str, archive: Path) -> None:
    """Refuse members that would be written outside the extraction folder."""
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or (path.parts and ":" in path.parts[0]):
        raise MLRBenchError(
            f"refusing to extract {archive}: member {name!r} points outside the target folder "
            "(absolute path or '..')"
        )


def _extract_tar(archive: Path, dest: Path) -> None:
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
        for member in members:
            _check_member(member.name, archive)
            if not (member.isfile() or member.isdir()):
                raise MLRBenchError(
                    f"refusing to extract {archive}: member {member.name!r} is a link or "
                    "special file"
                )
        extra = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        for member in tqdm(
            members,
            desc=f"extracting {archive.name}",
            unit="file",
            file=sys.stderr,
            mininterval=1.0,
        ):
            tar.extract(member, dest, **extra)


def _extract_zip(archive: Path, dest: Path) -> None:
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        for info in infos:
            _check_member(info.filename, archive)
        for info in tqdm(
            infos, desc=f"extracting {archive.name}", unit="file", file=sys.stderr, mininterval=1.0
        ):
            zf.extract(info, dest)


def _merge_into(src: Path, dst: Path) -> None:
    """Rename ``src``'s entries into ``dst``, descending only where a folder already exists
    (the VOC test and trainval archives both fill ``VOCdevkit/VOC2007``)."""
    for entry in sorted(src.iterdir()):
        target = dst / entry.name
        if entry.is_dir() and target.is_dir() and not target.is_symlink():
            _merge_into(entry, target)
            continue
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif entry.is_dir() and (target.exists() or target.is_symlink()):
            target.unlink()  # a folder cannot be renamed over a file
        os.replace(entry, target)


def extract(archive: Path, kind: str, root: Path, label: str) -> None:
    """Unpack into a temporary folder inside ``root``, then rename into place; on failure the
    temporary folder is removed and ``root`` is left as it was."""
    tmp = Path(tempfile.mkdtemp(prefix=f".extract-{label}-", dir=root))
    try:
        (_extract_tar if kind == "tar" else _extract_zip)(archive, tmp)
        _merge_into(tmp, root)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError) as exc:
        raise MLRBenchError(f"{archive} is not a readable {kind} archive ({exc})") from exc
    except OSError as exc:  # disk full, permissions: fixable by the user, nothing half-done
        raise MLRBenchError(f"could not extract {archive} into {root}: {exc}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---- layout checks ------------------------------------------------------------------------------
def _present(root: Path, rel: str) -> bool:
    return (root / rel).is_dir() if rel.endswith("/") else (root / rel).is_file()


def _listed_missing(listing: Path, paths: list[Path], folder: Path) -> list[str]:
    """One line saying how many listed images are absent, with a few examples."""
    gone = [p for p in paths if not p.is_file()]
    if not gone:
        return []
    shown = ", ".join(str(p) for p in gone[:3])
    return [
        f"{len(gone)} of {len(paths)} images listed in {listing} missing under {folder} "
        f"(e.g. {shown})"
    ]


def _voc_images(root: Path) -> list[str]:
    """Every id in the split lists must have its JPEG."""
    base = root / "VOCdevkit/VOC2007"
    problems: list[str] = []
    for split in ("test", "trainval"):
        listing = base / f"ImageSets/Main/{split}.txt"
        if listing.is_file() and (base / "JPEGImages").is_dir():
            ids = [line.split()[0] for line in listing.read_text().splitlines() if line.strip()]
            paths = [base / "JPEGImages" / f"{i}.jpg" for i in ids]
            problems += _listed_missing(listing, paths, base / "JPEGImages")
    return problems


def _nuswide_image_path(root: Path, line: str) -> Path:
    """List lines look like ``actor\\0001_2124494179.jpg`` (Windows separators)."""
    parts = PurePosixPath(line.strip().replace("\\", "/")).parts
    return root.joinpath("Flickr", *parts[-2:])


def _nuswide(root: Path) -> list[str]:
    """The files named in NUSWIDE_INSTRUCTIONS, and every listed image under Flickr/."""
    lists = [root / "ImageList/TestImagelist.txt", root / "ImageList/TrainImagelist.txt"]
    concepts_file = root / "Concepts81.txt"
    needed = [concepts_file, *lists]
    if concepts_file.is_file():
        concepts = [c.strip() for c in concepts_file.read_text().splitlines() if c.strip()]
        labels = root / "TrainTestLabels"
        needed += [labels / f"Labels_{c}_{s}.txt" for c in concepts for s in ("Test", "Train")]
    problems = [str(path) for path in needed if not path.is_file()]
    for listing in lists:
        if listing.is_file():
            lines = [ln for ln in listing.read_text(errors="replace").splitlines() if ln.strip()]
            paths = [_nuswide_image_path(root, ln) for ln in lines]
            problems += _listed_missing(listing, paths, root / "Flickr")
    return problems


LAYOUT_CHECKS: dict[str, Callable[[Path], list[str]]] = {
    "voc2007": _voc_images,
    "nuswide": _nuswide,
}


def select_assets(
    dataset: str, assets: Sequence[Asset] | None = None, with_train: bool = False
) -> list[Asset]:
    """The dataset's assets (or the given table), optional ones only with ``with_train``."""
    if dataset not in DATASETS:
        raise MLRBenchError(f"unknown dataset {dataset!r}; known: {', '.join(DATASETS)}")
    table = DATASETS[dataset] if assets is None else assets
    return [a for a in table if with_train or not a.optional]


def validate(
    dataset: str, root: str | Path, assets: Sequence[Asset] | None = None, with_train: bool = False
) -> list[str]:
    """What is missing under ``root`` (paths, and counts of missing listed images); [] = ready."""
    root = Path(root)
    problems = [
        str(root / rel) + ("/" if rel.endswith("/") else "")
        for asset in select_assets(dataset, assets, with_train)
        for rel in asset.provides
        if not _present(root, rel)
    ]
    check = LAYOUT_CHECKS.get(dataset)
    return problems + (check(root) if check else [])


# ---- prepare ------------------------------------------------------------------------------------
def _marker(root: Path, asset: Asset) -> Path:
    return root / f".prepared-{asset.name}"


def _write_marker(root: Path, asset: Asset, url: str) -> None:
    """Written last, atomically: its presence means the asset's files are all in place."""
    marker = _marker(root, asset)
    tmp = marker.with_name(marker.name + ".tmp")
    record = {"asset": asset.name, "url": url, "size": asset.size, "checksum": asset.checksum}
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, marker)


def prepare_asset(
    asset: Asset, root: Path, mirror: str | None = None, delete_archive: bool = False
) -> None:
    """Download, verify and extract one asset unless its marker and files are already there."""
    if _marker(root, asset).exists() and all(_present(root, rel) for rel in asset.provides):
        _log(f"{asset.name}: already prepared, skipping")
        return
    url = mirrored_url(asset.url, mirror)
    archive = download(url, root / DOWNLOADS / asset.filename, asset.size, asset.checksum)
    extract(archive, asset.kind, root, asset.name)
    _write_marker(root, asset, url)
    if delete_archive:
        archive.unlink()


def prepare(
    dataset: str,
    root: str | Path,
    assets: Sequence[Asset] | None = None,
    mirror: str | None = None,
    *,
    with_train: bool = False,
    delete_archives: bool = False,
) -> list[str]:
    """Prepare ``dataset`` under ``root``; ``assets`` replaces the built-in table (tests, custom
    mirrors with their own checksums). Returns what is still missing ([] = ready)."""
    root = Path(root).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    for asset in select_assets(dataset, assets, with_train):
        prepare_asset(asset, root, mirror, delete_archives)
    return validate(dataset, root, assets, with_train)


# ---- command line -------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Download, verify and unpack a benchmark dataset into --root.",
    )
    parser.add_argument("dataset", choices=sorted(DATASETS))
    parser.add_argument("--root", required=True, help="folder the dataset is unpacked into")
    parser.add_argument(
        "--mirror",
        help=f"base URL or folder holding the archives by file name (default: ${MIRROR_ENV})",
    )
    parser.add_argument(
        "--validate-only", action="store_true", help="only check the layout under --root"
    )
    parser.add_argument(
        "--with-train", action="store_true", help="coco2014: also fetch train2014.zip (13 GB)"
    )
    parser.add_argument(
        "--delete-archives", action="store_true", help="delete archives once extracted"
    )
    return parser


def _report(dataset: str, root: Path, problems: list[str]) -> int:
    """Missing items one per line on stderr, then the one-line error; or a ready line."""
    if not problems:
        print(f"{dataset} is ready under {root}")
        return 0
    if dataset == "nuswide":
        print(NUSWIDE_INSTRUCTIONS)
    for problem in problems:
        print(f"  missing: {problem}", file=sys.stderr)
    raise MLRBenchError(f"{dataset} layout under {root} is incomplete: {len(problems)} missing")


def _run(args: argparse.Namespace) -> int:
    root = Path(args.root).expanduser()
    if args.with_train and args.dataset != "coco2014":
        raise MLRBenchError("--with-train applies to coco2014 only")
    if args.validate_only or not DATASETS[args.dataset]:
        problems = validate(args.dataset, root, with_train=args.with_train)
    else:
        problems = prepare(
            args.dataset,
            root,
            mirror=resolve_mirror(args.mirror),
            with_train=args.with_train,
            delete_archives=args.delete_archives,
        )
    return _report(args.dataset, root, problems)


def prepare_main(argv: Sequence[str]) -> int:
    """Entry point of ``mlr-bench prepare`` (``argv`` after the word ``prepare``); exit code 0 on
    success, 2 for anything the user can fix, 130 when interrupted (downloads resume)."""
    try:
        args = build_parser().parse_args(list(argv))
    except SystemExit as exc:  # argparse already printed usage / help
        return exc.code if isinstance(exc.code, int) else 2
    try:
        return _run(args)
    except MLRBenchError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
