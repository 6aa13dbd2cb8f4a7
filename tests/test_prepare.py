"""``mlr-bench prepare``: downloads from a local HTTP server (with Range support), resume,
checksum and truncation failures, safe atomic extraction, and layout validation."""

from __future__ import annotations

import functools
import hashlib
import io
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from mlr_bench import prepare as prep
from mlr_bench.errors import MLRBenchError
from mlr_bench.prepare import Asset

VOC_MAIN = "VOCdevkit/VOC2007/ImageSets/Main"
ORIGIN = "http://example.invalid/pascal/VOC/voc2007"


# ---- fixture server -----------------------------------------------------------------------------
@dataclass
class Served:
    """What the handler serves and what it saw; tests flip the switches between runs."""

    directory: Path
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    honour_range: bool = True
    truncate: bool = False  # announce the full Content-Length, send half, close
    url: str = ""

    def ranged(self) -> list[str]:
        return [r for _, r in self.requests if r]


class RangeHandler(SimpleHTTPRequestHandler):
    """SimpleHTTPRequestHandler plus ``Range: bytes=N-`` and a truncating mode."""

    served: Served

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        rng = self.headers.get("Range")
        self.served.requests.append((self.path, rng))
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start = int(rng.removeprefix("bytes=").split("-")[0]) if rng else 0
        if rng and self.served.honour_range:
            if start >= len(data):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            start = 0
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2] if self.served.truncate else body)
        self.close_connection = True


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Served]:
    served = Served(tmp_path / "www")
    served.directory.mkdir()
    handler = type("Handler", (RangeHandler,), {"served": served})
    httpd = ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(handler, directory=str(served.directory))
    )
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    served.url = f"http://127.0.0.1:{httpd.server_address[1]}/files"
    (served.directory / "files").mkdir()
    try:
        yield served
    finally:
        httpd.shutdown()
        httpd.server_close()


# ---- fixture archives ---------------------------------------------------------------------------
def _jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (seed * 40, 10, 200)).save(buf, format="JPEG")
    return buf.getvalue()


def voc_tar(extra: dict[str, bytes] | None = None) -> bytes:
    """A tiny VOC test archive: split list, two class files, two JPEGs."""
    files = {
        f"{VOC_MAIN}/test.txt": b"000001\n000002\n",
        f"{VOC_MAIN}/aeroplane_test.txt": b"000001  1\n000002 -1\n",
        f"{VOC_MAIN}/bicycle_test.txt": b"000001 -1\n000002  1\n",
        "VOCdevkit/VOC2007/JPEGImages/000001.jpg": _jpeg(1),
        "VOCdevkit/VOC2007/JPEGImages/000002.jpg": _jpeg(2),
        **(extra or {}),
    }
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def zip_bytes(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


VOC_PROVIDES = (
    f"{VOC_MAIN}/test.txt",
    f"{VOC_MAIN}/aeroplane_test.txt",
    f"{VOC_MAIN}/bicycle_test.txt",
    "VOCdevkit/VOC2007/JPEGImages/",
)


def voc_asset(
    data: bytes, name: str = "VOCtest_tiny.tar", asset_name: str = "voc2007-test", **kw: object
) -> Asset:
    """An asset whose checksum/size describe ``data`` (what the server *should* serve)."""
    fields = {
        "size": len(data),
        "checksum": "md5:" + hashlib.md5(data).hexdigest(),
        "kind": "tar",
        "provides": VOC_PROVIDES,
        **kw,
    }
    return Asset(asset_name, f"{ORIGIN}/{name}", **fields)  # type: ignore[arg-type]


def publish(server: Served, name: str, data: bytes) -> None:
    (server.directory / "files" / name).write_bytes(data)


def leftovers(root: Path) -> list[str]:
    """Temporary extraction folders and markers that must not survive a failure."""
    return sorted(p.name for p in root.glob(".extract-*")) + sorted(
        p.name for p in root.glob(".prepared-*")
    )


# ---- download, resume, verification -------------------------------------------------------------
def test_full_prepare_then_reuse(server: Served, tmp_path: Path) -> None:
    data = voc_tar()
    publish(server, "VOCtest_tiny.tar", data)
    root = tmp_path / "data"
    assert prep.prepare("voc2007", root, assets=[voc_asset(data)], mirror=server.url) == []
    assert (root / f"{VOC_MAIN}/aeroplane_test.txt").read_bytes().startswith(b"000001")
    assert (root / "VOCdevkit/VOC2007/JPEGImages/000002.jpg").is_file()
    assert (root / ".prepared-voc2007-test").is_file()
    assert (root / ".downloads/VOCtest_tiny.tar").read_bytes() == data
    assert not list((root / ".downloads").glob("*.part"))
    assert list(root.glob(".extract-*")) == []
    assert len(server.requests) == 1
    assert prep.prepare("voc2007", root, assets=[voc_asset(data)], mirror=server.url) == []
    assert len(server.requests) == 1  # marker + files present: nothing fetched


def test_verified_archive_reused_without_download(server: Served, tmp_path: Path) -> None:
    data = voc_tar()
    publish(server, "VOCtest_tiny.tar", data)
    root = tmp_path / "data"
    prep.prepare("voc2007", root, assets=[voc_asset(data)], mirror=server.url)
    (root / ".prepared-voc2007-test").unlink()  # extraction must run again, download must not
    assert prep.prepare("voc2007", root, assets=[voc_asset(data)], mirror=server.url) == []
    assert len(server.requests) == 1
    assert (root / ".prepared-voc2007-test").is_file()


def test_resume_sends_range(server: Served, tmp_path: Path) -> None:
    data = voc_tar()
    publish(server, "VOCtest_tiny.tar", data)
    root = tmp_path / "data"
    (root / ".downloads").mkdir(parents=True)
    (root / ".downloads/VOCtest_tiny.tar.part").write_bytes(data[: len(data) // 2])
    assert prep.prepare("voc2007", root, assets=[voc_asset(data)], mirror=server.url) == []
    assert server.ranged() == [f"bytes={len(data) // 2}-"]
    assert (root / ".downloads/VOCtest_tiny.tar").read_bytes() == data


def test_server_ignoring_range_restarts_from_zero(server: Served, tmp_path: Path) -> None:
    data = voc_tar()
    publish(server, "VOCtest_tiny.tar", data)
    server.honour_range = False
    root = tmp_path / "data"
    (root / ".downloads").mkdir(parents=True)
    (root / ".downloads/VOCtest_tiny.tar.part").write_bytes(data[:1000])
    assert prep.prepare("voc2007", root, assets=[voc_asset(data)], mirror=server.url) == []
    assert (root / ".downloads/VOCtest_tiny.tar").read_bytes() == data


def test_checksum_mismatch_fails_and_cleans_up(server: Served, tmp_path: Path) -> None:
    data = voc_tar()
    corrupt = bytearray(data)
    corrupt[700] ^= 0xFF
    publish(server, "VOCtest_tiny.tar", bytes(corrupt))
    root = tmp_path / "data"
    asset = voc_asset(data)
    with pytest.raises(MLRBenchError) as err:
        prep.prepare("voc2007", root, assets=[asset], mirror=server.url)
    message = str(err.value)
    assert f"{server.url}/VOCtest_tiny.tar" in message
    assert hashlib.md5(data).hexdigest() in message
    assert hashlib.md5(bytes(corrupt)).hexdigest() in message
    assert "re-run" in message
    assert not (root / "VOCdevkit").exists()
    assert list((root / ".downloads").iterdir()) == []
    assert leftovers(root) == []


def test_truncated_download_keeps_part_then_resumes(server: Served, tmp_path: Path) -> None:
    data = voc_tar()
    publish(server, "VOCtest_tiny.tar", data)
    server.truncate = True
    root = tmp_path / "data"
    with pytest.raises(MLRBenchError, match="resume"):
        prep.prepare("voc2007", root, assets=[voc_asset(data)], mirror=server.url)
    part = root / ".downloads/VOCtest_tiny.tar.part"
    assert part.read_bytes() == data[: len(data) // 2]
    assert not (root / "VOCdevkit").exists()
    assert leftovers(root) == []

    server.truncate = False
    assert prep.prepare("voc2007", root, assets=[voc_asset(data)], mirror=server.url) == []
    assert server.ranged() == [f"bytes={len(data) // 2}-"]
    assert not part.exists()
    assert (root / "VOCdevkit/VOC2007/JPEGImages/000001.jpg").is_file()


def test_file_shorter_than_declared_size_is_incomplete(server: Served, tmp_path: Path) -> None:
    data = voc_tar()
    publish(server, "VOCtest_tiny.tar", data[:-512])
    root = tmp_path / "data"
    with pytest.raises(MLRBenchError, match=f"of {len(data)} bytes"):
        prep.prepare("voc2007", root, assets=[voc_asset(data)], mirror=server.url)
    assert (root / ".downloads/VOCtest_tiny.tar.part").is_file()
    assert not (root / "VOCdevkit").exists()


def test_missing_file_on_server_names_url(server: Served, tmp_path: Path) -> None:
    with pytest.raises(MLRBenchError, match="HTTP 404") as err:
        prep.prepare("voc2007", tmp_path, assets=[voc_asset(b"x")], mirror=server.url)
    assert f"{server.url}/VOCtest_tiny.tar" in str(err.value)


def test_coco_zips_sha256_and_size_only(
    server: Served, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ann = zip_bytes({"annotations/instances_val2014.json": b'{"images": []}'})
    val = zip_bytes({"val2014/COCO_val2014_000000000042.jpg": _jpeg(3)})
    publish(server, "ann.zip", ann)
    publish(server, "val.zip", val)
    assets = [
        Asset(
            "coco2014-annotations",
            "http://images.example.invalid/annotations/ann.zip",
            len(ann),
            "sha256:" + hashlib.sha256(ann).hexdigest(),
            "zip",
            ("annotations/instances_val2014.json",),
        ),
        Asset(
            "coco2014-val", "http://x.invalid/zips/val.zip", len(val), None, "zip", ("val2014/",)
        ),
        Asset("coco2014-train", "http://x.invalid/t.zip", 1, None, "zip", ("t/",), optional=True),
    ]
    root = tmp_path / "coco"
    assert prep.prepare("coco2014", root, assets=assets, mirror=server.url) == []
    assert (root / "val2014/COCO_val2014_000000000042.jpg").is_file()
    assert "no official checksum; verified size only" in capsys.readouterr().err
    assert {p for p, _ in server.requests} == {"/files/ann.zip", "/files/val.zip"}


def test_two_archives_merge_into_one_tree(server: Served, tmp_path: Path) -> None:
    """VOC test and trainval both unpack into VOCdevkit/VOC2007."""
    test = voc_tar()
    trainval = voc_tar(
        {f"{VOC_MAIN}/trainval.txt": b"", "VOCdevkit/VOC2007/JPEGImages/9.jpg": b"9"}
    )
    publish(server, "a.tar", test)
    publish(server, "b.tar", trainval)
    root = tmp_path / "data"
    assets = [
        voc_asset(test, "a.tar"),
        voc_asset(trainval, "b.tar", "voc2007-trainval", provides=(f"{VOC_MAIN}/trainval.txt",)),
    ]
    assert prep.prepare("voc2007", root, assets=assets, mirror=server.url) == []
    assert (root / "VOCdevkit/VOC2007/JPEGImages/9.jpg").is_file()
    assert (root / "VOCdevkit/VOC2007/JPEGImages/000001.jpg").is_file()
    assert (root / ".prepared-voc2007-trainval").is_file()


# ---- archive safety -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kind", "member"), [("tar", "../evil"), ("zip", "../evil"), ("zip", "/tmp/evil")]
)
def test_path_traversal_member_is_rejected(
    server: Served, tmp_path: Path, kind: str, member: str
) -> None:
    if kind == "tar":
        data = voc_tar({member: b"pwned"})
    else:
        data = zip_bytes({"val2014/a.jpg": b"a", member: b"pwned"})
    name = f"evil.{kind}"
    publish(server, name, data)
    root = tmp_path / "data"
    asset = voc_asset(data, name, kind=kind)
    with pytest.raises(MLRBenchError, match="outside the target folder") as err:
        prep.prepare("voc2007", root, assets=[asset], mirror=server.url)
    assert member in str(err.value)
    assert not (tmp_path / "evil").exists()
    assert not (root / "VOCdevkit").exists() and not (root / "val2014").exists()
    assert leftovers(root) == []


def test_tar_symlink_member_is_rejected(server: Served, tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        link = tarfile.TarInfo("VOCdevkit/link")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        tar.addfile(link)
    publish(server, "link.tar", buf.getvalue())
    with pytest.raises(MLRBenchError, match="link"):
        prep.prepare("voc2007", tmp_path / "d", [voc_asset(buf.getvalue(), "link.tar")], server.url)
    assert not (tmp_path / "d/VOCdevkit").exists()


# ---- mirrors ------------------------------------------------------------------------------------
def test_mirror_url_and_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    url = "http://host.robots.ox.ac.uk/pascal/VOC/voc2007/VOCtest_06-Nov-2007.tar"
    assert prep.mirrored_url(url, None) == url
    assert (
        prep.mirrored_url(url, "https://m.org/voc/") == "https://m.org/voc/VOCtest_06-Nov-2007.tar"
    )
    assert prep.mirrored_url(url, str(tmp_path)).startswith("file://")
    monkeypatch.setenv(prep.MIRROR_ENV, "https://env.example")
    assert prep.resolve_mirror(None) == "https://env.example"
    assert prep.resolve_mirror("https://cli.example") == "https://cli.example"


def test_local_folder_mirror(tmp_path: Path) -> None:
    data = voc_tar()
    (tmp_path / "mirror").mkdir()
    (tmp_path / "mirror/VOCtest_tiny.tar").write_bytes(data)
    root = tmp_path / "data"
    assert prep.prepare("voc2007", root, [voc_asset(data)], str(tmp_path / "mirror")) == []


# ---- layout validation and the command line -----------------------------------------------------
def write_voc_layout(root: Path) -> None:
    main = root / VOC_MAIN
    main.mkdir(parents=True)
    for split, ids in (("test", ["000001"]), ("trainval", ["000002"])):
        (main / f"{split}.txt").write_text("\n".join(ids) + "\n")
        for cls in prep.VOC_CLASSES:
            (main / f"{cls}_{split}.txt").write_text(f"{ids[0]} -1\n")
    (root / "VOCdevkit/VOC2007/JPEGImages").mkdir()
    for i in ("000001", "000002"):
        (root / f"VOCdevkit/VOC2007/JPEGImages/{i}.jpg").write_bytes(b"jpg")


def test_validate_only_names_missing_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_voc_layout(tmp_path)
    assert prep.prepare_main(["voc2007", "--root", str(tmp_path), "--validate-only"]) == 0
    assert "ready" in capsys.readouterr().out
    (tmp_path / VOC_MAIN / "dog_test.txt").unlink()
    (tmp_path / "VOCdevkit/VOC2007/JPEGImages/000002.jpg").unlink()
    assert prep.prepare_main(["voc2007", "--root", str(tmp_path), "--validate-only"]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / VOC_MAIN / "dog_test.txt") in err
    assert "1 of 1 images listed in" in err and "000002.jpg" in err
    assert err.strip().splitlines()[-1].startswith("mlr-bench prepare: error: voc2007 layout")


def test_cli_user_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert prep.prepare_main(["imagenet", "--root", str(tmp_path)]) == 2
    assert "mlr-bench prepare: error:" in capsys.readouterr().err
    assert prep.prepare_main(["voc2007", "--root", str(tmp_path), "--with-train"]) == 2
    assert "coco2014 only" in capsys.readouterr().err
    assert prep.prepare_main(["--help"]) == 0


def write_nuswide_layout(root: Path) -> None:
    root.mkdir(parents=True)
    (root / "Concepts81.txt").write_text("animal\nsky\n")
    (root / "ImageList").mkdir(parents=True)
    (root / "ImageList/TestImagelist.txt").write_text("actor\\0001_1.jpg\r\nsky\\0002_2.jpg\r\n")
    (root / "ImageList/TrainImagelist.txt").write_text("actor\\0003_3.jpg\n")
    (root / "TrainTestLabels").mkdir()
    for concept in ("animal", "sky"):
        for split, n in (("Test", 2), ("Train", 1)):
            (root / f"TrainTestLabels/Labels_{concept}_{split}.txt").write_text("0\n" * n)
    for rel in ("actor/0001_1.jpg", "sky/0002_2.jpg", "actor/0003_3.jpg"):
        (root / "Flickr" / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / "Flickr" / rel).write_bytes(b"jpg")


def test_nuswide_instructions_then_valid_layout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty"
    assert prep.prepare_main(["nuswide", "--root", str(empty)]) == 2
    out, err = capsys.readouterr()
    assert "NUS-WIDE" in out and "TrainTestLabels/Labels_<concept>_Test.txt" in out
    for rel in ("Concepts81.txt", "ImageList/TestImagelist.txt", "ImageList/TrainImagelist.txt"):
        assert str(empty / rel) in err
    assert not empty.exists()  # validating never creates the root

    root = tmp_path / "nus"
    write_nuswide_layout(root)
    assert prep.prepare_main(["nuswide", "--root", str(root)]) == 0
    assert "ready" in capsys.readouterr().out

    (root / "TrainTestLabels/Labels_sky_Train.txt").unlink()
    (root / "Flickr/sky/0002_2.jpg").unlink()
    assert prep.prepare_main(["nuswide", "--root", str(root), "--validate-only"]) == 2
    err = capsys.readouterr().err
    assert str(root / "TrainTestLabels/Labels_sky_Train.txt") in err
    assert "1 of 2 images listed in" in err and "0002_2.jpg" in err
