"""LLM sentence generation (``mlr-bench captions``) with a tiny random GPT-2 saved to disk."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mlr_bench.errors import MLRBenchError
from mlr_bench.text import generate as gen

CLASSES = ["cat", "dog", "car", "tree", "boat", "person", "bus", "traffic_light"]
FILLER = {"a", "the", "photo", "of", "on", "in", "with", "and", "is", "near", "street", "water"}
PROMPT_WORDS = {
    w
    for r in gen.RECIPES.values()
    for w in r.render(["x"]).replace("!", " ").replace(".", " ").replace(":", " ").split()
}


def _vocab() -> dict[str, int]:
    words = ["[UNK]", "</s>", "[PAD]", ".", ",", "!", "'", ":'", "','", "'!"]
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


def test_pvp_rows_keep_only_the_requested_set(llm_dir: Path, tmp_path: Path) -> None:
    rows = _rows(_run(llm_dir, tmp_path / "p.jsonl", 6, recipe="pvp"))
    for r in rows:
        assert "labels" not in r and r["recipe"] == "pvp"
        assert 1 <= len(r["requested"]) <= 3 and set(r["requested"]) <= set(CLASSES)
        assert "include key words:'" in r["prompt"]


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
