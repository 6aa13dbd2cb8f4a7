"""Synonym labeling of free text."""

from __future__ import annotations

import numpy as np

from mlr_bench.text import SynonymLabeler, plural_forms

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
