"""TagCLIP: the ViT attention pass, the reference's box and crop rules, and batch invariance.

Its agreement with the reference code on identical weights is measured outside the repository
(docs/methods/tagclip.md); these tests pin the behaviour that comparison established.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mlr_bench.clip import CLIPBackbone
from mlr_bench.clip.backbone import BackboneLoadError
from mlr_bench.clip.vit_attention import vit_pass
from mlr_bench.datamodules.world import World
from mlr_bench.methods._tagclip_lists import VOC_BACKGROUND, VOC_NAMES
from mlr_bench.methods.tagclip import PatchScores, RoundUpResize, TagCLIP
from mlr_bench.world import CLASS_NAMES

TINY = {"backbone": "mlr-tiny-vit", "pretrained": None}


def make(**kwargs) -> TagCLIP:
    return TagCLIP(class_names=list(CLASS_NAMES), **{**TINY, **kwargs}).eval()


def world_images(n: int, transform) -> list[torch.Tensor]:
    data = World(num_test=n).split("test")
    return [transform(Image.fromarray(image)) for image in data.images]


def test_vit_pass_equals_open_clip_and_exposes_attention():
    backbone = CLIPBackbone("mlr-tiny-vit", None)
    images = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    out = vit_pass(backbone.clip.visual, images)
    pooled, _ = backbone.clip.visual(images)  # open_clip (tokens on, see CLIPBackbone)
    torch.testing.assert_close(out.tokens[:, 0], pooled)
    layers = len(backbone.clip.visual.transformer.resblocks)
    assert out.grid == (8, 8) and out.attention.shape == (layers, 3, 65, 65)
    torch.testing.assert_close(out.attention.sum(-1), torch.ones(layers, 3, 65))
    self_only = vit_pass(backbone.clip.visual, images, self_only_layers=(layers - 1,))
    # the last layer attends to itself only, but its reported attention is the plain one
    torch.testing.assert_close(self_only.attention, out.attention)
    assert not torch.allclose(self_only.tokens, out.tokens)


def test_scores_do_not_depend_on_batch_composition():
    method = make()
    images = world_images(6, method.eval_transform())
    target = torch.zeros(6, len(CLASS_NAMES))
    together = method.score({"image": images, "target": target, "index": torch.arange(6)})
    alone = torch.cat([method.score({"image": [im], "target": target[:1]}) for im in images])
    order = [4, 1, 5, 0, 3, 2]
    shuffled = method.score({"image": [images[i] for i in order], "target": target})
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(together[order], shuffled, rtol=1e-5, atol=1e-6)


def test_native_size_images_of_different_sizes_share_one_batch():
    method = make()
    transform = method.eval_transform()
    base = World(num_test=2).split("test").images
    images = [
        transform(Image.fromarray(base[0]).resize((70, 50))),
        transform(Image.fromarray(base[1])),
    ]
    assert [tuple(t.shape[1:]) for t in images] == [(56, 72), (96, 96)]
    batch = method.eval_collate()([{"image": t, "target": torch.zeros(3), "index": i}
                                   for i, t in enumerate(images)])  # fmt: skip
    assert isinstance(batch["image"], list) and batch["index"].tolist() == [0, 1]
    scores = method.score({"image": batch["image"], "target": torch.zeros(2, len(CLASS_NAMES))})
    alone = method.score({"image": [images[0]], "target": torch.zeros(1, len(CLASS_NAMES))})
    torch.testing.assert_close(scores[:1], alone, rtol=1e-5, atol=1e-6)


def test_round_up_resize_keeps_each_image_near_its_own_size():
    assert RoundUpResize(16)(Image.new("RGB", (500, 375))).size == (512, 384)
    assert RoundUpResize(12)(Image.new("RGB", (96, 96))).size == (96, 96)


@pytest.mark.parametrize("reference_clipping, expect_zero", [(True, True), (False, False)])
def test_box_refinement_follows_the_reference_border_rule(reference_clipping, expect_zero):
    """A region in the last column: the reference's boxes never reach it (its clipping)."""
    method = make(reference_box_clipping=reference_clipping)
    h, w = 3, 4
    region = torch.zeros(h, w)
    region[0, 3] = region[1, 3] = 1.0
    refined = torch.stack([region.flatten(), torch.full((h * w,), 0.5)], dim=1)
    coarse = torch.rand(h * w, 2, generator=torch.Generator().manual_seed(1))
    out = method.box_refine(coarse, refined, torch.eye(h * w), (h, w))
    inside = region.flatten().bool()
    if expect_zero:
        assert torch.all(out[:, 0] == 0)
    else:
        torch.testing.assert_close(out[inside, 0], coarse[inside, 0])
        assert torch.all(out[~inside, 0] == 0)


@pytest.mark.parametrize("stop, expected", [(True, []), (False, [1])])
def test_crop_candidates_stop_at_the_first_empty_box_like_the_reference(stop, expected):
    method = TagCLIP(class_names=["a", "b"], **TINY, background=[], stop_at_degenerate_box=stop)
    first, second = torch.zeros(3, 3), torch.zeros(3, 3)
    first[2, 2] = 1.0  # only the last row and column: empty after the border rule
    second[0, 0] = second[1, 1] = 1.0
    refined = torch.stack([first.flatten(), second.flatten()], dim=1)
    scores = PatchScores(refined, refined, refined, (3, 3))
    boxes = method.crop_boxes(scores, method.local_scores(scores))
    assert [c for c, _, _ in boxes] == expected
    if boxes:
        assert boxes[0][1] == (0, 2, 0, 2)


def test_crop_reidentification_moves_only_candidate_classes():
    local_only = make(crop_weight=0.0)
    fused = make()
    images = world_images(4, fused.eval_transform())
    batch = {"image": images, "target": torch.zeros(4, len(CLASS_NAMES))}
    text = fused.text_embeddings()
    local = torch.stack(
        [fused.local_scores(fused.patch_scores(im[None], text)[0]) for im in images]
    )
    torch.testing.assert_close(local_only.score(batch), local)
    changed = fused.score(batch) != local
    assert changed.any() and not changed.all()


def test_background_words_follow_the_dataset():
    assert TagCLIP(class_names=VOC_NAMES, **TINY).background_words() == VOC_BACKGROUND
    assert make().background_words() == []
    assert TagCLIP(class_names=VOC_NAMES, **TINY, background=["sky"]).background_words() == ["sky"]


def test_a_resnet_backbone_is_refused_with_what_to_use():
    with pytest.raises(BackboneLoadError, match=r"needs a ViT.*world-vit"):
        TagCLIP(class_names=["a"], backbone="mlr-tiny-rn", pretrained=None)


def test_bad_sizes_name_the_patch_size():
    with pytest.raises(
        ValueError, match="input_size must be a positive multiple of the patch size 8"
    ):
        make(input_size=60)
    np.testing.assert_equal(make(input_size=64).eval_collate(), None)


def test_layer_defaults_are_the_reference_ones_on_a_12_layer_vit():
    """ViT-B/16's geometry (12 layers, 16-px patches, 224 px): layers 8-10 refine, 4 votes."""
    method = TagCLIP(class_names=VOC_NAMES, backbone="mlr-tiny-vit16", pretrained=None)
    assert method.refine_layers == (8, 11) and method.vote_min_layers == 4
    assert method.patch == 16 and method.crop_size == 224


def test_stage_by_stage_script_prints_every_stage(tmp_path):
    """benchmarks/tagclip_world.py runs end to end (random tiny ViT: the figures mean
    nothing, the stages and timings must all be there)."""
    import json
    from pathlib import Path

    from bench_fixtures import run_benchmark_script

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "tagclip_world.py"
    out = tmp_path / "figures.json"
    done = run_benchmark_script(
        script, "--backbone", "mlr-tiny-vit", "--pretrained", "none", "--test-images", "12",
        "--batch", "5", "--json", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads(out.read_text())
    for key in ("step1_coarse_max_mAP", "step2_propagated_max_mAP", "step4_local_mAP"):
        assert 0 <= figures[key] <= 100
    assert figures["test_images"] == 12 and figures["crops_per_image"] >= 0
    assert figures["tagclip_tokens_inside_minus_outside"]["pairs"] > 0
