"""LLM sentence generation (``mlr-bench captions``) with a tiny random GPT-2 saved to disk."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch

from mlr_bench.errors import MLRBenchError
from mlr_bench.text import generate as gen
from mlr_bench.text import pvp_corpus as pc

CLASSES = ["cat", "dog", "car", "tree", "boat", "person", "bus", "traffic_light"]
FILLER = {"a", "the", "photo", "of", "on", "in", "with", "and", "is", "near", "street", "water"}
PROMPT_WORDS = {
    w
    for r in gen.RECIPES.values()
    for k in (1, 5)
    for w in r.render(["x"], k).replace("!", " ").replace(".", " ").replace(":", " ").split()
}


def _vocab() -> dict[str, int]:
    words = ["[UNK]", "</s>", "[PAD]", ".", ",", "!", "'", ":'", "','", "'!", ",'", "1", "2"]
    words += sorted(PROMPT_WORDS | FILLER | {"traffic", "light", *CLASSES})
    return {w: i for i, w in enumerate(dict.fromkeys(words))}


@pytest.fixture(scope="module")
def llm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer random GPT-2 with a word-level tokenizer, saved like a hub checkpoint."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    vocab = _vocab()
    raw = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=raw, unk_token="[UNK]", eos_token="</s>", pad_token="[PAD]"
    )
    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=2,
        n_head=2,
        n_embd=32,
        vocab_size=len(vocab),
        n_positions=128,
        eos_token_id=vocab["</s>"],
        bos_token_id=vocab["</s>"],
        pad_token_id=vocab["[PAD]"],
    )
    path = tmp_path_factory.mktemp("tiny-gpt2")
    GPT2LMHeadModel(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Indices of every request that reached the model."""
    seen: list[int] = []
    real = gen.generate_batch

    def counting(tokenizer, model, requests, decoding):  # type: ignore[no-untyped-def]
        seen.extend(r.index for r in requests)
        return real(tokenizer, model, requests, decoding)

    monkeypatch.setattr(gen, "generate_batch", counting)
    return seen


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _run(llm_dir: Path, out: Path, n: int, **kw) -> Path:  # type: ignore[no-untyped-def]
    kw.setdefault("recipe", "comc")
    kw.setdefault("max_new_tokens", 12)
    return gen.generate_sentences(llm_dir, CLASSES, n=n, out_path=out, progress=False, **kw)


def test_comc_schema_and_label_sets(llm_dir: Path, tmp_path: Path) -> None:
    rows = _rows(_run(llm_dir, tmp_path / "c.jsonl", 12, batch_size=5))
    assert [r["index"] for r in rows] == list(range(12))
    for r in rows:
        assert set(r) == {"index", "labels", "requested", "description", "prompt", "recipe"}
        assert r["recipe"] == "comc" and isinstance(r["description"], str)
        assert r["labels"] == r["requested"]
        assert 1 <= len(r["labels"]) <= 5 and len(set(r["labels"])) == len(r["labels"])
        assert set(r["labels"]) <= set(CLASSES)
        listed = ", ".join(c.replace("_", " ") for c in r["labels"])
        assert (
            r["prompt"]
            == f"Please make a brief sentence to describe a photo that contains {listed}."
        )
        assert "\n" not in r["description"] and r["description"] == r["description"].strip()
    assert len({len(r["labels"]) for r in rows}) > 1


def test_pvp_random_sampling_keeps_the_one_sentence_recipe(llm_dir: Path, tmp_path: Path) -> None:
    rows = _rows(_run(llm_dir, tmp_path / "p.jsonl", 6, recipe="pvp", sampling="random"))
    for r in rows:
        assert set(r) == {"index", "requested", "description", "prompt", "recipe"}
        assert r["recipe"] == "pvp" and "labels" not in r
        assert 1 <= len(r["requested"]) <= 3 and set(r["requested"]) <= set(CLASSES)
        assert "Generate 1 short English sentence!" in r["prompt"]
        assert "include key words:'" in r["prompt"]
    assert len({len(r["requested"]) for r in rows}) > 1


def test_pvp_default_asks_every_combination_for_five_sentences(
    llm_dir: Path, tmp_path: Path
) -> None:
    names = CLASSES[:5]
    out = gen.generate_sentences(
        llm_dir, names, "pvp", None, tmp_path / "p.jsonl", max_new_tokens=6, progress=False
    )
    rows = _rows(out)
    expected = [list(c) for k in (1, 2, 3) for c in itertools.combinations(names, k)]
    assert [r["requested"] for r in rows] == expected  # 5 + 10 + 10, the reference's order
    assert [r["index"] for r in rows] == list(range(25))
    for r in rows:
        assert set(r) == {"index", "requested", "completion", "prompt", "recipe"}
    assert rows[15]["prompt"] == (
        "Make an English short sentence to describe a photo as simple as possible! "
        "Requirements: Generate 5 short English sentences! Each sentence should less than 15 "
        "words and include key words:'cat,'dog,'car'!\n"
    )
    plan = gen.make_plan("pvp")
    assert (plan.sampling, plan.per_prompt) == ("combinations", 5)
    assert plan.decoding(None, None, None) == gen.Decoding(200, 0.0, 0.7)  # greedy


def test_same_seed_same_file_and_batch_size_does_not_change_requests(
    llm_dir: Path, tmp_path: Path
) -> None:
    a = _run(llm_dir, tmp_path / "a.jsonl", 8, batch_size=4, seed=3)
    b = _run(llm_dir, tmp_path / "b.jsonl", 8, batch_size=4, seed=3)
    c = _run(llm_dir, tmp_path / "c.jsonl", 8, batch_size=3, seed=3)
    d = _run(llm_dir, tmp_path / "d.jsonl", 8, batch_size=4, seed=4)
    assert a.read_bytes() == b.read_bytes()
    key = [(r["labels"], r["prompt"]) for r in _rows(a)]
    assert key == [(r["labels"], r["prompt"]) for r in _rows(c)]
    assert key != [(r["labels"], r["prompt"]) for r in _rows(d)]


def test_greedy_is_deterministic(llm_dir: Path, tmp_path: Path) -> None:
    a = _run(llm_dir, tmp_path / "a.jsonl", 4, temperature=0.0)
    b = _run(llm_dir, tmp_path / "b.jsonl", 4, temperature=0.0)
    assert a.read_bytes() == b.read_bytes()


def test_resume_after_a_torn_line_generates_only_missing_requests(
    llm_dir: Path, tmp_path: Path, calls: list[int]
) -> None:
    out = _run(llm_dir, tmp_path / "r.jsonl", 6, batch_size=4)
    first = out.read_text().splitlines(keepends=True)
    torn = "".join(first[:5]) + first[5][: len(first[5]) // 2]
    out.write_text(torn)
    calls.clear()
    _run(llm_dir, out, 10, batch_size=4)
    rows = _rows(out)
    assert [r["index"] for r in rows] == list(range(10))
    assert out.read_text().splitlines(keepends=True)[:5] == first[:5]
    assert calls == [5, 6, 7, 8, 9]
    fresh = _rows(_run(llm_dir, tmp_path / "fresh.jsonl", 10, batch_size=4))
    assert [r["prompt"] for r in rows] == [r["prompt"] for r in fresh]


def test_finished_file_is_left_alone(llm_dir: Path, tmp_path: Path, calls: list[int]) -> None:
    out = _run(llm_dir, tmp_path / "f.jsonl", 5)
    before = out.read_bytes()
    calls.clear()
    _run(llm_dir, out, 5)
    _run(llm_dir, out, 3)
    assert calls == [] and out.read_bytes() == before


def test_resuming_with_other_settings_is_refused(llm_dir: Path, tmp_path: Path) -> None:
    out = _run(llm_dir, tmp_path / "s.jsonl", 3, seed=0)
    with pytest.raises(MLRBenchError, match="other settings"):
        _run(llm_dir, out, 6, seed=1)


def test_cli_with_data_and_classes_file(llm_dir: Path, tmp_path: Path) -> None:
    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join(CLASSES) + "\n\n")
    common = ["--llm", str(llm_dir), "--recipe", "comc", "--n", "4", "--max-new-tokens", "8"]
    by_file = tmp_path / "file.jsonl"
    by_data = tmp_path / "data.jsonl"
    assert gen.captions_main([*common, "--classes", str(classes), "--out", str(by_file)]) == 0
    code = gen.captions_main(
        [*common, "--data", "tiny", "--out", str(by_data), "--no-progress"],
        class_names_for=lambda name: CLASSES if name == "tiny" else [],
    )
    assert code == 0
    assert by_file.read_bytes() == by_data.read_bytes()
    assert len(_rows(by_file)) == 4


@pytest.mark.parametrize("make", ["missing", "empty", "config-only", "unloadable", "no-tokenizer"])
def test_missing_model_is_a_clear_stop(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make: str
) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    model = tmp_path / "llm"
    if make != "missing":
        model.mkdir()
    if make in ("config-only", "unloadable"):
        (model / "config.json").write_text("{}")
    if make == "unloadable":
        (model / "model.safetensors").write_bytes(b"not weights")
    if make == "no-tokenizer":
        config = GPT2Config(
            n_layer=1, n_head=1, n_embd=8, vocab_size=16, bos_token_id=0, eos_token_id=0
        )
        GPT2LMHeadModel(config).save_pretrained(model)
    classes, out = tmp_path / "classes.txt", tmp_path / "o.jsonl"
    classes.write_text("cat\ndog\n")
    argv = ["--classes", str(classes), "--llm", str(model), "--recipe", "pvp", "--n", "2"]
    capsys.readouterr()
    assert gen.captions_main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after any loading progress bars
    assert err.startswith(f"mlr-bench captions: error: no transformers model in '{model}': ")
    assert err.endswith("(downloads are disabled)")
    assert not out.exists()
    with pytest.raises(gen.LLMNotFoundError):
        gen.generate_sentences(model, CLASSES, "comc", 2, out)


def test_unknown_data_name_is_a_one_line_error(
    llm_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def lookup(name: str) -> list[str]:
        raise MLRBenchError(f"unknown data '{name}'")

    argv = ["--data", "nope", "--llm", str(llm_dir), "--recipe", "comc", "--n", "1"]
    assert gen.captions_main([*argv, "--out", str(tmp_path / "o.jsonl")], lookup) == 2
    assert capsys.readouterr().err.strip() == "mlr-bench captions: error: unknown data 'nope'"


def test_clean_output_keeps_the_first_sentence() -> None:
    assert gen.clean_output("\n 1. A cat sits. A dog runs.\n2. x") == "A cat sits."
    assert gen.clean_output('  "A dog on a boat"  \nmore') == "A dog on a boat"
    assert gen.clean_output("") == ""


def test_chat_template_is_used_when_present(llm_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(llm_dir, local_files_only=True)
    assert gen.render_inputs(tok, ["hi"]) == (["hi"], True)
    tok.chat_template = "{% for m in messages %}user: {{ m['content'] }}\n{% endfor %}bot:"
    assert gen.render_inputs(tok, ["hi"]) == (["user: hi\nbot:"], False)


def test_top_p_and_per_request_noise() -> None:
    scores = torch.tensor([[0.5, 0.3, 0.2]]).log()
    kept = gen._top_p_filter(scores, 0.7)
    assert torch.isfinite(kept).tolist() == [[True, True, False]]
    alone = gen.GumbelSampler([7], 1.0, 1.0)(None, scores)  # type: ignore[arg-type]
    paired = gen.GumbelSampler([3, 7], 1.0, 1.0)(None, scores.repeat(2, 1))  # type: ignore[arg-type]
    assert torch.equal(alone[0], paired[1])


# --- PVP's corpus recipe (pvp_pretrain/data_gen/ of Jinx630/Pseudo-Visual-Prompt) -------------


def test_combinations_are_every_set_of_1_to_3_classes_in_reference_order() -> None:
    assert pc.count_combinations(20, 1, 3) == 20 + 190 + 1140
    assert pc.count_combinations(80, 1, 3) == 85_400  # COCO: the reference's prompt count
    expected = [c for k in (1, 2, 3) for c in itertools.combinations(range(20), k)]
    assert [pc.combination_at(20, 1, 3, i) for i in range(1350)] == expected
    assert [pc.combination_at(6, 2, 2, i) for i in range(15)] == list(
        itertools.combinations(range(6), 2)
    )
    assert pc.count_combinations(2, 1, 3) == 3  # sizes above the class count add nothing
    with pytest.raises(MLRBenchError, match="past the 1350 sets of 1-3 of 20 classes"):
        pc.combination_at(20, 1, 3, 1350)


def test_label_range_and_clean_steps_parse_or_say_what_is_expected() -> None:
    assert pc.parse_label_range("1-3") == (1, 3)
    assert pc.parse_label_range("2") == (2, 2)
    for bad in ("0-3", "3-1", "a", "1-"):
        with pytest.raises(MLRBenchError, match="expected MIN-MAX"):
            pc.parse_label_range(bad)
    assert pc.parse_clean_steps("remote, lower") == ("lower", "remote")  # reference order
    assert pc.parse_clean_steps("none") == ()
    with pytest.raises(MLRBenchError, match="expected a comma list of lower, dedupe"):
        pc.parse_clean_steps("lower,spellcheck")


def test_numbered_lines_become_sentences() -> None:
    text = "Sure! Here are 5 sentences:\n\n1. A cat sits.\n 2.A dog runs.\n- a bullet\n10. Ten."
    assert pc.numbered_sentences(text) == (["A cat sits.", "A dog runs.", "Ten."], 2)


def test_filters_follow_the_reference_rules() -> None:
    rules = pc.FilterRules()
    six = "A cat sits on the mat."  # the reference's line "1. A cat ..." has 7 tokens: kept
    assert pc.drop_reason(six, rules) is None
    assert pc.drop_reason("A cat sits on mat.", rules) == "too few words"
    assert pc.drop_reason(" ".join(["cat"] * 21), rules) is None  # 22 tokens with "1."
    assert pc.drop_reason(" ".join(["cat"] * 22), rules) == "too many words"
    assert pc.drop_reason("A cat with a fifteen-letters mat.", rules) is None  # 15 characters
    assert pc.drop_reason("A cat with a sixteen-letters16 mat.", rules) == "long word"
    assert pc.drop_reason("A café cat sits on the mat.", rules) is None  # ord < 256 passes
    assert pc.drop_reason("A café cat sits on the mat.", pc.FilterRules(chars="ascii")) == (
        "characters"
    )
    assert pc.drop_reason("A 猫 cat sits on the mat.", rules) == "characters"
    assert pc.drop_reason("   ", rules) == "empty"
    assert pc.drop_reason("A cat.", pc.FilterRules(enabled=False)) is None
    with pytest.raises(MLRBenchError, match="expected 0 <= min <= max"):
        pc.FilterRules(min_words=9, max_words=3)


def test_cleaning_follows_the_reference_rules() -> None:
    words = pc.glue_words(["cat", "dog", "potted_plant", "remote"])
    lines = [
        "A Cat on a mat.",
        "a cat on a mat.",  # a duplicate once lowercased
        "aeddy bear near apotted plant.",
        "aotted plant and a hairdryer.",
        "andcat with adog and anut by the firehydrant.",
        "two remotes and a remote control.",
        "a vacation photo.",  # the reference splits class words inside other words too
    ]
    stats = pc.CorpusStats()
    assert pc.clean_corpus(lines, pc.CLEAN_STEPS, words, stats) == [
        "a cat on a mat.",
        "a teddy bear near a potted plant.",
        "a potted plant and a hair dryer.",
        "and cat with a dog and a donut by the fire hydrant.",
        "two remote controls and a remote control control.",
        "a va cation photo.",
    ]
    assert (stats.duplicates, stats.glued_fixed, stats.remote_replaced) == (1, 4, 1)
    kept = pc.clean_corpus(lines, ("lower", "dedupe"), words, pc.CorpusStats())
    assert kept[-2:] == ["two remotes and a remote control.", "a vacation photo."]
    assert pc.clean_corpus(["  A Cat  ", "a cat"], (), words, pc.CorpusStats()) == [
        "A Cat",
        "a cat",
    ]


@pytest.fixture
def scripted(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Replace the LLM's answers by a fixed, numbered five-sentence text per request."""
    seen: list[int] = []

    def answer(request: gen.Request) -> str:
        name = " and a ".join(n.replace("_", " ") for n in request.requested)
        return (
            "Sure! Here are five sentences:\n"
            f"1. A {name} sits near the water today.\n"
            f"2. A {name} sits near the water today.\n"  # duplicate
            "3. Look at this.\n"  # too few words
            f"4. A {name} waits beside a remote on the old wooden bench.\n"
            f"5. A {name} rests under a tree in the quiet 猫 park.\n"  # characters
        )

    def fake(tokenizer, model, requests, decoding):  # type: ignore[no-untyped-def]
        seen.extend(r.index for r in requests)
        return [answer(r) for r in requests]

    monkeypatch.setattr(gen, "generate_batch", fake)
    return seen


def test_txt_output_is_the_filtered_cleaned_corpus_with_counts(
    llm_dir: Path, tmp_path: Path, scripted: list[int], capsys: pytest.CaptureFixture[str]
) -> None:
    names = ["cat", "dog", "traffic_light"]
    out = tmp_path / "corpus.txt"
    capsys.readouterr()
    assert gen.generate_sentences(llm_dir, names, "pvp", None, out, progress=False) == out
    prompts = 3 + 3 + 1
    assert scripted == list(range(prompts))
    lines = out.read_text().splitlines()
    assert len(lines) == 2 * prompts
    assert lines[:2] == [
        "a cat sits near the water today.",
        "a cat waits beside a remote control on the old wooden bench.",
    ]
    assert "a cat and a dog and a traffic light sits near the water today." in lines
    assert len(_rows(tmp_path / "corpus.jsonl")) == prompts  # the requests, kept beside it
    report = capsys.readouterr().err.strip().splitlines()[-1]
    assert report == (
        f"mlr-bench captions: {out}: 35 sentences from 7 prompts (7 unnumbered lines skipped); "
        "dropped: 7 characters, 7 too few words; 7 duplicates removed; glued words split in 0, "
        f"'remote' replaced in 7; 14 written (requests in {tmp_path / 'corpus.jsonl'})"
    )


def test_corpus_options_change_the_txt_without_asking_again(
    llm_dir: Path, tmp_path: Path, scripted: list[int]
) -> None:
    out = tmp_path / "c.txt"
    common = ["--classes", str(tmp_path / "classes.txt"), "--llm", str(llm_dir)]
    (tmp_path / "classes.txt").write_text("cat\ndog\n")
    argv = [*common, "--recipe", "pvp", "--out", str(out), "--no-progress"]
    assert gen.captions_main(argv) == 0
    assert len(out.read_text().splitlines()) == 2 * 3
    scripted.clear()
    assert gen.captions_main([*argv, "--no-filter", "--clean", "lower,dedupe"]) == 0
    assert scripted == []  # the finished JSONL is reused
    lines = out.read_text().splitlines()
    assert len(lines) == 3 * 3 + 1 and "look at this." in lines  # its repeats are duplicates
    assert "a cat waits beside a remote on the old wooden bench." in lines


def test_interrupted_combination_run_resumes_to_the_same_files(
    llm_dir: Path, tmp_path: Path, calls: list[int]
) -> None:
    names = CLASSES[:4]  # 4 + 6 + 4 = 14 prompts

    def run(out: Path, n: int | None) -> Path:
        return gen.generate_sentences(
            llm_dir, names, "pvp", n, out, batch_size=4, max_new_tokens=6, progress=False
        )

    fresh = run(tmp_path / "fresh.txt", None)
    out = tmp_path / "r.txt"
    run(out, 7)  # stopped after 7 prompts ...
    raw = tmp_path / "r.jsonl"
    first = raw.read_text().splitlines(keepends=True)
    raw.write_text("".join(first[:6]) + first[6][:10])  # ... with a torn last line
    calls.clear()
    run(out, None)
    assert calls == list(range(6, 14))
    assert raw.read_bytes() == (tmp_path / "fresh.jsonl").read_bytes()
    assert out.read_bytes() == fresh.read_bytes()
    with pytest.raises(MLRBenchError, match="other settings"):
        gen.generate_sentences(
            llm_dir, names, "pvp", 14, raw, sampling="random", max_new_tokens=6, progress=False
        )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--recipe", "pvp", "--n", "99"], "--n 99: there are only 3 combinations of 1-3 of 2"),
        (["--recipe", "pvp", "--sampling", "random"], "--n is required with --sampling random"),
        (["--recipe", "pvp", "--num-labels", "3-3"], "no sets of 3-3 classes among 2"),
        (["--recipe", "comc", "--per-prompt", "5", "--n", "2"], "asks for one sentence"),
        (["--recipe", "pvp", "--min-words", "3"], "--min-words shape a .txt corpus"),
        (["--recipe", "comc", "--n", "2", "--txt"], "which a .txt corpus drops"),
        (["--recipe", "pvp", "--txt", "--clean", "lower,typo"], "--clean 'lower,typo'"),
    ],
)
def test_bad_corpus_settings_are_one_line_errors(
    llm_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    classes = tmp_path / "classes.txt"
    classes.write_text("cat\ndog\n")
    out = tmp_path / ("o.txt" if "--txt" in extra else "o.jsonl")
    extra = [a for a in extra if a != "--txt"]
    argv = ["--classes", str(classes), "--llm", str(llm_dir), "--out", str(out)]
    capsys.readouterr()
    assert gen.captions_main([*argv, *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mlr-bench captions: error: ") and message in err
    assert "\n" not in err
    assert not any(tmp_path.glob("o.*"))
