"""Synonym labeling of free text."""

from __future__ import annotations

import numpy as np
import pytest

from mlr_bench.text import SynonymLabeler, plural_forms
from mlr_bench.text.labeler import LABELER_VERSION
from mlr_bench.text.lemmatize import lemmatize
from mlr_bench.text.synonyms import (
    COCO2014_CLASSES,
    NUSWIDE_CLASSES,
    VOC2007_CLASSES,
    synonym_table,
)

CLASSES = ["dog", "traffic light", "light", "box", "city", "leaf"]
SYNONYMS = {"dog": ["puppy", "hound"], "box": ["crate", "six-sided shape"]}


def test_plural_forms():
    assert plural_forms("box") >= {"box", "boxes"}
    assert "cities" in plural_forms("city")
    assert "leaves" in plural_forms("leaf")
    assert "days" in plural_forms("day") and "daies" not in plural_forms("day")


def test_labels_from_names_synonyms_and_plurals():
    labeler = SynonymLabeler(CLASSES, SYNONYMS)
    labels = labeler(
        [
            "Two puppies next to a Traffic-Light.",
            "a city of boxes",
            "dogged by hounds",  # "dogged" is not a dog, "hounds" is
            "nothing here",
            "leaves under a light",
            "two six sided shapes",
        ]
    )
    expected = np.zeros((6, 6), dtype=np.int8)
    expected[0, [0, 1]] = 1  # traffic light wins over light
    expected[1, [3, 4]] = 1
    expected[2, 0] = 1
    expected[4, [2, 5]] = 1
    expected[5, 3] = 1  # a hyphenated synonym matches however the text writes it
    np.testing.assert_array_equal(labels, expected)


# --- lemmatised matching on the real tables --------------------------------------------------


@pytest.fixture(scope="module")
def coco() -> SynonymLabeler:
    return SynonymLabeler(*synonym_table("coco2014"))


def names(labeler: SynonymLabeler, text: str) -> set[str]:
    return {labeler.class_names[c] for c in labeler.classes_in(text)}


def test_lemmatize_prefers_nouns():
    assert lemmatize("Two dogs, three mice and the leaves") == [
        "two", "dog", "three", "mouse", "and", "the", "leaf",
    ]  # fmt: skip
    assert lemmatize("training tied dogged") == ["training", "tied", "dogged"]


def test_tables_cover_the_official_class_lists():
    assert len(VOC2007_CLASSES) == 20 and len(COCO2014_CLASSES) == 80
    assert len(NUSWIDE_CLASSES) == 81
    assert COCO2014_CLASSES[0] == "person" and COCO2014_CLASSES[-1] == "toothbrush"
    assert NUSWIDE_CLASSES[0] == "airport" and NUSWIDE_CLASSES[-1] == "zebra"
    for dataset in ("voc2007", "coco2014", "nuswide"):
        classes, synonyms = synonym_table(dataset)
        assert list(synonyms) == classes


def test_chair_bench_is_a_reference_quirk_off_by_default():
    voc = SynonymLabeler(*synonym_table("voc2007"))
    assert names(voc, "a wooden bench") == set()
    quirky = SynonymLabeler(*synonym_table("voc2007", reference_quirks=True))
    assert names(quirky, "a wooden bench") == {"chair"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("A man and a woman.", {"person"}),
        ("two dogs", {"dog"}),
        ("a hot dog on a plate", {"hot dog"}),
        ("a dog eating a hot-dog", {"dog", "hot dog"}),
        ("A MOTOR BIKE parked; a motorbike!", {"motorcycle"}),
        ("a teddybear and a teddy bear", {"teddy bear"}),
        ("a traffic light", {"traffic light"}),
        ("people riding bicycles past cars", {"person", "bicycle", "car"}),
        ("Children with their mice and keyboards", {"person", "mouse", "keyboard"}),
        ("the tvs were on", {"tv"}),
        ("a baseball bat and a ball", {"baseball bat", "sports ball"}),
        ("a train station during training", {"train"}),
        ("nothing to see", set()),
    ],
)
def test_coco_labels(coco: SynonymLabeler, text: str, expected: set[str]):
    assert names(coco, text) == expected


def test_voc_raw_names_and_spaced_forms():
    voc = SynonymLabeler(*synonym_table("voc2007"))
    assert names(voc, "a dining table near a potted plant and a tv monitor") == {
        "diningtable", "pottedplant", "tvmonitor",
    }  # fmt: skip
    assert names(voc, "an aeroplane and an airplane") == {"aeroplane"}


def test_label_texts_drops_and_counts_texts_naming_no_class(coco: SynonymLabeler):
    result = coco.label_texts(["a cat", "an empty room", "a cat on a couch", "sky"])
    assert result.texts == ["a cat", "a cat on a couch"]
    assert result.dropped == 2
    assert result.labels.dtype == np.int8 and result.labels.shape == (2, 80)
    assert result.labels[1, COCO2014_CLASSES.index("couch")] == 1


def test_phrase_listed_under_two_classes_fires_both():
    labeler = SynonymLabeler(
        ["person", "police"], {"police": ["policeman"], "person": ["policeman"]}
    )
    assert labeler.classes_in("a policeman") == {0, 1}


def test_labeler_version_is_a_string():
    assert isinstance(LABELER_VERSION, str) and LABELER_VERSION
