"""LLM-written training sentences for text-only multi-label training (CoMC and PVP recipes).

Each request asks a local ``transformers`` causal LM for sentences about a set of class names:
one sentence about a random set (``sampling="random"``, CoMC's recipe), or, as PVP's reference
does, several numbered sentences about each combination of 1-3 classes in turn
(``sampling="combinations"``, see ``pvp_corpus``). Requests are a pure function of
``(seed, index)``, so a resumed run, a run with another batch size, or a re-run on another
machine asks for exactly the same things. The output is JSONL, one line per request in index
order, flushed after every batch; a re-run continues after the last complete line. A ``.txt``
output is the filtered, cleaned corpus (one sentence per line, what PVP trains on), rebuilt from
the JSONL kept beside it whenever the run completes.

Decoding is sampling with a per-request seed by default (Gumbel-max on the tempered, top-p
filtered logits, with noise from a generator seeded by ``(seed, index)``), so a sentence does not
depend on which other requests share its batch; ``temperature=0`` gives greedy decoding.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mlr_bench.errors import MLRBenchError
from mlr_bench.text import pvp_corpus as pc

PROG = "mlr-bench captions"
SAMPLINGS = ("random", "combinations")
WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "*.safetensors.index.json")


class LLMNotFoundError(MLRBenchError):
    """``--llm`` does not point at a loadable local model; downloads are disabled by design."""

    def __init__(self, model_dir: str | os.PathLike, reason: str) -> None:
        super().__init__(
            f"no transformers model in '{model_dir}': {reason}; pass --llm a local directory "
            "with config.json and weights (downloads are disabled)"
        )


@dataclass(frozen=True)
class Decoding:
    """Decoding settings; ``temperature <= 0`` means greedy."""

    max_new_tokens: int
    temperature: float
    top_p: float


@dataclass(frozen=True)
class Recipe:
    """How one method asked its LLM for sentences: label-set size, prompts, decoding defaults.

    ``labels_from_request``: CoMC trains on the requested set as labels; PVP parses labels from
    the sentence later, so its lines carry only ``requested``. ``template`` asks for one
    sentence; ``many_template`` (when the method had one) for ``{count}`` numbered sentences,
    decoded with ``many_decoding`` whose ``max_new_tokens`` is per sentence asked.
    """

    name: str
    min_labels: int
    max_labels: int
    template: str
    quote_names: bool
    decoding: Decoding
    labels_from_request: bool
    sampling: str = "random"
    many_template: str | None = None
    many_decoding: Decoding | None = None
    many_per_prompt: int = 1

    def render(self, names: Sequence[str], per_prompt: int = 1) -> str:
        """The user prompt for a list of class names (underscores read as spaces)."""
        names = [n.replace("_", " ").strip() for n in names]
        if per_prompt > 1 and self.many_template is not None:
            # the reference's listing, verbatim in shape: 'a,'b,'c' (generate1.py)
            return self.many_template.format(count=per_prompt, names="'" + ",'".join(names) + "'")
        listed = ",".join(f"'{n}'" for n in names) if self.quote_names else ", ".join(names)
        return self.template.format(names=listed)


#: CoMC (generate_descriptions.py): k ~ U{1..5}, GPT-3.5 with max_tokens=40 and API defaults
#: (temperature 1, top_p 1). Labels are the requested set.
#: PVP (pvp_pretrain/data_gen/generate1.py): every combination of 1-3 class names, 5 numbered
#: sentences per prompt, ChatGLM-6B's ``model.generate(max_length=256)`` on the raw prompt with
#: no sampling arguments (so greedy under the checkpoint's defaults; prompt + answer <= 256
#: tokens, hence 40 new tokens per sentence asked here).
#: ``sampling="random"`` keeps the earlier one-sentence variant: random 1-3 classes per request
#: and ChatGLM-6B's chat defaults (temperature 0.95, top_p 0.7).
RECIPES: dict[str, Recipe] = {
    "comc": Recipe(
        name="comc",
        min_labels=1,
        max_labels=5,
        template="Please make a brief sentence to describe a photo that contains {names}.",
        quote_names=False,
        decoding=Decoding(max_new_tokens=40, temperature=1.0, top_p=1.0),
        labels_from_request=True,
    ),
    "pvp": Recipe(
        name="pvp",
        min_labels=1,
        max_labels=3,
        template=(
            "Make an English short sentence to describe a photo as simple as possible! "
            "Requirements: Generate 1 short English sentence! The sentence should less than "
            "15 words and include key words:{names}!"
        ),
        quote_names=True,
        decoding=Decoding(max_new_tokens=30, temperature=0.95, top_p=0.7),
        labels_from_request=False,
        sampling="combinations",
        many_template=(
            "Make an English short sentence to describe a photo as simple as possible! "
            "Requirements: Generate {count} short English sentences! Each sentence should less "
            "than 15 words and include key words:{names}!\n"
        ),
        many_decoding=Decoding(max_new_tokens=40, temperature=0.0, top_p=0.7),
        many_per_prompt=5,
    ),
}


@dataclass(frozen=True)
class Plan:
    """The requests of one run: a recipe, how label sets are chosen, sentences per prompt."""

    recipe: Recipe
    sampling: str
    min_labels: int
    max_labels: int
    per_prompt: int

    def total(self, n_classes: int) -> int | None:
        """Number of distinct prompts (combinations), or None when they are drawn at random."""
        if self.sampling != "combinations":
            return None
        return pc.count_combinations(n_classes, self.min_labels, self.max_labels)

    def decoding(
        self, max_new_tokens: int | None, temperature: float | None, top_p: float | None
    ) -> Decoding:
        """The recipe's decoding for this many sentences per prompt, with overrides."""
        many = self.per_prompt > 1 and self.recipe.many_decoding is not None
        base = self.recipe.many_decoding if many else self.recipe.decoding
        assert base is not None
        tokens = base.max_new_tokens * (self.per_prompt if many else 1)
        return Decoding(
            tokens if max_new_tokens is None else max_new_tokens,
            base.temperature if temperature is None else temperature,
            base.top_p if top_p is None else top_p,
        )


def make_plan(
    recipe: str,
    sampling: str | None = None,
    num_labels: tuple[int, int] | None = None,
    per_prompt: int | None = None,
) -> Plan:
    """A checked ``Plan``; ``None`` settings take the recipe's defaults."""
    spec = _recipe(recipe)
    sampling = spec.sampling if sampling is None else sampling
    if sampling not in SAMPLINGS:
        raise MLRBenchError(f"unknown sampling '{sampling}'; choose one of {', '.join(SAMPLINGS)}")
    low, high = (spec.min_labels, spec.max_labels) if num_labels is None else num_labels
    if not 1 <= low <= high:
        raise MLRBenchError(f"label-set sizes {low}-{high}: expected 1 <= MIN <= MAX")
    if per_prompt is None:
        per_prompt = spec.many_per_prompt if sampling == "combinations" else 1
    if per_prompt < 1:
        raise MLRBenchError(f"--per-prompt {per_prompt}: expected at least 1 sentence")
    if per_prompt > 1 and spec.many_template is None:
        raise MLRBenchError(
            f"--per-prompt {per_prompt}: recipe '{spec.name}' asks for one sentence per prompt "
            "(only pvp has a several-sentence prompt)"
        )
    return Plan(spec, sampling, low, high, per_prompt)


@dataclass(frozen=True)
class Request:
    """One sentence to ask for; ``noise_seed`` seeds its sampling noise."""

    index: int
    requested: list[str]
    prompt: str
    noise_seed: int


def make_request(plan: Plan, class_names: Sequence[str], seed: int, index: int) -> Request:
    """Request ``index``: depends only on ``(seed, index)``, never on batching or resumption.

    Random sampling draws the set from the ``(seed, index)`` generator; combinations take the
    ``index``-th set of the reference's enumeration. Either way the sampling noise seed is the
    generator's next draw.
    """
    rng = np.random.default_rng([seed, index])
    if plan.sampling == "combinations":
        chosen = pc.combination_at(len(class_names), plan.min_labels, plan.max_labels, index)
        picked = [class_names[c] for c in chosen]
    else:
        high = min(plan.max_labels, len(class_names))
        k = int(rng.integers(min(plan.min_labels, high), high + 1))
        picked = [class_names[int(c)] for c in rng.choice(len(class_names), size=k, replace=False)]
    noise_seed = int(rng.integers(2**62))
    return Request(index, picked, plan.recipe.render(picked, plan.per_prompt), noise_seed)


def record(plan: Plan, request: Request, completion: str) -> dict[str, Any]:
    """The JSONL row for one finished request.

    One sentence per prompt: its cleaned ``description``. Several: the raw ``completion``, whose
    numbered lines become sentences when the corpus is built (so filters can change later).
    """
    row: dict[str, Any] = {"index": request.index}
    if plan.recipe.labels_from_request:
        row["labels"] = request.requested
    row["requested"] = request.requested
    if plan.per_prompt > 1:
        row["completion"] = completion
    else:
        row["description"] = clean_output(completion)
    row["prompt"] = request.prompt
    row["recipe"] = plan.recipe.name
    return row


# --- resuming -------------------------------------------------------------------------------


def _parse_line(line: bytes, index: int) -> dict[str, Any] | None:
    """A complete, well-formed row for ``index``, or None (a crash may leave a partial line)."""
    if not line.endswith(b"\n"):
        return None
    try:
        row = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    ok = isinstance(row, dict) and row.get("index") == index
    text = (row.get("description"), row.get("completion")) if ok else ()
    return row if any(isinstance(t, str) for t in text) else None


def _check_same_settings(path: Path, row: dict[str, Any], expected: dict[str, Any]) -> None:
    """Refuse to extend a file written with another seed, recipe, sampling or class list."""
    keys = ("requested", "prompt", "recipe")
    if any(row.get(k) != expected[k] for k in keys):
        raise MLRBenchError(
            f"'{path}' line {row['index'] + 1} was written with other settings (seed, recipe, "
            "--sampling, --num-labels, --per-prompt or classes): it asked "
            f"{row.get('prompt')!r} about {row.get('requested')}, this run asks "
            f"{expected['prompt']!r} about {expected['requested']}; delete the file or pass "
            "another --out"
        )


def resume_point(path: Path, expected: Callable[[int], dict[str, Any]]) -> int:
    """Count the valid leading rows of ``path`` and drop anything after them.

    Rows must have contiguous indices 0..m-1; the first partial or malformed line and all that
    follows is removed by an atomic rewrite, so appending afterwards is safe.
    """
    if not path.exists():
        return 0
    data = path.read_bytes()
    lines = data.splitlines(keepends=True)
    kept, size = 0, 0
    for line in lines:
        row = _parse_line(line, kept)
        if row is None:
            break
        _check_same_settings(path, row, expected(kept))
        kept, size = kept + 1, size + len(line)
    if size != len(data):
        print(
            f"{PROG}: dropping {len(lines) - kept} incomplete line(s) after row {kept} of {path}",
            file=sys.stderr,
        )
        _atomic_write(path, data[:size])
    return kept


def _atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` so a crash leaves either the old or the new file, never a mix."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# --- the model ------------------------------------------------------------------------------


def check_model_dir(model_dir: str | os.PathLike) -> Path:
    """Fail early and clearly when there is no local model (nothing can be downloaded)."""
    path = Path(model_dir)
    if not path.exists():
        raise LLMNotFoundError(model_dir, "the directory does not exist")
    if not path.is_dir():
        raise LLMNotFoundError(model_dir, "it is not a directory")
    if not (path / "config.json").is_file():
        raise LLMNotFoundError(model_dir, "config.json is missing")
    if not any(any(path.glob(p)) for p in WEIGHT_PATTERNS):
        raise LLMNotFoundError(model_dir, "no weight files (*.safetensors or pytorch_model*.bin)")
    return path


def load_llm(model_dir: str | os.PathLike, device: str = "cpu") -> tuple[Any, Any]:
    """Tokenizer and model from a local directory, set up for left-padded batch generation."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    path = check_model_dir(model_dir)
    dtype = torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    try:  # config first: its errors name the real problem, and it is cheap
        AutoConfig.from_pretrained(path, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=dtype)
    except Exception as exc:  # any failure to read the files means: no usable model here
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LLMNotFoundError(model_dir, reason) from exc
    if len(tokenizer) <= len(set(tokenizer.all_special_tokens)):  # v5 builds empty ones silently
        raise LLMNotFoundError(model_dir, "no tokenizer files (tokenizer.json or vocab files)")
    tokenizer.padding_side = "left"  # decoder-only: new tokens must follow the prompt directly
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer, model.to(device).eval()


def render_inputs(tokenizer: Any, prompts: Sequence[str]) -> tuple[list[str], bool]:
    """Prompts wrapped in the chat template when the tokenizer has one.

    Returns the texts and whether special tokens still need adding (templates add their own).
    ``enable_thinking=False`` turns off reasoning preambles in templates that know it.
    """
    if not getattr(tokenizer, "chat_template", None):
        return list(prompts), True
    texts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": p}],
            tokenize=False,
            add_generation_prompt=True,
            enable_thinking=False,
        )
        for p in prompts
    ]
    return texts, False


class GumbelSampler:
    """Logits processor: tempered, top-p filtered logits plus per-row Gumbel noise.

    Greedy decoding on these scores is an exact sample from the filtered softmax, and each row's
    noise comes from its own request's generator, so batching does not change the draw.
    """

    def __init__(self, seeds: Sequence[int], temperature: float, top_p: float) -> None:
        self.generators = [torch.Generator().manual_seed(s) for s in seeds]
        self.temperature = temperature
        self.top_p = top_p

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.Tensor:
        scores = scores.float() / self.temperature
        if self.top_p < 1.0:
            scores = _top_p_filter(scores, self.top_p)
        uniform = torch.stack(
            [torch.rand(scores.shape[-1], generator=g) for g in self.generators]
        ).to(scores.device)
        gumbel = -torch.log(-torch.log(uniform.clamp(1e-10, 1 - 1e-7)))
        return scores + gumbel


def _top_p_filter(scores: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of tokens whose probability reaches ``top_p`` (at least one)."""
    sorted_scores, order = scores.sort(dim=-1, descending=True)
    cum = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
    drop_sorted = (cum - sorted_scores.softmax(dim=-1)) >= top_p
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return scores.masked_fill(drop, float("-inf"))


def generate_batch(
    tokenizer: Any, model: Any, requests: Sequence[Request], decoding: Decoding
) -> list[str]:
    """Raw completions (prompt removed) for a batch of requests."""
    from transformers import LogitsProcessorList

    texts, add_special = render_inputs(tokenizer, [r.prompt for r in requests])
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=add_special).to(
        model.device
    )
    processors = LogitsProcessorList()
    if decoding.temperature > 0:
        seeds = [r.noise_seed for r in requests]
        processors.append(GumbelSampler(seeds, decoding.temperature, decoding.top_p))
    with torch.inference_mode():
        out = model.generate(
            **enc,
            do_sample=False,  # sampling, if any, is done by GumbelSampler with per-request seeds
            max_new_tokens=decoding.max_new_tokens,
            logits_processor=processors,
            pad_token_id=tokenizer.pad_token_id,
            temperature=None,
            top_p=None,
            top_k=None,
        )
    new_tokens = out[:, enc["input_ids"].shape[1] :]
    return tokenizer.batch_decode(new_tokens, skip_special_tokens=True)


_NUMBERING = re.compile(r"^\s*(?:\d+\s*[.):]|[-*•])\s*")
_FIRST_SENTENCE = re.compile(r"^(.+?[.!?])(?=\s|$)")


def clean_output(text: str) -> str:
    """First non-empty line, first sentence, without list numbering, quotes or whitespace."""
    line = next((s.strip() for s in text.splitlines() if s.strip()), "")
    line = _NUMBERING.sub("", line).strip().strip("\"'“”").strip()
    match = _FIRST_SENTENCE.match(line)
    return match.group(1).strip() if match else line


# --- the run --------------------------------------------------------------------------------


@dataclass(frozen=True)
class CorpusOptions:
    """How a ``.txt`` output is made from the requests: filters, then cleaning steps.

    The defaults are PVP's (``get_train_data.py``, ``wash_data.py``); see ``pvp_corpus``.
    """

    rules: pc.FilterRules = field(default_factory=pc.FilterRules)
    clean: tuple[str, ...] = pc.CLEAN_STEPS


def generate_sentences(
    model_dir: str | os.PathLike,
    class_names: Sequence[str],
    recipe: str,
    n: int | None,
    out_path: str | os.PathLike,
    batch_size: int = 16,
    seed: int = 0,
    max_new_tokens: int | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    device: str = "cpu",
    progress: bool = True,
    sampling: str | None = None,
    num_labels: tuple[int, int] | None = None,
    per_prompt: int | None = None,
    corpus: CorpusOptions | None = None,
) -> Path:
    """Write (or finish) ``n`` requests as JSONL at ``out_path``; returns the path.

    ``None`` settings take the recipe's defaults; ``n=None`` asks every combination. When
    ``out_path`` ends in ``.txt`` the requests go to the same name with ``.jsonl`` and, once all
    are done, the filtered, cleaned corpus (``corpus``) is written to ``out_path``. Raises
    ``LLMNotFoundError`` (an ``MLRBenchError``) without a usable local model, and
    ``MLRBenchError`` for bad input or an existing file written with other settings.
    """
    plan = make_plan(recipe, sampling, num_labels, per_prompt)
    names = _check_classes(class_names)
    n = _check_count(plan, len(names), n)
    if batch_size < 1:
        raise MLRBenchError(f"need batch size >= 1, got {batch_size}")
    decoding = plan.decoding(max_new_tokens, temperature, top_p)
    out = Path(out_path)
    txt = out.suffix.lower() == ".txt"
    if txt and plan.recipe.labels_from_request:
        raise MLRBenchError(
            f"--out '{out}': recipe '{plan.recipe.name}' trains on the requested labels, which a "
            ".txt corpus drops; write .jsonl"
        )
    raw = out.with_suffix(".jsonl") if txt else out
    check_model_dir(model_dir)

    def expected(i: int) -> dict[str, Any]:
        return record(plan, make_request(plan, names, seed, i), "")

    done = resume_point(raw, expected)
    if done < n:
        tokenizer, model = load_llm(model_dir, device)
        raw.parent.mkdir(parents=True, exist_ok=True)
        llm = (tokenizer, model, decoding)
        _run(raw, plan, names, seed, range(done, n), batch_size, llm, progress)
    if not txt:
        return raw
    stats = write_corpus(raw, n, out, corpus or CorpusOptions(), pc.glue_words(names))
    print(f"{PROG}: {out}: {stats.summary()} (requests in {raw})", file=sys.stderr)
    if n and not stats.written:
        print(
            f"{PROG}: warning: {out} is empty: no sentence passed the filters (counts above; "
            f"the answers are in {raw})",
            file=sys.stderr,
        )
    return out


def _check_count(plan: Plan, n_classes: int, n: int | None) -> int:
    """The number of requests: ``n``, or every combination; never more than there are."""
    total = plan.total(n_classes)
    if total is None:
        if n is None:
            raise MLRBenchError("--n is required with --sampling random (how many requests)")
    elif total == 0:
        raise MLRBenchError(
            f"no sets of {plan.min_labels}-{plan.max_labels} classes among {n_classes}; "
            "lower --num-labels"
        )
    elif n is None:
        n = total
    elif n > total:
        raise MLRBenchError(
            f"--n {n}: there are only {total} combinations of {plan.min_labels}-"
            f"{plan.max_labels} of {n_classes} classes (omit --n to ask them all)"
        )
    assert n is not None
    if n < 0:
        raise MLRBenchError(f"--n {n}: expected a number of requests >= 0")
    return n


def read_answers(path: Path, n: int) -> Iterator[tuple[list[str], int]]:
    """Each of the first ``n`` rows as (sentences, unnumbered lines) for the corpus."""
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if number > n:
                return
            row = json.loads(line)
            if isinstance(row.get("completion"), str):
                yield pc.numbered_sentences(row["completion"])
            else:
                yield [row["description"]], 0


def write_corpus(
    raw: Path, n: int, out: Path, options: CorpusOptions, words: Sequence[str]
) -> pc.CorpusStats:
    """Filter and clean the first ``n`` requests of ``raw`` into ``out``, one sentence a line."""
    lines, stats = pc.build_corpus(read_answers(raw, n), options.rules, options.clean, words)
    out.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(out, "".join(line + "\n" for line in lines).encode("utf-8"))
    return stats


def _run(
    out: Path,
    plan: Plan,
    names: list[str],
    seed: int,
    todo: range,
    batch_size: int,
    llm: tuple[Any, Any, Decoding],
    progress: bool,
) -> None:
    """Generate the ``todo`` requests batch by batch, appending and flushing after each."""
    from tqdm import tqdm

    tokenizer, model, decoding = llm
    bar = tqdm(total=todo.stop, initial=todo.start, file=sys.stderr, disable=not progress)
    with open(out, "a", encoding="utf-8") as f, bar:
        for start in range(todo.start, todo.stop, batch_size):
            stop = min(start + batch_size, todo.stop)
            batch = [make_request(plan, names, seed, i) for i in range(start, stop)]
            completions = generate_batch(tokenizer, model, batch, decoding)
            for req, text in zip(batch, completions, strict=True):
                f.write(json.dumps(record(plan, req, text)) + "\n")
            f.flush()
            os.fsync(f.fileno())
            bar.update(len(batch))


def _recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise MLRBenchError(f"unknown recipe '{name}'; choose one of {', '.join(RECIPES)}")
    return RECIPES[name]


def _check_classes(class_names: Sequence[str]) -> list[str]:
    """Class names must be non-empty and distinct: labels are stored by name."""
    names = [str(c) for c in class_names]
    if not names:
        raise MLRBenchError("no class names given")
    dupes = sorted({c for c in names if names.count(c) > 1})
    if dupes:
        raise MLRBenchError(f"duplicate class names: {', '.join(dupes)}")
    return names


def read_class_file(path: str | os.PathLike) -> list[str]:
    """Class names, one per line; blank lines and surrounding whitespace are ignored."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise MLRBenchError(f"cannot read class file '{path}': {exc.strerror or exc}") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


# --- command line ---------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """Arguments of ``mlr-bench captions``."""
    p = argparse.ArgumentParser(prog=PROG, description="Write LLM sentences for text training.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", metavar="NAME", help="dataset short name giving the classes")
    src.add_argument("--classes", metavar="FILE", help="text file with one class name per line")
    p.add_argument("--llm", metavar="DIR", required=True, help="local transformers model dir")
    p.add_argument("--recipe", choices=sorted(RECIPES), required=True)
    p.add_argument(
        "--n",
        type=int,
        default=None,
        help="number of requests (prompts); required with --sampling random, default with "
        "combinations: all of them",
    )
    p.add_argument(
        "--out",
        metavar="FILE",
        required=True,
        help="JSONL of requests, resumed if present; a .txt path gets the filtered, cleaned "
        "corpus (one sentence per line) and the requests go beside it as .jsonl",
    )
    p.add_argument(
        "--sampling",
        choices=SAMPLINGS,
        default=None,
        help="random label sets per request, or every combination in turn (default: pvp "
        "combinations, comc random)",
    )
    p.add_argument(
        "--num-labels",
        metavar="MIN-MAX",
        type=_label_range,
        default=None,
        help="class names per prompt (default: pvp 1-3, comc 1-5)",
    )
    p.add_argument(
        "--per-prompt",
        type=int,
        default=None,
        metavar="K",
        help="sentences asked per prompt (default: pvp 5 with combinations, else 1)",
    )
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--max-new-tokens", type=int, default=None, help="default: per recipe (pvp: 40 a sentence)"
    )
    p.add_argument("--temperature", type=float, default=None, help="0 = greedy; default: recipe")
    p.add_argument("--top-p", type=float, default=None, help="default: per recipe")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    _add_corpus_arguments(p)
    return p


def _label_range(text: str) -> tuple[int, int]:
    try:
        return pc.parse_label_range(text)
    except MLRBenchError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


#: Corpus options (``.txt`` output only) and their defaults, PVP's.
_CORPUS_DEFAULTS = {
    "chars": pc.FilterRules.chars,
    "min_words": pc.FilterRules.min_words,
    "max_words": pc.FilterRules.max_words,
    "max_word_length": pc.FilterRules.max_word_length,
    "no_filter": False,
    "clean": ",".join(pc.CLEAN_STEPS),
}


def _add_corpus_arguments(p: argparse.ArgumentParser) -> None:
    """Filters and cleaning of a ``.txt`` output; defaults None so unused ones can be refused."""
    g = p.add_argument_group("corpus (--out FILE.txt; defaults are PVP's)")
    g.add_argument("--chars", choices=sorted(pc.CHARSETS), default=None, help="default latin1")
    g.add_argument(
        "--min-words",
        type=int,
        default=None,
        help="default 6 words of the sentence (the reference's 7 counts its 'N.' marker)",
    )
    g.add_argument("--max-words", type=int, default=None, help="default 21 (reference: 22)")
    g.add_argument("--max-word-length", type=int, default=None, help="default 15 characters")
    g.add_argument("--no-filter", action="store_true", default=None, help="keep every sentence")
    g.add_argument(
        "--clean",
        default=None,
        metavar="STEPS",
        help=f"comma list of {','.join(pc.CLEAN_STEPS)} or none (default: all)",
    )


def corpus_options(args: argparse.Namespace) -> CorpusOptions:
    """``CorpusOptions`` from the command line; refuses them when ``--out`` is not ``.txt``."""
    given = [k for k in _CORPUS_DEFAULTS if getattr(args, k) is not None]
    if given and not str(args.out).lower().endswith(".txt"):
        flags = ", ".join("--" + k.replace("_", "-") for k in given)
        raise MLRBenchError(f"{flags} shape a .txt corpus; --out '{args.out}' is not .txt")
    value = {
        k: d if getattr(args, k) is None else getattr(args, k) for k, d in _CORPUS_DEFAULTS.items()
    }
    rules = pc.FilterRules(
        chars=value["chars"],
        min_words=value["min_words"],
        max_words=value["max_words"],
        max_word_length=value["max_word_length"],
        enabled=not value["no_filter"],
    )
    return CorpusOptions(rules, pc.parse_clean_steps(value["clean"]))


def captions_main(
    argv: list[str], class_names_for: Callable[[str], list[str]] | None = None
) -> int:
    """``mlr-bench captions``: returns 0, or 2 after a one-line error the user can act on."""
    args = build_parser().parse_args(argv)
    try:
        corpus = corpus_options(args)
        names = _class_names(args, class_names_for)
        generate_sentences(
            args.llm,
            names,
            args.recipe,
            args.n,
            args.out,
            batch_size=args.batch_size,
            seed=args.seed,
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            top_p=args.top_p,
            device=args.device,
            progress=not args.no_progress,
            sampling=args.sampling,
            num_labels=args.num_labels,
            per_prompt=args.per_prompt,
            corpus=corpus,
        )
    except MLRBenchError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    return 0


def _class_names(
    args: argparse.Namespace, class_names_for: Callable[[str], list[str]] | None
) -> list[str]:
    if args.classes is not None:
        return read_class_file(args.classes)
    if class_names_for is None:
        raise MLRBenchError("--data needs a dataset lookup here; pass --classes FILE instead")
    return list(class_names_for(args.data))
