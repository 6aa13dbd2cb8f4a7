"""T2I-PAL: the reconstructed maths, its ablation switches, the generated-image data path
(world generation → feature cache → combined loader) and training that actually helps."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import CombinedLoader

from mlr_bench import testing
from mlr_bench.batch import GENERATED_IMAGES, TEXT
from mlr_bench.cli import run_cli
from mlr_bench.clip.prompts import hand_prompt_embeddings, spatial_softmax_pool
from mlr_bench.datamodules.voc2007 import VOC2007
from mlr_bench.datamodules.world import World
from mlr_bench.generated_data import GeneratedDataError, manifest_targets
from mlr_bench.methods.t2ipal import T2IPAL
from mlr_bench.methods.taidpt import TaIDPT
from mlr_bench.testing import QUIET, world_args
from mlr_bench.world import CLASS_NAMES

#: A small world whose generated-image set builds in seconds.
SMALL_WORLD = [*testing.SMALL_WORLD, "--data.num_generated", "64"]


def _features(n: int = 3, locations: int = 9, dim: int = 128, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    v = F.normalize(torch.randn(n, dim, generator=g), dim=-1)
    dense = F.normalize(torch.randn(n, locations, dim, generator=g), dim=-1)
    return {"global_no_pos": v, "global": -v, "dense": dense}


def _small_world(**kwargs) -> World:
    args = {"num_test": 24, "num_val": 12, "num_captions": 200, "num_generated": 40}
    return World(**{**args, "batch_size": 16, **kwargs})


def test_heatmap_rows_sum_to_one_and_local_score_follows_the_definition():
    torch.manual_seed(0)
    model = T2IPAL(class_names=CLASS_NAMES, num_prototypes=3, merge_rate=0.3)
    batch = _features()
    with torch.no_grad():
        heat = model.heatmap(batch["dense"])
        t_global, t_local = model.class_prompts()
        s_global, s_local = model.image_scores(batch["global_no_pos"], batch["dense"])
        got = model.score_features(batch)
    assert heat.shape == (3, len(CLASS_NAMES), 9)
    torch.testing.assert_close(heat.sum(-1), torch.ones(3, len(CLASS_NAMES)))
    want_heat = torch.softmax(40 * batch["dense"] @ t_local.T, dim=1).transpose(1, 2)
    torch.testing.assert_close(heat, want_heat)
    protos = F.normalize(model.prototypes.detach(), dim=-1)
    sim = torch.einsum("bjd,ckd->bjck", batch["dense"], protos).amax(-1).transpose(1, 2)
    torch.testing.assert_close(s_local, 4 * (heat * sim).sum(-1))
    # untrained adapter (zero output layer) leaves the global feature as it is
    torch.testing.assert_close(s_global, 4 * batch["global_no_pos"] @ t_global.T)
    torch.testing.assert_close(got, 0.7 * s_global + 0.3 * s_local)


def test_prototypes_start_from_the_local_class_text_embeddings():
    torch.manual_seed(0)
    one = T2IPAL(class_names=CLASS_NAMES)
    with torch.no_grad():
        t_local = one.class_prompts()[1]
    assert one.prototypes.shape == (len(CLASS_NAMES), 1, t_local.shape[1])
    torch.testing.assert_close(one.prototypes[:, 0].detach(), t_local)
    torch.manual_seed(0)
    three = T2IPAL(class_names=CLASS_NAMES, num_prototypes=3, prototype_noise=0.01)
    p = three.prototypes.detach()
    assert not torch.equal(p[:, 0], p[:, 1]), "K > 1 copies must be made different"
    assert (F.cosine_similarity(p, t_local.unsqueeze(1), dim=-1) > 0.9).all()
    hand = T2IPAL(class_names=CLASS_NAMES, prototype_init="hand_prompt")
    want = hand_prompt_embeddings(hand.backbone, CLASS_NAMES, "single")
    torch.testing.assert_close(hand.prototypes[:, 0].detach(), want)


def test_ablation_switches_change_the_model_as_documented():
    batch = _features()
    torch.manual_seed(0)
    full = T2IPAL(class_names=CLASS_NAMES, alpha=0.5)
    torch.manual_seed(0)
    no_adapter = T2IPAL(class_names=CLASS_NAMES, adapter=False)
    torch.manual_seed(0)
    alpha_zero = T2IPAL(class_names=CLASS_NAMES, alpha=0.0)
    with torch.no_grad():
        full.adapter.up.weight.normal_()  # a trained-looking adapter
        base = no_adapter.score_features(batch)
        assert alpha_zero.adapter is None
        torch.testing.assert_close(alpha_zero.score_features(batch), base)
        assert not torch.allclose(full.score_features(batch), base)
        f = batch["global_no_pos"]
        mixed = F.normalize(0.5 * full.adapter.up(F.relu(full.adapter.down(f))) + 0.5 * f, dim=-1)
        torch.testing.assert_close(full.adapter(f), mixed)
    # no heatmap + prototypes: TaI-DPT's local branch
    torch.manual_seed(0)
    plain = T2IPAL(class_names=CLASS_NAMES, local_head="prompt")
    assert plain.prototypes is None
    with torch.no_grad():
        t_local = plain.class_prompts()[1]
        _, s_local = plain.image_scores(batch["global_no_pos"], batch["dense"])
    torch.testing.assert_close(s_local, 4 * spatial_softmax_pool(batch["dense"] @ t_local.T, 40))
    # the training data each setting asks for; captions only trains no head parameter
    assert T2IPAL(class_names=CLASS_NAMES).requires == {TEXT, GENERATED_IMAGES}
    assert T2IPAL(class_names=CLASS_NAMES, train_on="images").requires == {GENERATED_IMAGES}
    captions = T2IPAL(class_names=CLASS_NAMES, train_on="captions", captions_through_head=False)
    assert captions.requires == {TEXT}
    trainable = {n for n, p in captions.named_parameters() if p.requires_grad}
    assert trainable == {"ctx_global", "ctx_local"}
    whole = T2IPAL(class_names=CLASS_NAMES, train_on="captions", captions_through_head=True)
    assert {n for n, p in whole.named_parameters() if p.requires_grad} > trainable


def test_captions_through_the_head_mask_padding_tokens():
    torch.manual_seed(0)
    model = T2IPAL(class_names=CLASS_NAMES, captions_through_head=True)
    text = _features(locations=12)
    mask = torch.ones(3, 12, dtype=torch.bool)
    mask[:, 7:] = False
    with torch.no_grad():
        heat = model.heatmap(text["dense"], mask=mask, spatial_scale=50.0)
        scores = model.image_scores(text["global"], text["dense"], None, mask, 50.0)
        changed = text["dense"].clone()
        changed[:, 7:] = -changed[:, 7:]  # padding must not matter
        again = model.image_scores(text["global"], changed, None, mask, 50.0)
    torch.testing.assert_close(heat.sum(-1), torch.ones(3, len(CLASS_NAMES)))
    assert (heat[..., 7:] == 0).all()
    for a, b in zip(scores, again, strict=True):
        torch.testing.assert_close(a, b)


def test_caption_branch_is_taidpt():
    torch.manual_seed(0)
    ours = T2IPAL(class_names=CLASS_NAMES)
    torch.manual_seed(0)
    taidpt = TaIDPT(class_names=CLASS_NAMES)
    text = _features(locations=12)
    eot, tokens = text["global"], text["dense"]
    mask = torch.ones(tokens.shape[:2], dtype=torch.bool)
    mask[:, 8:] = False  # padding
    with torch.no_grad():
        ours_scores = ours.branch_scores(eot, tokens, mask, 50.0)
        taidpt_scores = taidpt.branch_scores(eot, tokens, mask, 50.0)
    for a, b in zip(ours_scores, taidpt_scores, strict=True):
        torch.testing.assert_close(a, b)


def test_generated_image_features_come_from_the_cache(tmp_path):
    dm = _small_world(cache_dir=str(tmp_path))
    model = T2IPAL(class_names=CLASS_NAMES)
    dm.attach(model)
    cache = dm.generated_cache()
    assert len(cache) == 40 and cache["dense"].shape[1:] == (9, model.backbone.embed_dim)
    labelled = dm.caption_corpus.labels[dm.caption_corpus.labels.sum(1) > 0][:40]
    np.testing.assert_array_equal(np.asarray(cache["target"]), labelled)
    # a fresh datamodule (another run) opens the cache: the image encoder never runs again
    again = _small_world(cache_dir=str(tmp_path))
    again.attach(model)

    def boom(*args, **kwargs):
        raise AssertionError("the image encoder ran although the features are cached")

    model.backbone.encode_image_dense = boom
    assert again.generated_cache().path == cache.path
    loader = again.train_dataloader()
    assert isinstance(loader, CombinedLoader)
    batch, _, _ = next(iter(loader))
    assert set(batch) == {TEXT, GENERATED_IMAGES}
    assert batch[GENERATED_IMAGES]["dense"].shape[1:] == (9, model.backbone.embed_dim)
    assert {"eot", "tokens", "mask", "target"} <= set(batch[TEXT])


def test_unknown_manifest_label_is_a_clear_error(tmp_path):
    from mlr_bench.generation import GeneratedImage

    image = GeneratedImage("c1", 0, "a unicorn", ("unicorn",), 7, tmp_path / "a.png", "world")
    with pytest.raises(GeneratedDataError, match=r"'unicorn'.*not a class"):
        manifest_targets([image], CLASS_NAMES, tmp_path)


def test_missing_generated_dir_says_which_command_to_run(tmp_path):
    dm = VOC2007(root=str(tmp_path))
    dm.attach(T2IPAL(class_names=dm.class_names, train_on="images"))
    command = r"mlr-bench generate --generator diffusers .* --data voc2007"
    with pytest.raises(GeneratedDataError, match=command):
        dm.train_dataloader()
    dm = VOC2007(root=str(tmp_path), generated_dir=str(tmp_path / "nowhere"))
    dm.attach(T2IPAL(class_names=dm.class_names, train_on="images"))
    with pytest.raises(GeneratedDataError, match="nowhere: no such folder"):
        dm.generated_cache()


# Conformance (including 2-process DDP) runs in tests/test_conformance.py for every built-in.


TRAIN_WORLD = [
    *world_args(num_test=300, num_val=60, num_captions=1500, num_generated=600, batch_size=128),
    *QUIET,
]


def _test_metrics(root: Path, args: list[str]) -> dict:
    run_cli([*args, "--trainer.default_root_dir", str(root)])
    return json.loads(next(root.rglob("results_test.json")).read_text())["metrics"]


def test_training_improves_over_the_untrained_model(tmp_path):
    common = ["--method", "t2ipal", *TRAIN_WORLD]
    untrained = _test_metrics(tmp_path / "untrained", ["test", *common])
    fast = ["--method.lr", "0.002", "--method.head_lr", "0.02", "--trainer.max_epochs", "4"]
    trained = _test_metrics(tmp_path / "trained", ["train", *common, *fast])
    assert trained["mAP"] > untrained["mAP"] + 5, (untrained["mAP"], trained["mAP"])
