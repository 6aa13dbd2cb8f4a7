"""Any input resolution on every backbone and every method (issue 13 item 1): CLIP's positional
embedding is resized bicubically to the input's grid, the native size stays bit-identical."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from method_args import FAST_ARGS
from mlr_bench.cli import run_cli
from mlr_bench.clip import CLIPBackbone
from mlr_bench.clip.backbone import resize_positional_embedding
from mlr_bench.datamodule import InvalidArgumentError
from mlr_bench.features.image import image_feature_key
from mlr_bench.methods.comc import CoMC
from mlr_bench.methods.pvp import PVP
from mlr_bench.methods.t2ipal import T2IPAL
from mlr_bench.methods.taidpt import TaIDPT
from mlr_bench.methods.zeroshot import ZeroShotCLIP
from mlr_bench.testing import QUIET, world_args
from mlr_bench.transforms import clip_eval_transform

TINY = ("mlr-tiny-rn", "mlr-tiny-vit")
CLASSES = ["dog", "cat", "house"]
METHODS = {"zeroshot": ZeroShotCLIP, "taidpt": TaIDPT, "comc": CoMC, "pvp": PVP, "t2ipal": T2IPAL}


@pytest.fixture(scope="module", params=TINY)
def backbone(request: pytest.FixtureRequest) -> CLIPBackbone:
    return CLIPBackbone(request.param, None)


def _images(size: int, n: int = 2, width: int | None = None) -> torch.Tensor:
    return torch.randn(n, 3, size, width or size, generator=torch.Generator().manual_seed(0))


def _stride(backbone: CLIPBackbone) -> int:
    return 32 if backbone.family == "resnet" else int(backbone.clip.visual.patch_size[0])


def _positional_embedding(backbone: CLIPBackbone) -> torch.Tensor:
    visual = backbone.clip.visual
    pool = visual.attnpool if backbone.family == "resnet" else visual
    return pool.positional_embedding


# ---- (a) the backbone ----------------------------------------------------------------------
def test_native_size_is_bit_identical_to_open_clip(backbone):
    x = _images(backbone.image_size)
    with torch.no_grad():
        reference = backbone.clip.encode_image(x)
        reference = F.normalize(reference[0] if isinstance(reference, tuple) else reference, dim=-1)
        feats = backbone.encode_image_dense(x)
        assert torch.equal(backbone.encode_image(x), reference)
    assert torch.equal(feats.global_, reference)
    side = backbone.image_size // _stride(backbone)
    assert feats.grid == (side, side)
    pos = _positional_embedding(backbone)
    assert resize_positional_embedding(pos, (side, side)) is pos


@pytest.mark.parametrize("shape", [(2, 2), (1, 2)], ids=["2x", "2x-wide"])
def test_larger_inputs_give_the_implied_grid(backbone, shape):
    native, stride = backbone.image_size, _stride(backbone)
    x = _images(shape[0] * native, width=shape[1] * native)
    with torch.no_grad():
        feats = backbone.encode_image_dense(x)
        pooled = backbone.encode_image(x)
    h, w = shape[0] * native // stride, shape[1] * native // stride
    assert feats.grid == (h, w) and feats.dense.shape == (2, h * w, backbone.embed_dim)
    assert torch.equal(pooled, feats.global_)
    for t in (pooled, feats.global_, feats.dense, feats.global_other):
        assert torch.isfinite(t).all()
    assert torch.allclose(feats.dense.norm(dim=-1), torch.ones(2, h * w), atol=1e-5)


def test_resize_keeps_the_first_token_and_is_bicubic():
    pos = torch.randn(1 + 4 * 4, 6, dtype=torch.bfloat16)
    out = resize_positional_embedding(pos, (8, 6))
    assert out.shape == (1 + 8 * 6, 6) and out.dtype == torch.bfloat16
    assert torch.equal(out[0], pos[0])
    grid = pos[1:].float().reshape(1, 4, 4, 6).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(8, 6), mode="bicubic", align_corners=False)
    expected = expected.permute(0, 2, 3, 1).reshape(48, 6).to(torch.bfloat16)
    assert torch.equal(out[1:], expected)


def test_half_precision_models_run_at_other_sizes():
    rn = CLIPBackbone("mlr-tiny-rn", None)
    rn.clip.bfloat16()
    with torch.no_grad():
        feats = rn.encode_image_dense(_images(2 * rn.image_size))
    assert feats.grid == (4, 4) and torch.isfinite(feats.global_).all()
    assert rn.clip.visual.attnpool.positional_embedding.shape[0] == 1 + 2 * 2  # not mutated


def test_feature_cache_key_changes_with_image_size(backbone):
    keys = [
        image_feature_key(backbone, clip_eval_transform(size), {"set": "x"}, "float16")
        for size in (backbone.image_size, 2 * backbone.image_size)
    ]
    assert keys[0] != keys[1]


def test_check_image_size_on_a_vit():
    from mlr_bench.datamodules.world import World

    method = ZeroShotCLIP(class_names=CLASSES, backbone="mlr-tiny-vit", pretrained="none")
    World(image_size=72).check_image_size(method)  # 9 patches of 8
    with pytest.raises(InvalidArgumentError, match=r"70: .*ViT, patch 8.*\(\.\.\., 64, 72, "):
        World(image_size=70).check_image_size(method)


# ---- (b) every method scores images at twice the native size ---------------------------------
@pytest.mark.parametrize("name", sorted(METHODS))
@pytest.mark.parametrize("model", TINY)
def test_every_method_scores_twice_native_images(name, model):
    method = METHODS[name](class_names=CLASSES, backbone=model, pretrained="none").eval()
    size = 2 * method.backbone.image_size
    batch = {"image": _images(size, n=3), "target": torch.zeros(3, 3), "index": torch.arange(3)}
    with torch.no_grad():
        scores = method.score(batch)
    assert scores.shape == (3, len(CLASSES)) and torch.isfinite(scores).all()


# ---- (c) the world at twice its native 96 px -------------------------------------------------
WORLD_2X = [
    *world_args(num_test=16, num_val=8, num_captions=64, num_sentences=64, num_generated=16),
    *["--data.batch_size", "16", "--data.image_size", "192"],
    *QUIET,
]
ONE_STEP = [
    *["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1"],
    *["--trainer.log_every_n_steps", "1"],
]


def _dense_locations_at(size: int) -> set[int]:
    """Locations per image of the cached dense features preprocessed at ``size`` px."""
    found = set()
    for meta in Path(os.environ["MLR_BENCH_CACHE"]).glob("image-*/meta.json"):
        info = json.loads(meta.read_text())
        if f"Resize(size={size}," in info["key"]["preprocess"]:
            found.add(info["arrays"]["dense"]["shape"][1])
    return found


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_tests_the_world_at_twice_native(name, tmp_path):
    extra = FAST_ARGS.get(name, [])
    if name == "pvp":
        extra = [*extra, "--method.pretrain_epochs", "1"]
    command = ["test"] if name == "zeroshot" else ["train", *ONE_STEP]
    root = tmp_path / name
    run_cli(
        [*command, "--method", name, *extra, *WORLD_2X, "--trainer.default_root_dir", f"{root}"]
    )
    results = json.loads(next(root.rglob("results_test.json")).read_text())
    assert math.isfinite(results["metrics"]["mAP"])
    assert _dense_locations_at(192) == {6 * 6}  # the world micro-CLIP: stride 32
