"""Issue 15, corpora and data readers: wrong inputs end in one message naming the file, the line
(and column or offset) and the counts, with exit code 2 through the CLI, or are handled right.

Each test writes the bad input a user could have, runs the real reader, datamodule or CLI, and
checks the message it prints.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from open_clip.tokenizer import SimpleTokenizer
from test_real_datamodules import write_coco, write_voc

from mlr_bench import testing
from mlr_bench.cli import run_cli
from mlr_bench.datamodules.voc2007 import VOC2007
from mlr_bench.datamodules.world import World
from mlr_bench.errors import MLRBenchError
from mlr_bench.generation import read_manifest
from mlr_bench.generation.manifest import ManifestError
from mlr_bench.text.labeler import SynonymLabeler
from mlr_bench.text.sources import (
    CorpusFormatError,
    EmptyCorpusError,
    read_coco_captions,
    read_llm_descriptions,
    read_localized_narratives,
    read_text_lines,
)
from mlr_bench.text.truncate import ContextTruncator

CLASSES = ["dog", "cat", "person", "horse"]
SYNONYMS = {"dog": ["puppy"], "cat": ["kitten"], "person": ["man", "woman"]}
#: About 500 words naming no class, then a horse: CLIP reads only the first 75 tokens.
LONG = "a small red ball lies on the green grass near the old wall " * 40 + "and a horse"


@pytest.fixture
def labeler() -> SynonymLabeler:
    return SynonymLabeler(CLASSES, SYNONYMS)


def cli_error(capsys: pytest.CaptureFixture[str], args: list[str]) -> str:
    """Run the CLI, expect exit code 2, return what it printed on stderr."""
    with pytest.raises(SystemExit) as exc:
        run_cli(args)
    assert exc.value.code == 2
    return capsys.readouterr().err


def voc_fit(tmp_path: Path, *extra: str) -> list[str]:
    """``mlr-bench fit`` of CoMC on the VOC fixture with the given text arguments."""
    return [
        "fit", "--method", "comc", "--data", "voc2007",
        "--data.root", str(write_voc(tmp_path)), "--data.num_val", "4",
        "--data.cache_dir", str(tmp_path / "cache"), "--trainer.max_epochs", "1",
        "--trainer.default_root_dir", str(tmp_path / "runs"), *testing.QUIET, *extra,
    ]  # fmt: skip


# ---- 1: a corpus in which nothing is labelled ------------------------------------------------
@pytest.mark.parametrize("copies", ["10", "0"])
def test_corpus_naming_no_class_stops_with_counts(tmp_path, capsys, copies):
    sentences = tmp_path / "sentences.txt"
    sentences.write_text("a tree in a field.\nblue sky over the hills.\n\n" * 50)
    err = cli_error(
        capsys,
        voc_fit(
            tmp_path,
            "--data.sentences_file", str(sentences), "--method.template_copies", copies,
        ),
    )  # fmt: skip
    assert f"{sentences}: no text names any of the 20 classes" in err
    assert "100 texts read: 0 kept, 100 naming no class, 0 malformed and skipped" in err
    assert "template sentences alone" in err
    assert "Traceback" not in err
    assert not list((tmp_path / "runs").rglob("*.ckpt"))


def test_empty_sentences_file_says_so(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"\n\n")
    voc = VOC2007(str(write_voc(tmp_path)), sentences_file=str(empty), cache_dir=str(tmp_path))
    with pytest.raises(EmptyCorpusError, match=r"empty\.txt: .*\(0 texts read: .*holds no text"):
        voc.text_corpus("sentences")


def test_nearly_empty_corpus_and_unnamed_classes_warn(tmp_path):
    sentences = tmp_path / "mostly_trees.txt"
    sentences.write_text("a dog on a sofa.\n" + "a tree in a field.\n" * 199)
    voc = VOC2007(str(write_voc(tmp_path)), sentences_file=str(sentences), cache_dir=str(tmp_path))
    with pytest.warns(UserWarning) as record:
        corpus = voc.text_corpus("sentences")
    messages = [str(w.message) for w in record]
    assert len(corpus) == 1
    assert any(f"{sentences}: only 1 of 200 texts name a class (0.50 %;" in m for m in messages), (
        messages
    )
    assert any("18 of 20 classes are named by no kept text (aeroplane" in m for m in messages)


def test_datamodule_without_labelled_text_is_refused(tmp_path):
    class Blank(World):
        def text_corpus(self, source):  # a plugin whose corpus lost every label
            corpus = super().text_corpus(source)
            return type(corpus)(corpus.texts, np.zeros_like(corpus.labels))

    from mlr_bench.text.corpus import TextRequest

    with pytest.raises(MLRBenchError, match=r"Blank: the 'captions' training text has no text"):
        Blank(num_captions=20).corpus_for(TextRequest("captions", 0))


# ---- 2: labels only from the part of the text the encoder reads ------------------------------
def test_long_txt_line_is_not_labelled_from_words_the_encoder_drops(tmp_path, labeler):
    path = tmp_path / "long.txt"
    path.write_text(f"{LONG}\na man and his puppy.\n")
    loaded = read_text_lines(path, labeler)
    assert loaded.corpus.texts == ["a man and his puppy."]
    assert loaded.dropped == 1 and loaded.truncated == 1
    uncut = read_text_lines(path, labeler, context_length=None)
    assert uncut.corpus.labels[0, CLASSES.index("horse")] == 1  # what happened before


def test_every_reader_cuts_before_labelling(tmp_path, labeler):
    coco = tmp_path / "captions.json"
    annotations = [{"image_id": 1, "id": 1, "caption": LONG}, {"image_id": 2, "id": 2,
                   "caption": "A horse."}]  # fmt: skip
    coco.write_text(json.dumps({"annotations": annotations}))
    assert read_coco_captions(coco, labeler).corpus.texts == ["A horse."]

    narratives = tmp_path / "narratives.jsonl"
    narratives.write_text(json.dumps({"caption": LONG}) + "\n")
    loaded = read_localized_narratives(narratives, labeler, context_length=77)
    assert len(loaded.corpus) == 0 and loaded.dropped == 1 and loaded.truncated == 1

    llm = tmp_path / "llm.jsonl"
    rows = [
        {"labels": ["horse"], "description": LONG},  # its only mention is cut off: dropped
        {"labels": ["dog", "horse"], "description": "a dog. " + LONG},  # keeps dog only
        {"labels": ["cat"], "description": "something small " * 60},  # never named: kept
    ]
    llm.write_text("".join(json.dumps(r) + "\n" for r in rows))
    loaded = read_llm_descriptions(llm, CLASSES, SYNONYMS)
    assert loaded.dropped == 1 and loaded.truncated == 3
    np.testing.assert_array_equal(loaded.corpus.labels, [[1, 0, 0, 0], [0, 1, 0, 0]])


@pytest.mark.parametrize("context", [77, 40])
def test_cut_text_encodes_to_the_tokens_clip_keeps(context):
    tok = SimpleTokenizer(context_length=context)
    truncate = ContextTruncator(context)
    texts = [
        LONG, LONG.upper(), "Café &amp; crème brûlée " * 20, "x" * 400,
        "the dog's ball, the cat's toy; " * 12, "a\tdog\r\nand  a cat " * 20, "a dog",
    ]  # fmt: skip
    for text in texts:
        full, kept = tok.encode(text), truncate(text)
        ids = tok.encode(kept)
        if len(full) <= context - 2:
            assert kept == text
        else:
            assert ids == full[: len(ids)] and len(ids) <= context - 2
            assert len(ids) >= context - 2 - 12 or not kept.strip()  # at most one word lost
            # The encoder sees the same start of the text either way.
            assert (
                tok([kept])[0, : len(ids) + 1].tolist() == tok([text])[0, : len(ids) + 1].tolist()
            )


def test_datamodule_cuts_to_its_backbone_context(tmp_path):
    path = tmp_path / "s.txt"
    path.write_text(f"{LONG.replace('horse', 'dog')}\na cat on a sofa.\n")
    method, voc = testing.build_from_cli(
        "comc", ["--data", "voc2007", "--data.root", str(write_voc(tmp_path)),
                 "--data.sentences_file", str(path), "--data.cache_dir", str(tmp_path)],
    )  # fmt: skip
    voc.attach(method)
    assert voc.text_context_length() == method.backbone.tokenizer.context_length == 40
    with pytest.warns(UserWarning, match=r"s\.txt: 1 texts are longer than the text encoder"):
        corpus = voc.text_corpus("sentences")
    assert corpus.texts == ["a cat on a sofa."]


# ---- 3: where a JSON file breaks ----------------------------------------------------------------
def test_truncated_single_line_coco_json_gives_the_offset(tmp_path, capsys, labeler):
    coco = tmp_path / "captions_train2017.json"
    annotations = [{"image_id": i, "id": i, "caption": f"A dog number {i}."} for i in range(300)]
    text = json.dumps({"annotations": annotations})
    coco.write_text(text[:5000])  # an interrupted copy: one line, cut mid-record
    with pytest.raises(CorpusFormatError) as exc:
        read_coco_captions(coco, labeler)
    message = str(exc.value)
    assert f"{coco}, line 1: invalid JSON at column " in message
    assert "(character 5,000 of the file's 5,000)" in message and "truncated" in message
    err = cli_error(capsys, voc_fit(tmp_path, "--method", "taidpt", "--data.captions_file",
                                    str(coco)))  # fmt: skip
    assert "captions_train2017.json, line 1: invalid JSON at column 5001" in err


def test_truncated_coco_instances_json_gives_line_column_and_offset(tmp_path, capsys):
    root = write_coco(tmp_path)
    instances = root / "annotations" / "instances_val2014.json"
    text = instances.read_text()
    assert "\n" not in text  # one line, as COCO ships it
    instances.write_text(text[:1500])
    err = cli_error(
        capsys,
        ["test", "--method", "zeroshot", "--data", "coco2014", "--data.root", str(root),
         "--data.cache_dir", str(tmp_path / "cache"),
         "--trainer.default_root_dir", str(tmp_path / "runs"), *testing.QUIET],
    )  # fmt: skip
    assert f"{instances}:1:1495: invalid JSON at character 1,494 of 1,500" in err
    assert "truncated" in err and "Traceback" not in err


def test_bad_jsonl_line_gives_line_and_column(tmp_path, capsys):
    rows = [json.dumps({"labels": ["dog"], "description": "a dog"})] * 2
    bad = tmp_path / "sentences.jsonl"
    bad.write_text("\n".join([*rows, '{"labels": ["dog"], "description": "a dog"']) + "\n")
    err = cli_error(capsys, voc_fit(tmp_path, "--data.sentences_file", str(bad)))
    assert (
        "sentences.jsonl, line 3: invalid JSON at column 43 (character 42 of the line's 42)" in err
    )

    captions = tmp_path / "captions.jsonl"
    captions.write_text('{"id": 1, "text": "a star", "labels": ["star"]}\n{"id": 2,, }\n')
    err = cli_error(capsys, ["generate", "--generator", "world", "--captions", str(captions),
                             "--out", str(tmp_path / "gen")])  # fmt: skip
    assert "captions.jsonl, line 2: invalid JSON at column 10" in err


# ---- 4: generated world images are consumable -------------------------------------------------
def test_generated_world_folder_is_what_the_world_trains_on(tmp_path, capsys):
    out = tmp_path / "gen"
    run_cli(["generate", "--generator", "world", "--data", "world", "--num-captions", "40",
             "--limit", "6", "--out", str(out), "--size", "32", "--no-progress"])  # fmt: skip
    printed = capsys.readouterr()
    folder = Path(printed.out.strip().splitlines()[-1])
    assert f"train on them with --data.generated_dir {folder} --data world" in printed.err
    assert folder.parent == out and len(read_manifest(folder)) == 6

    method, world = testing.build_from_cli(
        "t2ipal", [*testing.SMALL_WORLD, "--data.generated_dir", str(folder),
                   "--data.cache_dir", str(tmp_path / "cache")],
    )  # fmt: skip
    world.attach(method)
    assert world.generated_folder() == folder
    cache = world.generated_cache()  # frozen features of exactly those images
    assert len(cache) == 6 and np.asarray(cache["target"]).sum(axis=1).min() >= 1

    # The --out root instead of the folder it printed: the message names the folder.
    method, world = testing.build_from_cli(
        "t2ipal", [*testing.SMALL_WORLD, "--data.generated_dir", str(out)]
    )
    with pytest.raises(ManifestError, match=rf"it holds {folder}: pass one of those"):
        world.attach(method).generated_cache()


# ---- 6: siblings ----------------------------------------------------------------------------
def test_non_utf8_line_names_line_and_byte(tmp_path, labeler, capsys):
    path = tmp_path / "latin1.txt"
    path.write_bytes("a dog.\na cat.\nun caf\xe9 et un chien.\n".encode("latin-1"))
    with pytest.raises(CorpusFormatError, match=r"latin1\.txt, line 3, byte 7 \(file offset 20\)"):
        read_text_lines(path, labeler)
    err = cli_error(capsys, voc_fit(tmp_path, "--data.sentences_file", str(path)))
    assert "latin1.txt, line 3, byte 7" in err and "not UTF-8 text (byte 0xe9)" in err

    jsonl = tmp_path / "n.jsonl"
    jsonl.write_bytes(b'{"caption": "a dog"}\n{"caption": "a \xff cat"}\n')
    with pytest.raises(CorpusFormatError, match=r"n\.jsonl, line 2, byte 16"):
        read_localized_narratives(jsonl, labeler)
    assert read_localized_narratives(jsonl, labeler, on_error="skip").skipped == 1


def test_bom_crlf_and_cr_line_ends(tmp_path, labeler):
    txt = tmp_path / "bom.txt"
    txt.write_bytes(b"\xef\xbb\xbfdog on a mat\r\na cat\r\n\r\na man\ra horse\r")
    loaded = read_text_lines(txt, labeler)
    assert loaded.corpus.texts == ["dog on a mat", "a cat", "a man", "a horse"]
    np.testing.assert_array_equal(loaded.corpus.labels.argmax(axis=1), [0, 1, 2, 3])

    coco = tmp_path / "bom.json"
    annotations = [{"image_id": 1, "id": 1, "caption": "A puppy."}]
    coco.write_bytes(b"\xef\xbb\xbf" + json.dumps({"annotations": annotations}).encode())
    assert read_coco_captions(coco, labeler).corpus.texts == ["A puppy."]
    llm = tmp_path / "bom.jsonl"
    llm.write_bytes(b'\xef\xbb\xbf{"labels": ["dog"], "description": "a dog"}\r\n')
    assert read_llm_descriptions(llm, CLASSES, SYNONYMS).corpus.texts == ["a dog"]
    as_list = tmp_path / "bom_list.json"
    as_list.write_bytes(b'\xef\xbb\xbf [{"labels": ["cat"], "description": "a cat"}]')
    assert read_llm_descriptions(as_list, CLASSES, SYNONYMS).corpus.texts == ["a cat"]


def test_empty_and_wrongly_typed_records(tmp_path, labeler):
    empty = tmp_path / "empty.json"
    empty.write_text("  \n")
    with pytest.raises(CorpusFormatError, match=r"empty\.json, the whole file: the file is empty"):
        read_coco_captions(empty, labeler)
    bool_ids = tmp_path / "bool.json"
    bool_ids.write_text(json.dumps({"annotations": [{"image_id": True, "id": 1, "caption": "a"}]}))
    with pytest.raises(CorpusFormatError, match=r"bool\.json, annotation 1: missing or bad"):
        read_coco_captions(bool_ids, labeler)

    llm = tmp_path / "types.jsonl"
    llm.write_text('{"labels": ["dog"], "description": "a dog"}\n[1, 2]\n')
    with pytest.raises(CorpusFormatError, match=r"types\.jsonl, line 2: missing or bad"):
        read_llm_descriptions(llm, CLASSES, SYNONYMS)
    llm.write_text('{"labels": ["dog"], "description": "a dog"}\n{"labels": "dog", '
                   '"description": "x"}\n{"labels": ["cat"], "description": "  "}\n')  # fmt: skip
    with pytest.raises(CorpusFormatError, match=r"types\.jsonl, line 2: missing or bad"):
        read_llm_descriptions(llm, CLASSES, SYNONYMS)
    skipped = read_llm_descriptions(llm, CLASSES, SYNONYMS, on_error="skip")
    assert skipped.skipped == 2 and skipped.corpus.texts == ["a dog"]
    llm.write_text('{"labels": ["cat"], "description": ""}\n')
    with pytest.raises(CorpusFormatError, match=r"types\.jsonl, line 1: empty \"description\""):
        read_llm_descriptions(llm, CLASSES, SYNONYMS)


def test_jsonl_named_txt_is_refused(tmp_path, labeler, capsys):
    path = tmp_path / "sentences.txt"
    path.write_text(json.dumps({"labels": ["dog"], "description": "a dog on a sofa"}) + "\n")
    err = cli_error(capsys, voc_fit(tmp_path, "--data.sentences_file", str(path)))
    assert "sentences.txt, line 1: a JSON object, not a sentence" in err
    upper = tmp_path / "S.TXT"
    upper.write_text("a dog on a sofa.\n")
    voc = VOC2007(
        str(write_voc(tmp_path / "2")), sentences_file=str(upper), cache_dir=str(tmp_path)
    )
    assert voc.text_corpus("sentences").texts == ["a dog on a sofa."]  # read as lines


def test_all_duplicate_lines_warn(tmp_path):
    path = tmp_path / "same.txt"
    path.write_text("a dog on a sofa.\n" * 30 + "a cat.\n")
    voc = VOC2007(str(write_voc(tmp_path)), sentences_file=str(path), cache_dir=str(tmp_path))
    with pytest.warns(UserWarning, match=r"same\.txt: only 2 distinct texts among the 31 kept"):
        voc.text_corpus("sentences")
