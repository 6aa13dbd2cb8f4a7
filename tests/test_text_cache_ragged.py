"""The ragged text cache: offsets, per-item reads, training losses against re-encoding and the
old padded layout, rebuild on a layout change, reads that never touch the whole corpus."""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import Callable, Iterator

import numpy as np
import pytest
import torch

from method_args import PVP_ARGS
from mlr_bench import testing
from mlr_bench.clip import CLIPBackbone
from mlr_bench.datamodules.world import World
from mlr_bench.features import FeatureStore, TextFeatureDataset, text_features
from mlr_bench.features import store as store_module
from mlr_bench.features import text as text_module
from mlr_bench.features.store import ArraySpec
from mlr_bench.features.text import HIDDEN, finish_text_batch
from mlr_bench.losses import ranking_loss
from mlr_bench.methods.taidpt import TaIDPT
from mlr_bench.text.corpus import TextCorpus

#: README, "Feature caches": the fp16 text cache differs from re-encoding by at most 4e-4
#: (relative) in the training loss over an epoch. Both storages must stay within it.
FP16_LOSS_RTOL = 4e-4
Batch = dict[str, torch.Tensor]


@pytest.fixture(scope="module")
def tiny_rn() -> CLIPBackbone:
    """Context 77 (the world's micro-CLIP has 40), so a 75-token text fits."""
    return CLIPBackbone("mlr-tiny-rn", None)


def _reference(backbone: CLIPBackbone, texts: list[str], width: int | None = None) -> Batch:
    """Re-encoded float32 features of ``texts``, cut to their longest text (or ``width``), with
    the padding zeroed as the ragged cache pads."""
    live = backbone.encode_text_tokens(backbone.tokenize(texts))
    width = width or int(live.mask.sum(1).max())
    mask = live.mask[:, :width]
    return {"eot": live.eot, "tokens": live.tokens[:, :width] * mask[..., None], "mask": mask}


def _rel_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """Largest per-vector relative L2 error (zero vectors, i.e. padding, compared absolutely)."""
    norm = want.norm(dim=-1).clamp_min(1.0)
    return float(((got - want).norm(dim=-1) / norm).max())


# ---- offsets and per-item reads ----------------------------------------------------------------
@pytest.mark.parametrize("storage", ["pre_projection", "projected"])
def test_offsets_and_reads_for_texts_of_very_different_lengths(tmp_path, tiny_rn, storage):
    long = " ".join(["cat"] * 73)  # SOS + 73 + EOT = 75 tokens
    texts = ["cat", long, "two blue moons and a key", "a"]
    lengths = [3, 75, 8, 3]
    corpus = TextCorpus(texts, np.eye(4, 2, dtype=np.int8))
    ids = tiny_rn.tokenize(texts)
    assert (ids.argmax(-1) + 1).tolist() == lengths
    with torch.no_grad():
        want = _reference(tiny_rn, texts)
    for dtype, tol in (("float32", 1e-6), ("float16", 1e-3)):
        cache = text_features(FeatureStore(tmp_path), tiny_rn, corpus, dtype=dtype, storage=storage)
        assert cache.key["storage"] == storage and "tokens" not in cache and "eot" not in cache
        assert np.asarray(cache["offset"]).tolist() == [0, 3, 78, 86, 89]
        assert cache["token_feats"].shape[0] == sum(lengths)
        assert cache.info["token_rel_error_max"] < tol  # what the build measured and recorded
        dataset = TextFeatureDataset(cache)
        for i, n in enumerate(lengths):  # one text: padded to itself
            item = dataset[i]
            assert item["tokens"].shape[0] == n and bool(item["mask"].all())
            assert _rel_error(item["tokens"], want["tokens"][i, :n]) < tol
            assert _rel_error(item["eot"][None], want["eot"][i : i + 1]) < tol
        batch = dataset.read_batch([3, 1, 0])  # any order: padded to the batch's longest (75)
        assert batch["tokens"].shape[1] == 75 and batch["index"].tolist() == [3, 1, 0]
        assert torch.equal(batch["mask"], want["mask"][[3, 1, 0]])
        assert _rel_error(batch["tokens"], want["tokens"][[3, 1, 0]]) < tol
        assert _rel_error(batch["eot"], want["eot"][[3, 1, 0]]) < tol
        assert float(batch["tokens"][0, 3:].abs().max()) == 0.0, "padding is zero"


def test_auto_storage_keeps_tokens_before_the_projection_only_where_it_is_narrower(
    tmp_path, monkeypatch, caplog
):
    world = CLIPBackbone("world", "bundled")  # text width 96 < embedding 128
    corpus = TextCorpus(["a red star.", "two blue moons"], np.eye(2, 3, dtype=np.int8))
    cache = text_features(FeatureStore(tmp_path), world, corpus)
    assert cache.key["storage"] == "pre_projection" and cache["token_feats"].shape[1] == 96
    assert 0 < cache.info["token_rel_error_max"] < 1e-3  # fp16 rounding, read back projected
    monkeypatch.setattr(text_module, "STORED_ERROR_WARN", 1e-9)  # a build past it says so
    text_features(FeatureStore(tmp_path / "again"), world, corpus)
    assert "stored tokens differ from the encoder's" in caplog.text
    tiny = CLIPBackbone("mlr-tiny-vit", None)  # text width 64 = embedding 64
    assert text_features(FeatureStore(tmp_path), tiny, corpus).key["storage"] == "projected"
    eot_only = text_features(FeatureStore(tmp_path), world, corpus, parts=frozenset({"eot"}))
    assert set(eot_only.arrays) == {"eot", "target"}
    with pytest.raises(ValueError, match="storage"):
        text_features(FeatureStore(tmp_path), world, corpus, storage="sideways")


def test_deferred_batches_are_projected_where_they_land(tmp_path):
    """Under a Trainer the datamodule's ``on_after_batch_transfer`` projects the batch."""
    data = World(seed=0, num_captions=64, num_test=8, num_val=8, cache_dir=str(tmp_path))
    model = TaIDPT(class_names=data.class_names)
    data.attach(model)
    cache = data.text_cache()
    now = TextFeatureDataset(cache).read_batch(range(16))
    later = TextFeatureDataset(cache, defer_projection=True).read_batch(range(16))
    assert HIDDEN in later and "tokens" not in later and later[HIDDEN].dtype == torch.float16
    done = data.on_after_batch_transfer({"text": later, "other": {"x": torch.ones(1)}}, 0)
    assert set(done["text"]) == set(now) and done["other"]["x"].item() == 1.0
    for name in ("tokens", "eot", "mask"):
        torch.testing.assert_close(done["text"][name], now[name])
    with pytest.raises(RuntimeError, match="backbone"):
        finish_text_batch(later, None)


# ---- training losses: ragged vs re-encoding vs the old padded layout ---------------------------
def _batches(corpus: TextCorpus, size: int) -> list[list[int]]:
    order = torch.randperm(len(corpus), generator=torch.Generator().manual_seed(0)).tolist()
    return [order[i : i + size] for i in range(0, len(order), size)]


def _ragged(cache, plan: list[list[int]]) -> Iterator[Batch]:
    dataset = TextFeatureDataset(cache)
    for rows in plan:
        yield dataset.read_batch(rows)


@torch.no_grad()
def _encoded(backbone, corpus: TextCorpus, plan, old_layout: bool = False) -> Iterator[Batch]:
    """Re-encoded batches (float32, cut to the batch's longest), or as the old padded cache
    held them (``old_layout``: fp16, padded to the *corpus's* longest text, real padding)."""
    corpus_width = int((backbone.tokenizer(corpus.texts).argmax(-1) + 1).max())
    for rows in plan:
        texts = [corpus.texts[i] for i in rows]
        target = torch.from_numpy(corpus.labels[rows])
        if not old_layout:
            yield {**_reference(backbone, texts), "target": target}
            continue
        live = backbone.encode_text_tokens(backbone.tokenize(texts))
        yield {
            "eot": live.eot.half().float(),
            "tokens": live.tokens[:, :corpus_width].half().float(),
            "mask": live.mask[:, :corpus_width],
            "target": target,
        }


def _train(model, loss: Callable[[Batch], torch.Tensor], batches: Iterator[Batch], lr: float):
    """Per-step losses of the method's SGD (its momentum and weight decay; ``lr`` as its
    schedule starts) from the current state, restored afterwards so that every path starts
    from the same prompts; each step reseeds the RNG, so noise draws of equal shapes agree."""
    params = [p for p in model.parameters() if p.requires_grad]
    initial = [p.detach().clone() for p in params]
    optimizer = torch.optim.SGD(
        params, lr=lr, momentum=model.momentum, weight_decay=model.weight_decay
    )
    losses = []
    for step, batch in enumerate(batches):
        torch.manual_seed(step)
        value = loss(batch)
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
        losses.append(value.item())
    with torch.no_grad():
        for p, p0 in zip(params, initial, strict=True):
            p.copy_(p0)
    return np.array(losses)


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float((np.abs(a - b) / np.abs(b)).max())


def _taidpt_loss(model: TaIDPT) -> Callable[[Batch], torch.Tensor]:
    def loss(batch: Batch) -> torch.Tensor:
        s_global, s_local = model.branch_scores(
            batch["eot"], batch["tokens"], batch["mask"], model.text_spatial_scale
        )
        target = batch["target"]
        return ranking_loss(s_global, target, model.margin) + ranking_loss(
            s_local, target, model.margin
        )

    return loss


def test_taidpt_losses_from_the_ragged_cache_match_reencoding_and_the_old_layout(tmp_path):
    torch.manual_seed(0)
    data = World(seed=0, num_captions=256, num_test=8, num_val=8, cache_dir=str(tmp_path))
    model = TaIDPT(class_names=data.class_names)  # world micro-CLIP: text 96 < embedding 128
    data.attach(model)
    corpus, backbone = data.training_corpus(), model.backbone
    plan = _batches(corpus, 64)[:8]
    loss, lr = _taidpt_loss(model), model.lr
    reference = _train(model, loss, _encoded(backbone, corpus, plan), lr)
    old = _train(model, loss, _encoded(backbone, corpus, plan, old_layout=True), lr)
    store = FeatureStore(tmp_path / "c")
    for storage in ("pre_projection", "projected"):
        cache = text_features(store, backbone, corpus, storage=storage)  # fp16, the default
        ragged = _train(model, loss, _ragged(cache, plan), lr)
        assert _rel(ragged, reference) <= FP16_LOSS_RTOL, (storage, ragged, reference)
        if storage == "projected":  # same fp16 values as the old cache: only padding differs
            np.testing.assert_allclose(ragged, old, rtol=1e-6)
        exact = text_features(store, backbone, corpus, dtype="float32", storage=storage)
        np.testing.assert_allclose(_train(model, loss, _ragged(exact, plan), lr), reference, 1e-5)
    assert _rel(old, reference) <= FP16_LOSS_RTOL


def test_pvp_losses_from_the_ragged_cache_match_reencoding_and_the_old_layout(tmp_path):
    model, data = testing.build_from_cli(
        "pvp", method_args=[*PVP_ARGS, "--method.stage", "pretrain"]
    )
    data.attach(model)
    corpus, backbone = data.training_corpus(), model.backbone
    plan = _batches(corpus, 64)[:4]

    def loss(batch: Batch) -> torch.Tensor:
        return model.losses(batch)[0]

    lr = model.pretrain_lr
    cache = text_features(FeatureStore(tmp_path), backbone, corpus)
    assert cache.key["storage"] == "pre_projection"
    # With the noise on: the noise tensor is [B, L, D], so equal draws need an equal width L:
    # re-encoding cut to each batch's longest text, as the ragged batches are.
    noisy = _train(model, loss, _ragged(cache, plan), lr)
    assert _rel(noisy, _train(model, loss, _encoded(backbone, corpus, plan), lr)) <= FP16_LOSS_RTOL
    # Without noise, against the old layout (padded to the corpus's longest text).
    model.noise_std = 0.0
    ragged = _train(model, loss, _ragged(cache, plan), lr)
    old = _train(model, loss, _encoded(backbone, corpus, plan, old_layout=True), lr)
    reference = _train(model, loss, _encoded(backbone, corpus, plan), lr)
    assert _rel(ragged, old) <= FP16_LOSS_RTOL and _rel(ragged, reference) <= FP16_LOSS_RTOL
    assert reference[-1] < reference[0], "the steps train"


# ---- keys, layout versions and sizes -----------------------------------------------------------
def test_a_layout_change_rebuilds_the_cache_instead_of_misreading_it(tmp_path, monkeypatch):
    backbone = CLIPBackbone("world", "bundled")
    corpus = TextCorpus(["a red star.", "two blue moons and a key"], np.eye(2, 3, dtype=np.int8))
    store = FeatureStore(tmp_path)
    cache = text_features(store, backbone, corpus)
    assert cache.fresh and cache.key["layout"] == text_module.TEXT_LAYOUT
    assert not text_features(store, backbone, corpus).fresh  # reopened
    # The old padded layout had no "layout" in its key: its folder is never this one.
    old_key = {k: v for k, v in cache.key.items() if k not in ("layout", "storage")}
    assert store.path_for(old_key) != cache.path
    # A folder under this key that holds the padded arrays is stale: rebuilt, not read.
    n = len(corpus)
    for name in ("offset", "token_feats", "projection"):
        (cache.path / f"{name}.npy").unlink()
    padded = {"tokens": ((n, 8, 128), "float16"), "length": ((n,), "int16")}
    for name, (shape, dtype) in padded.items():
        np.save(cache.path / f"{name}.npy", np.zeros(shape, dtype))
    meta = json.loads((cache.path / "meta.json").read_text())
    meta["arrays"] = {"target": meta["arrays"]["target"]} | {
        name: {"shape": list(shape), "dtype": dtype} for name, (shape, dtype) in padded.items()
    }
    (cache.path / "meta.json").write_text(json.dumps(meta))
    again = text_features(store, backbone, corpus)
    assert again.fresh and again.path == cache.path and "token_feats" in again
    # A new layout version is a new key, hence a new cache.
    monkeypatch.setattr(text_module, "TEXT_LAYOUT", "ragged-next")
    newer = text_features(store, backbone, corpus)
    assert newer.fresh and newer.path != cache.path


def test_the_free_space_check_sees_the_ragged_size(tmp_path, monkeypatch, tiny_rn):
    texts = ["cat", " ".join(["cat"] * 73), "a blue moon"]
    corpus = TextCorpus(texts, np.eye(3, 2, dtype=np.int8))
    asked: list[int] = []
    monkeypatch.setattr(store_module, "check_free_space", lambda root, n, what: asked.append(n))
    text_features(FeatureStore(tmp_path), tiny_rn, corpus, storage="projected")
    tokens = (3 + 75 + 5) * 64 * 2  # T valid tokens x D, fp16
    padded = 3 * 75 * 64 * 2 + 3 * 64 * 2  # the old [N, L, D] tokens + eot [N, D]
    arrays = asked[0] - 3 * 4096 - (64 << 10)  # less the .npy headers and the metadata
    assert len(asked) == 1 and arrays == tokens + 4 * 8 + 3 * 2  # + offsets and targets
    assert arrays < padded / 2


# ---- reads are memory-mapped slices ------------------------------------------------------------
def _synthetic_cache(root, n: int, width: int = 8):
    """A pre-projection cache of ``n`` texts of 5..24 tokens, written without an encoder."""
    lengths = 5 + np.arange(n) % 20
    offset = np.concatenate([[0], np.cumsum(lengths)])

    def specs() -> dict[str, ArraySpec]:
        return {
            "target": ArraySpec((n, 3), "int8"),
            "offset": ArraySpec((n + 1,), "int64"),
            "token_feats": ArraySpec((int(offset[-1]), width), "float16"),
            "projection": ArraySpec((width, 16), "float32"),
        }

    def fill(arrays) -> None:
        arrays["offset"][:] = offset
        arrays["token_feats"][:] = 1.0
        arrays["projection"][:] = np.eye(width, 16)

    key = {"kind": "text", "n": n, "parts": ["eot", "tokens"], "storage": "pre_projection"}
    return FeatureStore(root).get_or_build(key, specs, fill)


def test_reading_a_batch_costs_the_same_for_a_small_and_a_large_corpus(tmp_path):
    peaks = []
    for n in (1_000, 200_000):  # 300 KiB and 58 MiB of token features
        dataset = TextFeatureDataset(_synthetic_cache(tmp_path, n))
        rows = [0, n // 2, n - 1, 7]
        dataset.read_batch(rows)  # warm-up (lazy imports, allocator)
        tracemalloc.start()
        items = dataset.__getitems__(rows)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        assert items[2]["index"] == n - 1 and items[2]["tokens"].shape == (24, 16)
    assert max(peaks) < 256 << 10, peaks  # a few batches' worth, not the corpus
    assert peaks[1] < 2 * peaks[0] + (16 << 10), peaks
