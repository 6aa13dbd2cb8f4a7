"""Caches under faults (issue 15): never stale, never half-written, every failure a message.

Each test sets up the bad situation for real (a replaced image, a full disk as the kernel
reports it, a dead builder's folder, damaged metadata) and checks the message (naming folder,
file or bytes) and that nothing half-written is left behind (no ``*.tmp``).
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import warnings
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision import transforms as T

from mlr_bench.clip import CLIPBackbone
from mlr_bench.datamodules.voc2007 import CLASS_NAMES as VOC_CLASSES
from mlr_bench.datamodules.voc2007 import VOC2007
from mlr_bench.errors import MLRBenchError
from mlr_bench.features import FeatureStore, text_features
from mlr_bench.features.keys import backbone_key, files_fingerprint, transform_key
from mlr_bench.features.store import FEATURE_CODE_VERSION, ArraySpec, builder_tag
from mlr_bench.methods.zeroshot import ZeroShotCLIP
from mlr_bench.text.corpus import TextCorpus
from mlr_bench.text.corpus_cache import load_corpus
from mlr_bench.transforms import clip_eval_transform, to_rgb

sys.path.insert(0, str(Path(__file__).parent))
from test_real_datamodules import JPEG, tiny_jpeg, write_voc

SPECS = {"x": ArraySpec((5, 3), "float32"), "y": ArraySpec((5,), "int8")}
Usage = namedtuple("Usage", "total used free")


def fill_ok(arrays: dict[str, np.ndarray]) -> None:
    arrays["x"][:] = np.arange(15, dtype=np.float32).reshape(5, 3)
    arrays["y"][:] = np.arange(5)


def leftovers(root: Path) -> list[Path]:
    """Half-written entries: temporary folders/files anywhere under ``root``."""
    return sorted(p for p in root.rglob("*") if p.name.endswith(".tmp"))


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped) on this host."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


# ---- 1. image caches follow the images; stand-ins are recorded and reported every run ---------
@pytest.fixture(scope="module")
def tiny_zeroshot() -> ZeroShotCLIP:
    return ZeroShotCLIP(class_names=list(VOC_CLASSES), backbone="mlr-tiny-rn", pretrained=None)


def voc_cache(root: Path, cache: Path, model: ZeroShotCLIP, **kwargs):
    """A fresh VOC2007 datamodule (a new run) and its test image-feature cache."""
    data = VOC2007(str(root), cache_dir=str(cache), batch_size=4, **kwargs).attach(model)
    data.setup("test")
    return data.image_cache("test")


@pytest.mark.filterwarnings("ignore:.*using a black image instead")  # the dataset's own warning
def test_replaced_image_is_reencoded_and_stand_ins_warn_on_every_run(tmp_path, tiny_zeroshot):
    root, cache_root = write_voc(tmp_path), tmp_path / "cache"
    image = root / "VOCdevkit/VOC2007/JPEGImages/000003.jpg"  # row 1 of the test split
    image.write_bytes(b"not a jpeg")

    with pytest.warns(UserWarning, match=r"1 of 6 images .*black stand-ins.*000003\.jpg"):
        broken = voc_cache(root, cache_root, tiny_zeroshot, on_bad_image="skip")
    assert broken.fresh and broken.info["stand_ins"]["count"] == 1
    assert broken.info["stand_ins"]["files"] == [str(image)]
    with pytest.warns(UserWarning, match=rf"1 of 6 images in the feature cache {broken.path}"):
        again = voc_cache(root, cache_root, tiny_zeroshot, on_bad_image="skip")
    assert not again.fresh and again.path == broken.path, "the second run reuses the cache"

    image.write_bytes(tiny_jpeg((20, 200, 40)))  # restored: a new size and mtime
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no stand-in warning any more
        restored = voc_cache(root, cache_root, tiny_zeroshot, on_bad_image="skip")
    assert restored.fresh and restored.path != broken.path
    assert restored.info["stand_ins"]["count"] == 0
    assert not np.array_equal(restored["global"][1], broken["global"][1])
    np.testing.assert_array_equal(restored["global"][0], broken["global"][0])

    image.write_bytes(tiny_jpeg((250, 250, 0)))  # replaced by another valid image
    os.utime(image, ns=(time.time_ns(), time.time_ns() + 10**9))
    replaced = voc_cache(root, cache_root, tiny_zeroshot, on_bad_image="skip")
    assert replaced.fresh and not np.array_equal(replaced["global"][1], restored["global"][1])
    assert leftovers(cache_root) == []


def test_stand_in_readable_now_rebuilds_even_with_same_size_and_mtime(tmp_path, tiny_zeroshot):
    """A read that failed for a reason that left the file as it was (permission fixed with
    chmod, a storage hiccup) must not keep the black features for ever."""
    root, cache_root = write_voc(tmp_path), tmp_path / "cache"
    image = root / "VOCdevkit/VOC2007/JPEGImages/000005.jpg"
    stamp = image.stat().st_mtime_ns
    image.write_bytes(b"\xff" * len(JPEG))  # same size, unreadable
    os.utime(image, ns=(stamp, stamp))
    with pytest.warns(UserWarning, match="000005.jpg"):
        broken = voc_cache(root, cache_root, tiny_zeroshot, on_bad_image="skip")
    image.write_bytes(JPEG)
    os.utime(image, ns=(stamp, stamp))  # the key cannot see the difference
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fixed = voc_cache(root, cache_root, tiny_zeroshot, on_bad_image="skip")
    assert fixed.path == broken.path and fixed.fresh and fixed.info["stand_ins"]["count"] == 0


def test_image_keys_cover_files_of_every_datamodule(tmp_path):
    root = write_voc(tmp_path)
    before = VOC2007(str(root)).identity("test")
    (root / "VOCdevkit/VOC2007/JPEGImages/000001.jpg").write_bytes(tiny_jpeg((1, 2, 3)))
    assert VOC2007(str(root)).identity("test")["images"] != before["images"]
    # the generated-image folder: a hand-replaced file changes its fingerprint; moving the
    # whole folder (relative names, same sizes and mtimes) does not
    folder = tmp_path / "gen"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"1")
    first = files_fingerprint([folder / "a.png"], folder)
    moved = tmp_path / "moved"
    shutil.copytree(folder, moved, copy_function=shutil.copy2)
    assert files_fingerprint([moved / "a.png"], moved) == first
    (folder / "a.png").write_bytes(b"22")
    assert files_fingerprint([folder / "a.png"], folder) != first


# ---- 2. full disk: refused before building, or a clear error while writing; no debris ---------
def test_full_disk_is_refused_before_building(tmp_path, monkeypatch):
    store, called = FeatureStore(tmp_path / "cache"), []
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(MLRBenchError) as err:
        store.get_or_build({"kind": "t"}, lambda: SPECS, lambda arrays: called.append(1))
    message = str(err.value)
    assert f"in {store.root}" in message and "only 1,000 bytes" in message
    assert "needs 73,793 bytes" in message  # 60 + 5 array bytes, 2 × 4 KiB headers, 64 KiB meta
    assert "MLR_BENCH_CACHE" in message and called == []
    assert leftovers(store.root) == []


@pytest.mark.parametrize(
    ("where", "code", "words"),
    [("preallocate", errno.ENOSPC, "no space left"), ("fill", errno.EDQUOT, "quota exceeded")],
)
def test_write_failure_names_folder_and_bytes_and_leaves_nothing(
    tmp_path, monkeypatch, where, code, words
):
    store = FeatureStore(tmp_path / "cache")

    def full(*args: object) -> None:
        raise OSError(code, os.strerror(code))

    if where == "preallocate":
        monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(MLRBenchError) as err:
        store.get_or_build({"kind": "t"}, lambda: SPECS, full if where == "fill" else fill_ok)
    message = str(err.value)
    assert words in message and f"in {store.root}" in message
    assert "73,793 bytes" in message and "the partial cache was removed" in message
    final = store.path_for({"kind": "t", "code_version": FEATURE_CODE_VERSION})
    assert f"{store.root}/.{final.name}.{builder_tag()}." in message, "names the temp folder"
    assert leftovers(store.root) == []
    monkeypatch.undo()
    assert store.get_or_build({"kind": "t"}, lambda: SPECS, fill_ok)["x"][4, 2] == 14


def test_arrays_are_preallocated_so_a_full_disk_cannot_sigbus(tmp_path):
    """A sparse memory-mapped file gets its blocks only when written: on a full disk that
    write is a SIGBUS (exit 135, no message). Preallocated files have every block already."""
    seen = {}

    def fill(arrays: dict[str, np.ndarray]) -> None:
        for name, array in arrays.items():
            st = os.stat(array.filename)
            seen[name] = (st.st_blocks * 512, st.st_size)
        arrays["big"][:] = 1

    specs = {"big": ArraySpec((256, 1024), "float32")}
    FeatureStore(tmp_path).get_or_build({"kind": "t"}, lambda: specs, fill)
    allocated, size = seen["big"]
    assert allocated >= size == 128 + 256 * 1024 * 4


def test_unwritable_cache_root_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(MLRBenchError, match=rf"cannot write the feature cache under {blocker}"):
        FeatureStore(blocker / "cache").get_or_build({"kind": "t"}, lambda: SPECS, fill_ok)


# ---- 2b. debris of dead builders is removed on the next use ------------------------------------
def test_temporary_folders_of_dead_builders_are_removed(tmp_path):
    store = FeatureStore(tmp_path)
    store.get_or_build({"kind": "other"}, lambda: SPECS, fill_ok)
    name = store.path_for({"kind": "t", "code_version": FEATURE_CODE_VERSION}).name
    other = store.path_for({"kind": "old", "code_version": FEATURE_CODE_VERSION}).name
    held = store.path_for({"kind": "held", "code_version": FEATURE_CODE_VERSION}).name
    host = builder_tag().rpartition("~")[0]

    def debris(tag: str, age_s: float = 0.0, key_name: str = name) -> Path:
        path = tmp_path / f".{key_name}.{tag}.abc123.tmp"
        path.mkdir()
        (path / "x.npy").write_bytes(b"half")
        old = time.time() - age_s
        for p in (path / "x.npy", path):
            os.utime(p, (old, old))
        return path

    dead = debris(f"{host}~{dead_pid()}")
    alive = debris(builder_tag())  # this very process: a build in progress
    remote_new = debris("elsewhere~123")
    remote_old = debris("elsewhere~124", age_s=2 * 24 * 3600)
    old_format = tmp_path / f".{other}.q1w2e3r4.tmp"  # written before builders were named
    old_format.mkdir()
    os.utime(old_format, (time.time() - 2 * 24 * 3600,) * 2)
    locked = debris(f"{host}~{dead_pid()}", key_name=held)  # its key is being built right now

    with store._lock({"kind": "held", "code_version": FEATURE_CODE_VERSION}):
        store.get_or_build({"kind": "t"}, lambda: SPECS, fill_ok)
    assert not dead.exists() and not remote_old.exists() and not old_format.exists()
    assert alive.exists() and remote_new.exists() and locked.exists()
    store.get_or_build({"kind": "t"}, lambda: SPECS, fill_ok)
    assert not locked.exists(), "removed once nobody builds its key"


def _killed_builder(root: str, marker: str) -> None:
    def fill(arrays: dict[str, np.ndarray]) -> None:
        arrays["x"][:] = 1
        Path(marker).write_text("filling")
        time.sleep(600)

    FeatureStore(root).get_or_build({"kind": "t"}, lambda: SPECS, fill)


@pytest.mark.slow
def test_builder_killed_mid_build_leaves_no_lock_and_no_debris(tmp_path):
    """SIGKILL (OOM killer, scancel): the lock dies with the process, the folder is removed."""
    marker = tmp_path / "marker"
    code = (
        "import sys; sys.path.insert(0, sys.argv[3]); "
        "from test_failures_caches import _killed_builder; "
        "_killed_builder(sys.argv[1], sys.argv[2])"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path / "c"), str(marker), str(Path(__file__).parent)]
    )
    try:
        deadline = time.time() + 240
        while not marker.exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert marker.exists(), "the builder never started filling"
        assert len(leftovers(tmp_path / "c")) == 1
    finally:
        proc.kill()
        proc.wait()
    cache = FeatureStore(tmp_path / "c").get_or_build({"kind": "t"}, lambda: SPECS, fill_ok)
    assert cache["x"][4, 2] == 14 and leftovers(tmp_path / "c") == []


def test_complete_cache_already_in_place_wins_over_a_second_build(tmp_path):
    """Two hosts whose locks do not see each other: the second rename must not fail."""
    store = FeatureStore(tmp_path)
    first = store.get_or_build({"kind": "t"}, lambda: SPECS, fill_ok)
    key = {"kind": "t", "code_version": FEATURE_CODE_VERSION}
    second = store._build(key, SPECS, fill_ok)
    assert second.path == first.path and leftovers(tmp_path) == []


# ---- 4. damaged metadata is corruption (rebuilt), never a crash --------------------------------
@pytest.mark.parametrize(
    "damage",
    [
        "",
        '{"key": {"kind": "t"}, "arr',
        "[]",
        "null",
        '{"arrays": {}}',
        '{"key": {}, "arrays": []}',
    ],
    ids=["empty", "truncated", "list", "null", "no-key", "arrays-list"],
)
def test_damaged_metadata_is_rebuilt(tmp_path, damage, caplog):
    store, calls = FeatureStore(tmp_path), []

    def fill(arrays: dict[str, np.ndarray]) -> None:
        calls.append(1)
        fill_ok(arrays)

    path = store.get_or_build({"kind": "t"}, lambda: SPECS, fill).path
    (path / "meta.json").write_text(damage)
    rebuilt = store.get_or_build({"kind": "t"}, lambda: SPECS, fill)
    assert calls == [1, 1] and rebuilt["x"][4, 2] == 14
    assert f"feature cache {path} is incomplete or corrupt" in caplog.text
    assert json.loads((path / "meta.json").read_text())["key"]["kind"] == "t"


# ---- 3. text caches: keyed by content, shared-cache modes, no debris, clear messages -----------
@pytest.fixture
def umask_002():
    old = os.umask(0o002)
    yield
    os.umask(old)


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


def test_caches_are_readable_by_other_users_of_a_shared_cache(tmp_path, umask_002):
    store = FeatureStore(tmp_path / "cache")
    cache = store.get_or_build({"kind": "t"}, lambda: SPECS, fill_ok)
    assert cache.path.stat().st_mode & 0o777 == 0o775, "mkdtemp's 0700 would lock others out"
    assert (cache.path / "x.npy").stat().st_mode & 0o777 == 0o664
    assert next(store.root.glob(".*.lock")).stat().st_mode & 0o777 == 0o664
    source = write_lines(tmp_path / "s.txt", ["a dog", "a cat"])
    load_corpus("text_lines", source, ["dog", "cat"], {"dog": ["dog"], "cat": ["cat"]},
                cache_root=store.root)  # fmt: skip
    entries = list((store.root / "corpora").rglob("*.*"))
    assert entries and {p.stat().st_mode & 0o777 for p in entries} == {0o664}


def test_corpus_cache_follows_content_and_survives_a_full_disk(tmp_path, monkeypatch):
    names, synonyms, root = ["dog", "cat"], {"dog": ["dog"], "cat": ["cat"]}, tmp_path / "cache"
    source = write_lines(tmp_path / "s.txt", ["a dog", "a cat"])
    first = load_corpus("text_lines", source, names, synonyms, cache_root=root)
    write_lines(source, ["a dog", "a dog"])  # same size: the content hash still tells
    second = load_corpus("text_lines", source, names, synonyms, cache_root=root)
    assert first.corpus.labels.tolist() != second.corpus.labels.tolist()

    write_lines(source, ["a cat", "a cat", "a cat"])
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(10**9, 10**9 - 10, 10))
    with pytest.warns(UserWarning, match=r"corpus cache not saved: not enough free space in .*"):
        third = load_corpus("text_lines", source, names, synonyms, cache_root=root)
    assert third.corpus.texts == ["a cat"] * 3, "the run goes on with the parsed corpus"
    assert leftovers(root) == []
    monkeypatch.undo()
    assert (
        load_corpus("text_lines", source, names, synonyms, cache_root=root).corpus.texts
        == ["a cat"] * 3
    )


def test_corpus_write_failure_leaves_no_temporary_file(tmp_path, monkeypatch):
    names, synonyms, root = ["dog"], {"dog": ["dog"]}, tmp_path / "cache"
    source = write_lines(tmp_path / "s.txt", ["a dog"])
    real_savez = np.savez

    def savez_on_full_disk(file, **arrays):
        real_savez(file, **arrays)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(np, "savez", savez_on_full_disk)
    with pytest.warns(UserWarning, match=rf"not enough free space in {root / 'corpora'} \("):
        load_corpus("text_lines", source, names, synonyms, cache_root=root)
    assert leftovers(root) == [] and not list((root / "corpora").glob("*.npz"))


def test_stale_corpus_temporaries_are_removed(tmp_path):
    names, synonyms, root = ["dog"], {"dog": ["dog"]}, tmp_path / "cache"
    source = write_lines(tmp_path / "s.txt", ["a dog"])
    load_corpus("text_lines", source, names, synonyms, cache_root=root)
    host = builder_tag().rpartition("~")[0]
    dead = root / "corpora" / f".text_lines-x.npz.{host}~{dead_pid()}.k2j3.tmp"
    live = root / "corpora" / f".text_lines-y.npz.{builder_tag()}.k2j3.tmp"
    for p in (dead, live):
        p.write_bytes(b"half")
    load_corpus("text_lines", source, names, synonyms, cache_root=root)
    assert not dead.exists() and live.exists()


def test_text_feature_cache_on_a_full_disk_is_a_clear_error(tmp_path, monkeypatch):
    backbone = CLIPBackbone("world", "bundled")
    corpus = TextCorpus(["a red star", "a blue moon"], np.eye(2, 3, dtype=np.int8))
    store = FeatureStore(tmp_path / "cache")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(10**9, 10**9 - 5, 5))
    with pytest.raises(MLRBenchError, match=r"not enough free space for the feature cache text-"):
        text_features(store, backbone, corpus)
    assert leftovers(store.root) == []


# ---- 5. siblings: keys that missed what changes the features -----------------------------------
def test_transform_key_sees_lambdas_and_is_stable_for_plain_objects():
    def to_grey(image):
        return image.convert("L").convert("RGB")

    rgb, grey = clip_eval_transform(96), clip_eval_transform(96)
    grey.transforms[2] = T.Lambda(to_grey)
    assert transform_key(rgb) != transform_key(grey), "Lambda() hid which function it runs"
    assert "to_rgb" in transform_key(rgb) and to_rgb.__name__ == "to_rgb"

    class Scale:
        def __init__(self, factor: float) -> None:
            self.factor = factor

        def __call__(self, x: torch.Tensor) -> torch.Tensor:
            return x * self.factor

    assert transform_key(Scale(2.0)) == transform_key(Scale(2.0)), "no per-process 0x address"
    assert transform_key(Scale(2.0)) != transform_key(Scale(3.0))
    assert "0x" not in transform_key(T.Compose([Scale(2.0)]))


def test_backbone_key_follows_a_dtype_change():
    backbone = CLIPBackbone("world", "bundled")
    before = backbone_key(backbone)
    backbone.clip.half()
    assert backbone_key(backbone) != before


def test_builder_tag_names_this_host_and_process():
    host, _, pid = builder_tag().rpartition("~")
    assert int(pid) == os.getpid() and host == re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())
