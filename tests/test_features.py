"""Feature caches: built once, keyed by what changes them, rebuilt when damaged, shared safely."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import numpy as np
import pytest
import torch

from mlr_bench.clip import CLIPBackbone
from mlr_bench.datamodules.world import World
from mlr_bench.features import FeatureStore, TextFeatureDataset, text_features
from mlr_bench.features.store import ArraySpec
from mlr_bench.method import FeatureMethod
from mlr_bench.methods.zeroshot import ZeroShotCLIP
from mlr_bench.text.corpus import TextCorpus

SPECS = {"x": ArraySpec((5, 3), "float32"), "y": ArraySpec((5,), "int8")}


def _filler(calls: list[int]):
    def fill(arrays):
        calls.append(1)
        arrays["x"][:] = np.arange(15, dtype=np.float32).reshape(5, 3)
        arrays["y"][:] = np.arange(5)

    return fill


def test_built_once_then_opened(tmp_path):
    store, calls = FeatureStore(tmp_path), []
    first = store.get_or_build({"kind": "t", "a": 1}, lambda: SPECS, _filler(calls))
    second = store.get_or_build({"kind": "t", "a": 1}, lambda: SPECS, _filler(calls))
    assert calls == [1]
    np.testing.assert_array_equal(first["x"], second["x"])
    assert isinstance(second["x"], np.memmap) and not second["x"].flags.writeable
    assert not list(tmp_path.glob(".*.tmp")), "no temporary directory is left behind"


def test_any_key_change_rebuilds(tmp_path):
    store, calls = FeatureStore(tmp_path), []
    store.get_or_build({"kind": "t", "a": 1, "b": [1, 2]}, lambda: SPECS, _filler(calls))
    store.get_or_build({"b": [1, 2], "a": 1, "kind": "t"}, lambda: SPECS, _filler(calls))
    assert len(calls) == 1, "key order does not matter"
    store.get_or_build({"kind": "t", "a": 1, "b": [1, 3]}, lambda: SPECS, _filler(calls))
    assert len(calls) == 2


@pytest.mark.parametrize("damage", ["truncate", "delete_meta", "bad_meta", "delete_array"])
def test_corrupt_or_partial_cache_is_rebuilt(tmp_path, damage):
    store, calls, key = FeatureStore(tmp_path), [], {"kind": "t"}
    cache = store.get_or_build(key, lambda: SPECS, _filler(calls))
    path = cache.path
    del cache
    if damage == "truncate":
        data = (path / "x.npy").read_bytes()
        (path / "x.npy").write_bytes(data[:-8])
    elif damage == "delete_meta":
        (path / "meta.json").unlink()
    elif damage == "bad_meta":
        (path / "meta.json").write_text("{not json")
    else:
        (path / "y.npy").unlink()
    rebuilt = store.get_or_build(key, lambda: SPECS, _filler(calls))
    assert calls == [1, 1]
    assert rebuilt["x"][4, 2] == 14


def test_failed_build_leaves_nothing(tmp_path):
    store = FeatureStore(tmp_path)

    def explode(arrays):
        arrays["x"][:] = 1
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        store.get_or_build({"kind": "t"}, lambda: SPECS, explode)
    assert list(tmp_path.iterdir()) == [
        tmp_path / f".{store.path_for({'kind': 't', 'code_version': 1}).name}.lock"
    ]
    assert store.open({"kind": "t", "code_version": 1}) is None


def _build_in_process(root: str, marker: str) -> None:
    def fill(arrays):
        with open(marker, "a") as f:
            f.write("built\n")
        arrays["x"][:] = 7
        arrays["y"][:] = 1

    FeatureStore(root).get_or_build({"kind": "race"}, lambda: SPECS, fill)


def test_concurrent_processes_build_once(tmp_path):
    marker = tmp_path / "builds.txt"
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=_build_in_process, args=(str(tmp_path / "c"), str(marker)))
        for _ in range(3)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
        assert p.exitcode == 0
    assert marker.read_text().count("built") == 1
    assert FeatureStore(tmp_path / "c").open({"kind": "race", "code_version": 1})["x"][0, 0] == 7


def test_text_features_match_the_encoder_and_key_on_content(tmp_path):
    backbone = CLIPBackbone("world", "bundled")
    corpus = TextCorpus(["a red star.", "two blue moons and a key"], np.eye(2, 3, dtype=np.int8))
    store = FeatureStore(tmp_path)
    cache = text_features(store, backbone, corpus, dtype="float32")
    live = backbone.encode_text_tokens(backbone.tokenize(corpus.texts))
    batch = TextFeatureDataset(cache).read_batch(range(len(corpus)))
    width = batch["tokens"].shape[1]
    assert width == int(live.mask.sum(1).max())  # tokens kept up to the longest text
    torch.testing.assert_close(batch["eot"], live.eot)
    mask = live.mask[:, :width]
    torch.testing.assert_close(batch["tokens"], live.tokens[:, :width] * mask[..., None])
    assert torch.equal(batch["mask"], mask)
    changed = TextCorpus(
        ["a red star.", "two blue moons and a key"], np.eye(2, 3, dtype=np.int8)[::-1]
    )
    assert text_features(store, backbone, changed, dtype="float32").path != cache.path


def test_image_key_follows_weights_preprocessing_and_data():
    from mlr_bench.features.image import image_feature_key
    from mlr_bench.transforms import clip_eval_transform

    bundled, random = CLIPBackbone("world", "bundled"), CLIPBackbone("world", None)
    t96, t128 = clip_eval_transform(96), clip_eval_transform(128)
    base = image_feature_key(bundled, t96, {"d": 1}, "float16")
    assert base == image_feature_key(CLIPBackbone("world", "bundled"), t96, {"d": 1}, "float16")
    for other in (
        image_feature_key(random, t96, {"d": 1}, "float16"),
        image_feature_key(bundled, t128, {"d": 1}, "float16"),
        image_feature_key(bundled, t96, {"d": 2}, "float16"),
        image_feature_key(bundled, t96, {"d": 1}, "float32"),
    ):
        assert other != base


def _evaluate(tmp_path: Path, **world_args) -> dict:
    from mlr_bench.testing import _trainer

    world = World(num_test=40, num_val=8, **world_args)
    model = ZeroShotCLIP(class_names=world.class_names)
    _trainer(tmp_path).test(model, datamodule=world, verbose=False)
    return json.loads(next(tmp_path.rglob("results_test.json")).read_text())


def test_second_evaluation_never_runs_the_image_encoder(tmp_path, monkeypatch):
    calls = []
    original = CLIPBackbone.encode_image_dense

    def counting(self, images, **kw):
        calls.append(len(images))
        return original(self, images, **kw)

    monkeypatch.setattr(CLIPBackbone, "encode_image_dense", counting)
    cache = tmp_path / "cache"
    first = _evaluate(tmp_path / "run1", cache_dir=str(cache))
    encoded = sum(calls)
    assert encoded >= 40  # the cold run encodes every test image (plus one shape probe)
    second = _evaluate(tmp_path / "run2", cache_dir=str(cache))
    assert sum(calls) == encoded, "the warm run ran the image encoder"
    assert first["metrics"] == second["metrics"]
    third = _evaluate(tmp_path / "run3", cache_dir=str(cache), seed=1)  # other images: new key
    assert sum(calls) > encoded and third["metrics"] != first["metrics"]


def test_cached_scores_match_scores_from_images():
    world = World(num_test=16, num_val=4)
    model = ZeroShotCLIP(class_names=world.class_names, dense=True)
    assert isinstance(model, FeatureMethod)
    world.attach(model)
    world.setup("test")
    cached = next(iter(world.test_dataloader()))
    images = next(
        iter(
            torch.utils.data.DataLoader(
                world.eval_dataset("test", model.backbone.preprocess), batch_size=16
            )
        )
    )
    with torch.no_grad():
        from_cache, from_images = model.score(cached), model.score(images)
    torch.testing.assert_close(from_cache, from_images, atol=0.05, rtol=0.0)  # fp16 cache
    assert (from_cache.argsort(0) == from_images.argsort(0)).float().mean() > 0.9
