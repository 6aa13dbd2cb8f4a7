"""Corpus readers (COCO captions, narratives, LLM json, text lines) and the corpus cache."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from mlr_bench.errors import MLRBenchError
from mlr_bench.text import corpus_cache
from mlr_bench.text.corpus import TextCorpus
from mlr_bench.text.corpus_cache import load_corpus
from mlr_bench.text.labeler import SynonymLabeler
from mlr_bench.text.sources import (
    CorpusFormatError,
    cap_per_class,
    read_coco_captions,
    read_llm_descriptions,
    read_localized_narratives,
    read_text_lines,
)
from mlr_bench.text.synonyms import synonym_table

CLASSES = ["dog", "cat", "person", "hot dog"]
SYNONYMS = {"dog": ["puppy"], "cat": ["kitten"], "person": ["man", "woman", "people"]}
PVP_EXAMPLE = (
    Path(__file__).resolve().parents[2]
    / "shared" / "realdata" / "llm_sentences" / "pvp_chatglm_example_5k.txt"
)  # fmt: skip


@pytest.fixture
def labeler() -> SynonymLabeler:
    return SynonymLabeler(CLASSES, SYNONYMS)


def write_coco(path: Path, annotations: list) -> Path:
    path.write_text(json.dumps({"images": [], "annotations": annotations}))
    return path


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


COCO_ANNOTATIONS = [
    {"image_id": 1, "id": 12, "caption": "A kitten on a sofa."},
    {"image_id": 1, "id": 10, "caption": "Two puppies."},
    {"image_id": 2, "id": 11, "caption": "An empty street."},
    {"image_id": 2, "id": 13, "caption": "A man eats a hot dog."},
]


def test_coco_captions(tmp_path: Path, labeler: SynonymLabeler):
    path = write_coco(tmp_path / "captions_train2017.json", COCO_ANNOTATIONS)
    loaded = read_coco_captions(path, labeler)
    # Annotation-id order; the empty street names no class and is counted.
    assert loaded.corpus.texts == ["Two puppies.", "A kitten on a sofa.", "A man eats a hot dog."]
    assert loaded.dropped == 1 and loaded.skipped == 0
    np.testing.assert_array_equal(loaded.corpus.labels, [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 1]])


def test_coco_one_per_image_keeps_the_lowest_annotation_id(tmp_path, labeler):
    path = write_coco(tmp_path / "c.json", COCO_ANNOTATIONS)
    loaded = read_coco_captions(path, labeler, one_per_image=True)
    assert loaded.corpus.texts == ["Two puppies."]  # image 2's first caption names no class
    assert loaded.dropped == 1


def test_coco_malformed(tmp_path, labeler):
    bad = write_coco(tmp_path / "bad.json", [*COCO_ANNOTATIONS, {"image_id": 3, "id": 14}])
    with pytest.raises(CorpusFormatError, match=r"bad\.json, annotation 5: .*caption"):
        read_coco_captions(bad, labeler)
    assert read_coco_captions(bad, labeler, on_error="skip").skipped == 1
    broken = tmp_path / "broken.json"
    broken.write_text('{"annotations": [\n{"id": 1,,}]}')
    with pytest.raises(CorpusFormatError, match=r"broken\.json, line 2: invalid JSON") as e:
        read_coco_captions(broken, labeler)
    assert isinstance(e.value, MLRBenchError)
    assert "expected" in str(e.value)


def test_localized_narratives_truncation_and_errors(tmp_path, labeler):
    lines = [
        json.dumps({"image_id": "a", "caption": "In this image I can see a dog and a cat."}),
        json.dumps({"image_id": "b", "caption": "In this picture there is a man."}),
        "",
        json.dumps({"image_id": "c", "caption": "Here is a wall."}),
    ]
    path = write_lines(tmp_path / "ln.jsonl", lines)
    loaded = read_localized_narratives(path, labeler)
    assert len(loaded.corpus) == 2 and loaded.dropped == 1
    short = read_localized_narratives(path, labeler, max_words=7)
    assert short.corpus.texts == ["In this picture there is a man."]  # the first lost its dog
    assert short.dropped == 2

    bad = write_lines(tmp_path / "bad.jsonl", [*lines, "{not json", json.dumps({"id": 1})])
    with pytest.raises(CorpusFormatError, match=r"bad\.jsonl, line 5: invalid JSON.*caption"):
        read_localized_narratives(bad, labeler)
    skipped = read_localized_narratives(bad, labeler, on_error="skip")
    assert skipped.skipped == 2 and len(skipped.corpus) == 2
    no_caption = write_lines(tmp_path / "nc.jsonl", [lines[0], json.dumps({"x": 1})])
    with pytest.raises(CorpusFormatError, match=r"nc\.jsonl, line 2: no \"caption\""):
        read_localized_narratives(no_caption, labeler)


def test_text_lines(tmp_path, labeler):
    path = write_lines(tmp_path / "s.txt", ["a man with a puppy.", "", "a lonely tree.", "CATS!"])
    loaded = read_text_lines(path, labeler)
    assert loaded.corpus.texts == ["a man with a puppy.", "CATS!"]
    assert loaded.dropped == 1


LLM_RECORDS = [
    {"labels": ["dog", "Person"], "description": "A man walks his dog."},
    {"labels": ["Hot Dogs"], "description": "A tasty snack."},  # labels are not parsed
    {"labels": ["kitten"], "description": "Something small."},  # synonyms name classes
    {"labels": [], "description": "Nothing requested."},
]


@pytest.mark.parametrize("layout", ["list", "jsonl"])
def test_llm_descriptions(tmp_path, layout):
    path = tmp_path / f"data.{layout}"
    if layout == "list":
        path.write_text(json.dumps(LLM_RECORDS, indent=1))
    else:
        write_lines(path, [json.dumps(r) for r in LLM_RECORDS])
    loaded = read_llm_descriptions(path, CLASSES, SYNONYMS)
    assert loaded.corpus.texts == ["A man walks his dog.", "A tasty snack.", "Something small."]
    np.testing.assert_array_equal(loaded.corpus.labels, [[1, 0, 1, 0], [0, 0, 0, 1], [0, 1, 0, 0]])
    assert loaded.dropped == 1


def test_llm_descriptions_errors(tmp_path):
    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps([LLM_RECORDS[0], {"labels": ["zebra"], "description": "z"}]))
    with pytest.raises(CorpusFormatError, match=r"unknown\.json, entry 2: label 'zebra'"):
        read_llm_descriptions(unknown, CLASSES, SYNONYMS)
    bad = write_lines(tmp_path / "bad.jsonl", [json.dumps(LLM_RECORDS[0]), '{"labels": ["dog"]}'])
    with pytest.raises(CorpusFormatError, match=r"bad\.jsonl, line 2: .*description"):
        read_llm_descriptions(bad, CLASSES, SYNONYMS)
    assert read_llm_descriptions(bad, CLASSES, SYNONYMS, on_error="skip").skipped == 1


def test_comc_spellings_map_to_coco_classes(tmp_path):
    classes, synonyms = synonym_table("coco2014")
    path = write_lines(
        tmp_path / "comc.jsonl",
        [
            json.dumps(
                {"labels": ["motor bike", "aeroplane", "tv", "hair drier"], "description": "x"}
            )
        ],
    )
    loaded = read_llm_descriptions(path, classes, synonyms)
    got = {classes[c] for c in np.flatnonzero(loaded.corpus.labels[0])}
    assert got == {"motorcycle", "airplane", "tv", "hair drier"}


def test_cap_assigns_each_text_to_its_rarest_class():
    # person is frequent, cat rare: a "person + cat" text counts against cat's cap.
    labels = np.array(
        [[0, 0, 1, 0], [0, 1, 1, 0], [0, 0, 1, 0], [0, 1, 0, 0], [0, 0, 1, 0], [1, 0, 1, 0]],
        dtype=np.int8,
    )
    corpus = TextCorpus([f"t{i}" for i in range(6)], labels)
    assert cap_per_class(corpus, 1).texts == ["t0", "t1", "t5"]
    assert cap_per_class(corpus, 2).texts == ["t0", "t1", "t2", "t3", "t5"]
    assert cap_per_class(corpus, None) is corpus


def test_cap_option_on_a_reader(tmp_path, labeler):
    path = write_lines(tmp_path / "s.txt", ["a dog", "a dog and a man", "a dog", "a cat"])
    # "a dog and a man" counts against person, the rarer class, so it is kept.
    assert read_text_lines(path, labeler, cap=1).corpus.texts == [
        "a dog",
        "a dog and a man",
        "a cat",
    ]


# --- cache -----------------------------------------------------------------------------------


@pytest.fixture
def count_reads(monkeypatch) -> list[int]:
    """Counts calls of the COCO reader behind the cache."""
    calls = [0]
    real = corpus_cache.read_coco_captions

    def counting(*args, **kwargs):
        calls[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(corpus_cache, "read_coco_captions", counting)
    return calls


def test_cache_reuses_and_rebuilds(tmp_path, monkeypatch, count_reads):
    root, work = tmp_path / "cache", tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("MLR_BENCH_CACHE", str(root))
    path = write_coco(tmp_path / "c.json", COCO_ANNOTATIONS)

    def load(**options):
        return load_corpus("coco_captions", path, CLASSES, SYNONYMS, **options)

    first = load()
    again = load()
    assert count_reads[0] == 1
    assert again.corpus.texts == first.corpus.texts and again.dropped == first.dropped
    np.testing.assert_array_equal(again.corpus.labels, first.corpus.labels)
    assert again.corpus.labels.dtype == np.int8

    load(one_per_image=True)  # another option, another entry
    assert count_reads[0] == 2
    load_corpus("coco_captions", path, CLASSES, {**SYNONYMS, "cat": ["kitty"]})  # another table
    assert count_reads[0] == 3

    write_coco(path, COCO_ANNOTATIONS[:2])  # changed file
    os.utime(path, ns=(1, 1))
    assert len(load().corpus) == 2 and count_reads[0] == 4

    entries = sorted((root / "corpora").glob("*.npz"))
    assert entries and list(work.iterdir()) == []  # nothing in the working directory
    for entry in entries:
        entry.write_bytes(b"not a zip file")
    assert len(load().corpus) == 2 and count_reads[0] == 5  # corrupt entry rebuilt
    load()
    assert count_reads[0] == 5


def test_cache_default_root_is_never_cwd(tmp_path, monkeypatch, count_reads):
    monkeypatch.delenv("MLR_BENCH_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    path = write_coco(tmp_path / "c.json", COCO_ANNOTATIONS)
    load_corpus("coco_captions", path, CLASSES, SYNONYMS)
    assert list((tmp_path / "home" / ".cache" / "mlr-bench" / "corpora").glob("*.npz"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.json", "home"]


def test_load_corpus_rejects_unknown_kinds_and_options(tmp_path):
    with pytest.raises(ValueError, match="unknown corpus kind"):
        load_corpus("tweets", tmp_path / "x", CLASSES, SYNONYMS)
    with pytest.raises(TypeError, match="max_words"):
        load_corpus("text_lines", tmp_path / "x", CLASSES, SYNONYMS, max_words=3)


@pytest.mark.skipif(not PVP_EXAMPLE.exists(), reason=f"PVP example sentences absent: {PVP_EXAMPLE}")
def test_pvp_example_sentences_are_mostly_labelled():
    labeler = SynonymLabeler(*synonym_table("coco2014"))
    loaded = read_text_lines(PVP_EXAMPLE, labeler)
    total = len(loaded.corpus) + loaded.dropped
    assert total >= 4999
    assert len(loaded.corpus) / total > 0.9
    frequent = np.argsort(-loaded.corpus.labels.sum(axis=0))[:3]
    assert "person" in {labeler.class_names[c] for c in frequent}
