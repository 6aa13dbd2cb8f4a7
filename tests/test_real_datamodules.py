"""The official VOC2007 / COCO 2014 / NUS-WIDE loaders on tiny fixtures in the exact formats.

Each ``write_*`` helper builds a few-image copy of the official layout in ``tmp_path``; the
real VOC 2007 image-set lists (no images) are used when ``../shared/realdata`` is present.
"""

from __future__ import annotations

import io
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from mlr_bench.datamodules._official import DatasetFormatError
from mlr_bench.datamodules.coco2014 import COCO2014
from mlr_bench.datamodules.nuswide import NUSWIDE
from mlr_bench.datamodules.voc2007 import CLASS_NAMES as VOC_CLASSES
from mlr_bench.datamodules.voc2007 import VOC2007

REAL_VOC = Path(__file__).parents[1] / ".." / "shared" / "realdata" / "voc2007"


def tiny_jpeg(colour: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    """An 8×8 solid-colour JPEG (written once, copied as bytes: thousands of files stay fast)."""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buffer, format="JPEG")
    return buffer.getvalue()


JPEG = tiny_jpeg()


def to_tensor(image: Image.Image) -> torch.Tensor:
    """A stand-in transform: the RGB pixels as a float tensor (fixed size for collation)."""
    return torch.from_numpy(np.asarray(image.resize((8, 8)), dtype=np.float32)).permute(2, 0, 1)


# ---- fixture writers ----------------------------------------------------------------------
def voc_labels(n: int, offset: int = 0) -> np.ndarray:
    """A deterministic {1, 0, -1} matrix [n, 20] covering all three values per class."""
    rows = np.arange(n)[:, None] + offset
    return np.array([1, 0, -1, -1], dtype=np.int8)[(rows + np.arange(20)[None]) % 4]


def write_image_set(main: Path, name: str, ids: list[str], labels: np.ndarray) -> None:
    """``{name}.txt`` and the 20 ``{cls}_{name}.txt`` as the devkit writes them (CRLF, %2d)."""
    (main / f"{name}.txt").write_bytes("".join(f"{i}\r\n" for i in ids).encode())
    for c, cls in enumerate(VOC_CLASSES):
        lines = "".join(f"{i} {int(v):2d}\r\n" for i, v in zip(ids, labels[:, c], strict=True))
        (main / f"{cls}_{name}.txt").write_bytes(lines.encode())


def write_voc(tmp_path: Path, n_test: int = 6, n_trainval: int = 12, images: bool = True) -> Path:
    """``tmp_path/voc/VOCdevkit/VOC2007`` with test (and trainval unless 0) lists and images."""
    root = tmp_path / "voc"
    voc = root / "VOCdevkit" / "VOC2007"
    main = voc / "ImageSets" / "Main"
    main.mkdir(parents=True)
    test_ids = [f"{2 * k + 1:06d}" for k in range(n_test)]
    write_image_set(main, "test", test_ids, voc_labels(n_test))
    train_ids = [f"{2 * k + 2:06d}" for k in range(n_trainval)]
    if n_trainval:
        write_image_set(main, "trainval", train_ids, voc_labels(n_trainval, offset=1))
    if images:
        write_jpegs(voc / "JPEGImages", test_ids + train_ids)
    return root


def write_jpegs(folder: Path, ids: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for image_id in ids:
        (folder / f"{image_id}.jpg").write_bytes(JPEG)


COCO_CATEGORIES = [{"id": 3, "name": "cat"}, {"id": 1, "name": "person"}, {"id": 7, "name": "dog"}]


def coco_instances(n: int, first_id: int) -> dict:
    """``n`` images; image k has category ``k % 3`` and person when k is even; image 1 has none."""
    images = [{"id": first_id + k, "file_name": f"img_{first_id + k:012d}.jpg"} for k in range(n)]
    anns = []
    for k in range(n):
        if k == 1:
            continue
        anns.append({"id": len(anns), "image_id": first_id + k, "category_id": [3, 1, 7][k % 3]})
        if k % 2 == 0:
            anns.append({"id": len(anns), "image_id": first_id + k, "category_id": 1})
    return {"images": images, "annotations": anns, "categories": COCO_CATEGORIES}


def coco_expected(n: int) -> torch.Tensor:
    target = torch.full((n, 3), -1, dtype=torch.int8)
    for k in range(n):
        if k != 1:
            target[k, k % 3] = 1
            if k % 2 == 0:
                target[k, 1] = 1
    return target


def write_coco(tmp_path: Path, n_test: int = 23, n_train: int = 15, train: bool = True) -> Path:
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    sides = [("val2014", n_test, 1000)] + ([("train2014", n_train, 5000)] if train else [])
    for name, n, first_id in sides:
        content = coco_instances(n, first_id)
        (root / "annotations" / f"instances_{name}.json").write_text(json.dumps(content))
        write_jpegs(root / name, [Path(i["file_name"]).stem for i in content["images"]])
    return root


NUS_CONCEPTS = ["animal", "sky", "water"]


def nus_labels(n: int, offset: int = 0) -> np.ndarray:
    """A deterministic 0/1 matrix [n, 3] as in the label files."""
    return ((np.arange(n)[:, None] + offset + np.arange(3)[None]) % 2).astype(np.int8)


def write_nus_side(root: Path, side: str, n: int, offset: int) -> list[str]:
    """Image list (Windows paths, CRLF), label files and images of one side."""
    rel = [f"{NUS_CONCEPTS[k % 3]}\\{offset + k:04d}_{1000 + offset + k}.jpg" for k in range(n)]
    (root / "ImageList" / f"{side}Imagelist.txt").write_bytes(
        "".join(f"{r}\r\n" for r in rel).encode()
    )
    labels = nus_labels(n, offset)
    for c, concept in enumerate(NUS_CONCEPTS):
        text = "".join(f"{v}\r\n" for v in labels[:, c])
        (root / "TrainTestLabels" / f"Labels_{concept}_{side}.txt").write_text(text)
    for r in rel:
        path = root / "Flickr" / r.replace("\\", "/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(JPEG)
    return rel


def write_nus(tmp_path: Path, n_test: int = 41, n_train: int = 30, train: bool = True) -> Path:
    root = tmp_path / "nus"
    (root / "ImageList").mkdir(parents=True)
    (root / "TrainTestLabels").mkdir()
    (root / "Concepts81.txt").write_text("\n".join(NUS_CONCEPTS) + "\n")
    write_nus_side(root, "Test", n_test, 0)
    if train:
        write_nus_side(root, "Train", n_train, 500)
    return root


# ---- VOC 2007 -----------------------------------------------------------------------------
@pytest.mark.parametrize("level", ["parent", "VOCdevkit", "VOC2007"])
def test_voc_targets_class_order_and_root_forms(tmp_path, level):
    root = write_voc(tmp_path)
    given = {"parent": root, "VOCdevkit": root / "VOCdevkit"}.get(level, root / "VOCdevkit/VOC2007")
    data = VOC2007(str(given))
    assert data.class_names == VOC_CLASSES and data.class_names[10] == "diningtable"
    test = data.split("test")
    assert torch.equal(test.targets, torch.from_numpy(voc_labels(6)))
    assert [p.name for p in test.paths] == [f"{2 * k + 1:06d}.jpg" for k in range(6)]
    assert "dining table" in data.synonyms["diningtable"] and data.synonyms["cat"][0] == "cat"
    assert "kitten" in data.synonyms["cat"]  # the project synonym table, class name first


def test_voc_eval_samples_follow_the_contract(tmp_path):
    data = VOC2007(str(write_voc(tmp_path)))
    dataset = data.eval_dataset("test", to_tensor)
    sample = dataset[4]
    assert sample["index"] == 4 and sample["target"].dtype == torch.int8
    assert sample["target"].shape == (20,) and set(sample["target"].tolist()) <= {1, 0, -1}
    assert torch.allclose(sample["image"][:, 0, 0], torch.tensor([200.0, 30, 30]), atol=12)
    batch = next(iter(DataLoader(dataset, batch_size=6)))
    assert batch["image"].shape == (6, 3, 8, 8) and batch["index"].tolist() == list(range(6))
    assert torch.equal(batch["target"], torch.from_numpy(voc_labels(6)))


def test_voc_val_is_a_seeded_trainval_subset_and_legacy_val_is_test(tmp_path):
    root = str(write_voc(tmp_path))
    val = VOC2007(root, num_val=5).split("val")
    again = VOC2007(root, num_val=5).split("val")
    other = VOC2007(root, num_val=5, seed=1).split("val")
    assert len(val) == 5 and val.paths == again.paths and val.paths != other.paths
    test = VOC2007(root).split("test")
    assert not set(val.paths) & set(test.paths)
    train = VOC2007(root).split("val")  # num_val 500 > 12: all of trainval
    assert len(train) == 12 and torch.equal(train.targets, torch.from_numpy(voc_labels(12, 1)))
    legacy = VOC2007(root, legacy_val=True).split("val")
    assert legacy.paths == test.paths and torch.equal(legacy.targets, test.targets)


def test_missing_training_side_disables_val_with_one_warning(tmp_path):
    data = VOC2007(str(write_voc(tmp_path, n_trainval=0)))
    with pytest.warns(UserWarning, match="trainval.txt is missing.*legacy_val=True") as caught:
        assert not data.has_split("val")
        assert data.eval_dataset("val", to_tensor) is None
    assert len([w for w in caught if "validation" in str(w.message)]) == 1
    assert data.has_split("test") and VOC2007(data.root, legacy_val=True).has_split("val")


def voc_break(main: Path, case: str) -> tuple[Path, int]:
    """Damage one file of a 6-image VOC fixture; returns the file and line to be reported."""
    cat = main / "cat_test.txt"
    lines = cat.read_text().splitlines()
    if case == "label-2":
        lines[2] = lines[2].split()[0] + " 2"
    elif case == "no-label":
        lines[2] = lines[2].split()[0]
    elif case == "unknown-id":
        lines[2] = "999999 -1"
    elif case == "duplicate-id":
        lines[2] = lines[1]
    elif case == "short":
        lines = lines[:5]
        cat.write_text("\n".join(lines) + "\n")
        return cat, 5
    elif case == "test-two-fields":
        test = main / "test.txt"
        test.write_text("000001\n000003 x\n")
        return test, 2
    elif case == "missing-class-file":
        cat.unlink()
        return cat, -1
    cat.write_text("\n".join(lines) + "\n")
    return cat, 3


@pytest.mark.parametrize(
    "case",
    [
        "label-2",
        "no-label",
        "unknown-id",
        "duplicate-id",
        "short",
        "test-two-fields",
        "missing-class-file",
    ],
)
def test_voc_malformed_lists_name_file_and_line(tmp_path, case):
    root = write_voc(tmp_path, images=False)
    path, line = voc_break(root / "VOCdevkit/VOC2007/ImageSets/Main", case)
    with pytest.raises(DatasetFormatError) as err:
        VOC2007(str(root)).eval_dataset("test", to_tensor)
    where = f"{path}:{line}" if line > 0 else f"{path}: missing"
    assert where in str(err.value) and "expected" in str(err.value)


def test_voc_root_without_devkit_is_a_clear_error(tmp_path):
    data = VOC2007(str(tmp_path))  # constructing reads nothing
    with pytest.raises(DatasetFormatError, match="VOCdevkit/VOC2007/ImageSets/Main"):
        data.eval_dataset("test", to_tensor)


def test_unreadable_images_error_or_black_with_warning(tmp_path):
    root = write_voc(tmp_path)
    bad = root / "VOCdevkit/VOC2007/JPEGImages/000003.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(DatasetFormatError, match=str(bad)):
        VOC2007(str(root)).eval_dataset("test", to_tensor)[1]
    dataset = VOC2007(str(root), on_bad_image="skip").eval_dataset("test", to_tensor)
    with pytest.warns(UserWarning, match="000003.jpg.*black image.*1 unreadable"):
        sample = dataset[1]
    assert sample["image"].abs().sum() == 0 and dataset.num_bad == 1
    assert dataset[0]["image"].abs().sum() > 0 and dataset.num_bad == 1


def test_identity_hashes_list_files_and_names_settings(tmp_path):
    root = write_voc(tmp_path, images=False)
    ident = VOC2007(str(root)).identity("test")
    assert ident["root"] == str(root.resolve()) and ident["split"] == "test"
    assert ident["num_images"] == 6 and ident == VOC2007(str(root), batch_size=3).identity("test")
    assert VOC2007(str(root), seed=1).identity("val") != VOC2007(str(root)).identity("val")
    label_file = root / "VOCdevkit/VOC2007/ImageSets/Main/dog_test.txt"
    label_file.write_text(label_file.read_text().replace(" 0", "-1"))
    assert VOC2007(str(root)).identity("test")["files"] != ident["files"]


def test_real_voc2007_lists(tmp_path):
    main = REAL_VOC / "ImageSets" / "Main"
    if not main.is_dir():
        pytest.skip(f"../shared/realdata/voc2007 not found: {REAL_VOC.resolve()} is absent")
    voc = tmp_path / "VOCdevkit" / "VOC2007"
    shutil.copytree(main, voc / "ImageSets" / "Main")
    ids = (main / "test.txt").read_text().split()
    write_jpegs(voc / "JPEGImages", ids)
    data = VOC2007(str(tmp_path))
    dataset = data.eval_dataset("test", to_tensor)
    assert len(dataset) == 4952 == len(ids)
    targets = dataset.split.targets
    for c, cls in enumerate(VOC_CLASSES):
        lines = (main / f"{cls}_test.txt").read_text().splitlines()
        assert int((targets[:, c] == 1).sum()) == sum(line.endswith(" 1") for line in lines)
        assert int((targets[:, c] == 0).sum()) == sum(line.endswith(" 0") for line in lines)
    assert dataset[4951]["index"] == 4951
    assert len(data.split("val")) == 500  # drawn from the real trainval lists


# ---- COCO 2014 ----------------------------------------------------------------------------
def test_coco_targets_class_order_and_unannotated_images(tmp_path):
    data = COCO2014(str(write_coco(tmp_path)))
    assert data.class_names == ["cat", "person", "dog"]  # json order, not id order
    test = data.split("test")
    assert len(test) == 23 and torch.equal(test.targets, coco_expected(23))
    assert test.targets[1].tolist() == [-1, -1, -1]  # no annotations: all negative
    assert test.paths[0] == data.root / "val2014" / "img_000000001000.jpg"
    sample = data.eval_dataset("test", to_tensor)[2]
    assert sample["index"] == 2 and sample["target"].tolist() == [-1, 1, 1]


def test_coco_val_from_train2014_or_legacy_every_tenth_test_image(tmp_path):
    root = str(write_coco(tmp_path))
    val = COCO2014(root, num_val=6).split("val")
    assert len(val) == 6 and val.paths == COCO2014(root, num_val=6).split("val").paths
    assert all(p.parent.name == "train2014" for p in val.paths)
    legacy = COCO2014(root, legacy_val=True).split("val")
    test = COCO2014(root).split("test")
    assert legacy.paths == test.paths[0::10] and len(legacy) == 3
    assert torch.equal(legacy.targets, coco_expected(23)[0::10])


def test_coco_geometry_is_dropped_while_parsing_and_targets_are_unchanged(tmp_path):
    """Segmentation polygons are most of an instances file (and of its parsed size in memory);
    they are dropped as each annotation is parsed, which changes no target."""
    from mlr_bench.datamodules._official import Digest
    from mlr_bench.datamodules.coco2014 import load_json

    root = write_coco(tmp_path, train=False)
    path = root / "annotations" / "instances_val2014.json"
    content = coco_instances(23, 1000)
    for ann in content["annotations"]:
        ann.update(segmentation=[[1.5] * 200], bbox=[0.0, 1.0, 2.0, 3.0], area=4.5, iscrowd=0)
    path.write_text(json.dumps(content))
    parsed = load_json(path, Digest())
    kept = {"id", "image_id", "category_id", "iscrowd"}
    assert all(set(a) == kept for a in parsed["annotations"])
    assert torch.equal(COCO2014(str(root)).split("test").targets, coco_expected(23))


@pytest.mark.parametrize("drop", [True, False])
def test_coco_captions_of_test_images_are_dropped_and_counted(tmp_path, capsys, drop):
    """captions_train2017 describes most val2014 (test) images under the same ids: they are
    removed from the training text by default and counted; --data.drop_test_captions false
    keeps them (the reference code's behaviour)."""
    root = write_coco(tmp_path)  # test ids 1000..1022
    test_ids, other_ids = [1000, 1001, 1002, 1003, 1004], [5000, 5001, 5002]
    anns = [
        {"id": n, "image_id": image_id, "caption": f"a cat number {n} sits by a dog"}
        for n, image_id in enumerate([*test_ids, *other_ids, 1000])  # 1000 has two captions
    ]
    captions = tmp_path / "captions_train2017.json"
    captions.write_text(json.dumps({"annotations": anns}))
    data = COCO2014(
        str(root), captions_file=str(captions), drop_test_captions=drop,
        cache_dir=str(tmp_path / "cache"),
    )  # fmt: skip
    corpus = data.text_corpus("captions")  # one caption per image, as TaI-DPT
    out = capsys.readouterr().out
    if drop:
        assert len(corpus) == 3 and all(
            "number 5" in t or "number 6" in t or "number 7" in t for t in corpus.texts
        )
        assert "5 captions of test images dropped, 3 kept" in out
    else:
        assert len(corpus) == 8 and "dropped" not in out


def test_coco_without_train_side_has_no_val(tmp_path):
    data = COCO2014(str(write_coco(tmp_path, train=False)))
    with pytest.warns(UserWarning, match="instances_train2014.json is missing"):
        assert not data.has_split("val")


@pytest.mark.parametrize("case", ["unknown-category", "unknown-image", "bad-json", "no-images"])
def test_coco_malformed_annotations_name_file_and_location(tmp_path, case):
    root = write_coco(tmp_path, train=False)
    path = root / "annotations" / "instances_val2014.json"
    content = coco_instances(23, 1000)
    where = {"unknown-category": "annotations[3]", "unknown-image": "annotations[3]"}
    if case == "unknown-category":
        content["annotations"][3]["category_id"] = 99
    elif case == "unknown-image":
        content["annotations"][3]["image_id"] = 99
    elif case == "no-images":
        del content["images"]
        where[case] = "'images'"
    text = json.dumps(content, indent=1)
    if case == "bad-json":
        text = text.replace('"images": [', '"images": [,', 1)
        where[case] = f"{path}:{text[: text.index('[,')].count(chr(10)) + 1}:"
    path.write_text(text)
    with pytest.raises(DatasetFormatError) as err:
        COCO2014(str(root)).eval_dataset("test", to_tensor)
    assert str(path) in str(err.value) and where[case] in str(err.value)


# ---- NUS-WIDE -----------------------------------------------------------------------------
def test_nus_windows_paths_targets_and_legacy_val(tmp_path):
    data = NUSWIDE(str(write_nus(tmp_path)))
    assert data.class_names == NUS_CONCEPTS
    test = data.split("test")
    assert test.paths[4] == data.root / "Flickr" / "sky" / "0004_1004.jpg"
    expected = torch.from_numpy(np.where(nus_labels(41) == 1, 1, -1).astype(np.int8))
    assert torch.equal(test.targets, expected) and data.missing_counts == {"test": 0}
    legacy = NUSWIDE(str(data.root), legacy_val=True).split("val")
    assert legacy.paths == test.paths[0::20] and len(legacy) == 3
    val = NUSWIDE(str(data.root), num_val=7).split("val")
    assert len(val) == 7 and not set(val.paths) & set(test.paths)
    assert all(p.name.startswith("05") for p in val.paths)  # from TrainImagelist.txt
    assert data.eval_dataset("test", to_tensor)[40]["index"] == 40


def test_nus_missing_images_error_or_skip_with_count(tmp_path, caplog):
    root = write_nus(tmp_path)
    gone = [root / "Flickr/animal/0000_1000.jpg", root / "Flickr/water/0005_1005.jpg"]
    for path in gone:
        path.unlink()
    with pytest.raises(DatasetFormatError, match=r"2 of 41 test images are missing.*0000_1000"):
        NUSWIDE(str(root)).split("test")
    data = NUSWIDE(str(root), missing="skip")
    with caplog.at_level(logging.WARNING):
        test = data.split("test")
    assert len(test) == 39 and data.missing_counts["test"] == 2
    assert "2 of 41 test images are missing" in caplog.text
    assert gone[0] not in test.paths and data.identity("test")["num_missing"] == 2
    expected = np.where(nus_labels(41) == 1, 1, -1)[[i for i in range(41) if i not in (0, 5)]]
    assert torch.equal(test.targets, torch.from_numpy(expected.astype(np.int8)))


@pytest.mark.parametrize("case", ["short-labels", "label-2", "bad-path", "no-concepts"])
def test_nus_malformed_files_name_file_and_line(tmp_path, case):
    root = write_nus(tmp_path, train=False)
    labels = root / "TrainTestLabels" / "Labels_sky_Test.txt"
    if case == "short-labels":
        labels.write_text("1\n0\n")
        path, line = labels, 2
    elif case == "label-2":
        labels.write_text(labels.read_text().replace("1", "2", 1))
        path, line = labels, 1
    elif case == "bad-path":
        path, line = root / "ImageList" / "TestImagelist.txt", 3
        lines = path.read_text().splitlines()
        lines[2] = "justafile.jpg"
        path.write_text("\n".join(lines) + "\n")
    else:
        path, line = root / "Concepts81.txt", 0
        path.unlink()
    with pytest.raises(DatasetFormatError) as err:
        NUSWIDE(str(root)).eval_dataset("test", to_tensor)
    assert (f"{path}:{line}:" if line else f"{path}: missing") in str(err.value)


# ---- through the real CLI -----------------------------------------------------------------
def test_zero_shot_test_on_voc_fixture_through_the_cli(tmp_path, monkeypatch):
    from mlr_bench.cli import run_cli

    monkeypatch.chdir(tmp_path)
    root = write_voc(tmp_path, n_test=8)
    run_cli(
        [
            "test",
            "--method",
            "zeroshot",
            "--method.backbone",
            "mlr-tiny-rn",
            "--method.pretrained",
            "none",
            "--data",
            "mlr_bench.datamodules.voc2007.VOC2007",
            "--data.root",
            str(root),
            "--data.batch_size",
            "4",
            "--trainer.default_root_dir",
            str(tmp_path / "runs"),
            "--trainer.enable_progress_bar",
            "false",
        ]
    )
    found = sorted((tmp_path / "runs").rglob("results_test.json"))
    assert found, f"no results_test.json under {tmp_path / 'runs'}"
    assert json.loads(found[0].read_text())["num_samples"] == 8
