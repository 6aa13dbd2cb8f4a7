"""Real datamodules build text corpora from the official files and methods train on them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_real_datamodules import write_voc

from mlr_bench.cli import run_cli
from mlr_bench.datamodules.folder import DatasetFormatError
from mlr_bench.datamodules.voc2007 import VOC2007

CAPTIONS = [
    "A man riding a horse next to a dog.",
    "Two cats sleeping on a sofa.",
    "A red bus parked near a car on the street.",
    "An airplane flying over the sea.",
    "A tree in a field.",  # no VOC class: dropped and counted
    "People sitting at a dining table with bottles.",
]


def write_captions(path: Path) -> Path:
    annotations = [{"image_id": i, "id": 10 + i, "caption": c} for i, c in enumerate(CAPTIONS)]
    path.write_text(json.dumps({"annotations": annotations}))
    return path


def write_sentences(path: Path) -> Path:
    rows = [
        {"labels": ["dog", "person"], "description": "A woman walks her dog."},
        {"labels": ["tvmonitor"], "description": "A television in a living room."},
        {"labels": ["boat", "bird"], "description": "Gulls above a small boat."},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_voc_caption_and_sentence_corpora(tmp_path):
    root = write_voc(tmp_path)
    voc = VOC2007(
        str(root),
        captions_file=str(write_captions(tmp_path / "captions.json")),
        sentences_file=str(write_sentences(tmp_path / "sentences.jsonl")),
        cache_dir=str(tmp_path / "cache"),
    )
    captions = voc.text_corpus("captions")
    names = voc.class_names
    assert len(captions) == 5  # the caption without a VOC class is dropped
    first = {names[c] for c in captions.labels[0].nonzero()[0]}
    assert first == {"person", "horse", "dog"}
    sentences = voc.text_corpus("sentences")
    assert {names[c] for c in sentences.labels[1].nonzero()[0]} == {"tvmonitor"}  # requested
    assert "dining table" in voc.synonyms["diningtable"]


def test_missing_text_file_is_a_clear_error(tmp_path):
    root = str(write_voc(tmp_path))
    with pytest.raises(DatasetFormatError, match=r"--data\.captions_file"):
        VOC2007(root).text_corpus("captions")
    voc = VOC2007(root, sentences_file=str(tmp_path / "nope.jsonl"))
    with pytest.raises(DatasetFormatError, match=r"nope\.jsonl: missing"):
        voc.text_corpus("sentences")


@pytest.mark.parametrize("method", ["taidpt", "comc"])
def test_methods_train_on_voc_text_through_the_cli(method, tmp_path):
    root = write_voc(tmp_path)
    run_cli(
        [
            "train",
            "--method", method,
            "--data", "voc2007",
            "--data.root", str(root),
            "--data.captions_file", str(write_captions(tmp_path / "captions.json")),
            "--data.sentences_file", str(write_sentences(tmp_path / "sentences.jsonl")),
            "--data.num_val", "4",
            "--data.batch_size", "64",
            "--method.template_copies", "2",
            "--trainer.max_epochs", "1",
            "--trainer.default_root_dir", str(tmp_path / "runs"),
            "--trainer.enable_progress_bar", "false",
        ]
    )  # fmt: skip
    results = json.loads(next((tmp_path / "runs").rglob("results_test.json")).read_text())
    assert results["num_samples"] == 6 and 0 <= results["metrics"]["mAP"] <= 100
