"""Protocol presets: one switch sets every data-side choice, overrides are recorded, results
say which protocol produced them and the leaderboard never mixes two protocols in a column."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_real_datamodules import write_coco, write_voc

from mlr_bench.benchmark.matrix import Cell, CellSettings, cell_args, cell_settings, settings_diff
from mlr_bench.benchmark.report import by_protocol, leaderboard_markdown, to_rows
from mlr_bench.cli import rewrite_argv
from mlr_bench.datamodules.coco2014 import COCO2014
from mlr_bench.datamodules.voc2007 import VOC2007
from mlr_bench.datamodules.world import World
from mlr_bench.protocol import ProtocolError, protocol_label, resolve
from mlr_bench.text.corpus import CAPTIONS, TextRequest

#: The fixture's COCO categories renamed to the two names the reference prompts differently.
RENAMED = {"cat": "motorcycle", "dog": "airplane"}


def write_coco_with_renamed_classes(tmp_path: Path) -> Path:
    root = write_coco(tmp_path)
    for side in ("val2014", "train2014"):
        path = root / "annotations" / f"instances_{side}.json"
        content = json.loads(path.read_text())
        for category in content["categories"]:
            category["name"] = RENAMED.get(category["name"], category["name"])
        path.write_text(json.dumps(content))
    captions = tmp_path / "captions_train2017.json"
    anns = [
        {"id": n, "image_id": image_id, "caption": f"a motorcycle and an airplane, photo {n}"}
        for n, image_id in enumerate([1000, 1001, 5000])  # two test images, one train image
    ]
    captions.write_text(json.dumps({"annotations": anns}))
    return root


def test_presets_set_every_choice_and_explicit_values_are_overrides():
    clean, none = resolve("clean", dict.fromkeys(["legacy_val", "drop_test_captions"]))
    assert clean == {"legacy_val": False, "drop_test_captions": True} and none == {}
    ref, none = resolve("reference", {"legacy_val": None, "drop_test_captions": None})
    assert ref == {"legacy_val": True, "drop_test_captions": False} and none == {}
    # the protocol's own value given explicitly is no override; another value is
    _, same = resolve("clean", {"legacy_val": False})
    _, other = resolve("clean", {"legacy_val": True})
    assert same == {} and other == {"legacy_val": True}
    assert protocol_label("clean", other) == "clean (legacy_val=true)"
    assert protocol_label("reference", {}) == "reference"


def test_reference_protocol_on_coco_applies_all_choices(tmp_path, capsys):
    root = write_coco_with_renamed_classes(tmp_path)
    cache = str(tmp_path / "cache")
    captions = str(tmp_path / "captions_train2017.json")
    clean = COCO2014(str(root), captions_file=captions, cache_dir=cache)
    ref = COCO2014(str(root), captions_file=captions, cache_dir=cache, protocol="reference")
    assert (clean.legacy_val, clean.drop_test_captions, clean.reference_synonyms) == (
        False, True, False,
    )  # fmt: skip
    assert (ref.legacy_val, ref.drop_test_captions, ref.reference_synonyms) == (True, False, True)
    # validation: 2 of the 15 training images vs every 10th of the 23 test images
    assert len(clean.split("val")) == 15 and len(ref.split("val")) == 3
    # test-image captions: 2 of 3 dropped under clean, all kept under reference
    assert len(clean.text_corpus(CAPTIONS)) == 1 and len(ref.text_corpus(CAPTIONS)) == 3
    assert "2 captions of test images dropped, 1 kept" in capsys.readouterr().out
    # prompt names: the reference's; the dataset's names stay for results
    assert ref.class_names == clean.class_names == ["motorcycle", "person", "airplane"]
    assert clean.prompt_class_names == ["motorcycle", "person", "airplane"]
    assert ref.prompt_class_names == ["motor bike", "person", "aeroplane"]
    # template augmentation prompts with the same names the model does
    texts = ref.corpus_for(TextRequest(CAPTIONS, template_copies=2)).texts
    assert "a photo of a motor bike." in texts and "a photo of a motorcycle." not in texts
    assert ref.protocol_record() == {
        "name": "reference",
        "label": "reference",
        "settings": {
            "legacy_val": True,
            "drop_test_captions": False,
            "reference_synonyms": True,
            "reference_class_names": True,
        },
        "overrides": {},
    }


def test_an_explicit_setting_against_the_protocol_is_recorded(tmp_path):
    root = write_voc(tmp_path)
    data = VOC2007(str(root), protocol="reference", legacy_val=False)
    record = data.protocol_record()
    assert data.legacy_val is False and record["overrides"] == {"legacy_val": False}
    assert record["label"] == "reference (legacy_val=false)"
    assert data.split("val") is not None and len(data.split("val")) == 12  # trainval side


def test_datasets_without_reference_code_refuse_the_reference_protocol():
    with pytest.raises(ProtocolError, match="World supports only the clean protocol"):
        World(protocol="reference")
    with pytest.raises(ProtocolError, match="unknown protocol 'legacy'"):
        World(protocol="legacy")
    assert World().protocol_record()["label"] == "clean"


def test_protocol_shorthand_goes_after_data_and_configs():
    argv = rewrite_argv(["--protocol", "reference", "--data", "voc2007", "--config", "x.yaml"])
    assert argv[-1] == "--data.protocol=reference"
    assert argv[0].startswith("--data=")


def test_reference_protocol_through_the_cli_records_it_and_keeps_dataset_names(
    tmp_path, monkeypatch
):
    """Zero-shot on the renamed COCO fixture: the model prompts "motor bike", results and the
    predictions file use "motorcycle", results_test.json records the protocol."""
    from mlr_bench.cli import run_cli

    monkeypatch.chdir(tmp_path)
    root = write_coco_with_renamed_classes(tmp_path)
    args = ["--method", "zeroshot", "--method.backbone", "mlr-tiny-rn"]
    args += ["--method.pretrained", "none", "--data", "coco2014", "--data.root", str(root)]
    args += ["--data.batch_size", "8", "--data.cache_dir", str(tmp_path / "cache")]
    args += ["--trainer.default_root_dir", str(tmp_path / "runs"), "--protocol", "reference"]
    cli = run_cli(["test", *args, "--trainer.enable_progress_bar", "false"])
    assert cli.model.class_names == ["motor bike", "person", "aeroplane"]
    results = json.loads(next((tmp_path / "runs").rglob("results_test.json")).read_text())
    assert results["protocol"]["label"] == "reference"
    assert results["protocol"]["settings"]["reference_class_names"] is True
    assert list(results["per_class_ap"]) == ["motorcycle", "person", "airplane"]


def _record(dataset: str, protocol: str | None, mAP: float, seed: int = 1) -> dict:
    record = {"method": "taidpt", "dataset": dataset, "seed": seed, "status": "ok"}
    record |= {"backbone": "RN50", "weights": "pretrained", "metrics": {"mAP": mAP}}
    return record | ({"protocol": protocol} if protocol is not None else {})


def test_leaderboard_gives_each_protocol_its_own_column():
    records = [
        _record("voc2007", "clean", 80.0),
        _record("voc2007", "reference", 85.0),
        _record("voc2007", None, 81.0, seed=2),  # stored before protocols: it ran clean
    ]
    shown = by_protocol(records)
    columns = ["voc2007", "voc2007 [reference]"]
    assert [r["dataset"] for r in shown] == ["voc2007", "voc2007 [reference]", "voc2007"]
    board = leaderboard_markdown("t", shown, ["taidpt"], columns, [1, 2])
    row = next(line for line in board.splitlines() if line.startswith("| taidpt |"))
    assert "80.50 ± 0.50" in row and "85.00** (n=1)" in row
    assert "*[reference]* ran the reference protocol" in board
    assert "protocol" in to_rows(records)[0]


def test_benchmark_cells_carry_the_protocol_and_a_change_is_a_settings_difference(tmp_path):
    cell = Cell("taidpt", "voc2007", 1)
    clean, ref = CellSettings(recipes=None), CellSettings(recipes=None, protocol="reference")
    assert "--protocol" not in cell_args(cell, tmp_path, clean)
    args = cell_args(cell, tmp_path, ref)
    assert args[args.index("--protocol") + 1] == "reference"
    stored = cell_settings(cell, clean)
    stored.pop("protocol")  # a cell stored before protocols existed
    assert settings_diff(stored, cell_settings(cell, clean)) == []
    assert settings_diff(stored, cell_settings(cell, ref)) == [
        "--protocol: clean (stored) -> reference (now)"
    ]
