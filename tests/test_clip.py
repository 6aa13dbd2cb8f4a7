"""The CLIP layer on tiny random open_clip models (ResNet and ViT)."""

from __future__ import annotations

import time

import pytest
import torch

from mlr_bench.clip import BackboneLoadError, CLIPBackbone
from mlr_bench.clip.prompts import PromptEncoder, init_context

CLASSES = ["dog", "traffic light", "potted_plant"]


@pytest.fixture(scope="module", params=["mlr-tiny-rn", "mlr-tiny-vit"])
def backbone(request) -> CLIPBackbone:
    return CLIPBackbone(request.param, None)


def images(n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def test_frozen_and_in_eval_mode(backbone):
    backbone.train()
    assert not backbone.training and not backbone.clip.training
    assert not any(p.requires_grad for p in backbone.parameters())


def test_global_and_dense_image_features(backbone):
    feats = backbone.encode_image_dense(images())
    h, w = feats.grid
    assert (h, w) == ((2, 2) if backbone.family == "resnet" else (8, 8))
    assert feats.global_.shape == (2, 64)
    assert feats.dense.shape == (2, h * w, 64)
    assert torch.allclose(feats.dense.norm(dim=-1), torch.ones(2, h * w), atol=1e-5)
    # CLIP's own pooling is what encode_image returns
    assert torch.allclose(feats.global_, backbone.encode_image(images()), atol=1e-5)


def test_resnet_global_pool_without_positional_embedding():
    rn = CLIPBackbone("mlr-tiny-rn", None)
    clip_pool = rn.encode_image_dense(images(), global_pool="clip").global_
    no_pos = rn.encode_image_dense(images(), global_pool="no_pos").global_
    assert not torch.allclose(clip_pool, no_pos, atol=1e-3)
    # with the positional embedding zeroed, CLIP's pooling is exactly the no_pos variant
    saved = rn.clip.visual.attnpool.positional_embedding.data.clone()
    rn.clip.visual.attnpool.positional_embedding.data.zero_()
    try:
        zeroed = rn.encode_image_dense(images(), global_pool="clip").global_
    finally:
        rn.clip.visual.attnpool.positional_embedding.data.copy_(saved)
    assert torch.allclose(zeroed, no_pos, atol=1e-5)


def test_text_tokens_eot_and_mask(backbone):
    texts = ["a dog.", "a photo of a traffic light on a street."]
    ids = backbone.tokenize(texts)
    feats = backbone.encode_text_tokens(ids)
    assert feats.tokens.shape == (2, 77, 64)
    lengths = [len(backbone.tokenizer.encode(t)) + 2 for t in texts]  # + SOS, EOT
    assert feats.mask.sum(1).tolist() == lengths
    eot = ids.argmax(-1)
    assert torch.allclose(feats.tokens[torch.arange(2), eot], feats.eot)
    assert torch.allclose(feats.eot, backbone.encode_text(texts), atol=1e-6)


@pytest.mark.parametrize(
    ("position", "template"),
    [("end", "a photo of a {}."), ("front", "{} a photo of a."), ("middle", "a photo {} of a.")],
)
def test_prompt_path_equals_the_hand_written_prompt(backbone, position, template):
    ctx = init_context(backbone, 4, "a photo of a")
    encoder = PromptEncoder(backbone, CLASSES, n_ctx=4, position=position)
    expected = backbone.encode_text([template.format(c.replace("_", " ")) for c in CLASSES])
    assert torch.allclose(encoder(ctx), expected, atol=1e-5)
    # class-specific contexts initialised the same way give the same prompts
    csc = init_context(backbone, 4, "a photo of a", num_classes=len(CLASSES))
    assert torch.allclose(encoder(csc), expected, atol=1e-5)


def test_gradients_reach_the_context_only(backbone):
    ctx = torch.nn.Parameter(init_context(backbone, 16, generator=torch.Generator().manual_seed(0)))
    encoder = PromptEncoder(backbone, CLASSES, n_ctx=16)
    eot, tokens = encoder(ctx, return_tokens=True)
    assert eot.shape == (3, 64) and tokens.shape == (3, 77, 64)
    (eot @ backbone.encode_image(images()).T).sum().backward()
    assert ctx.grad is not None and ctx.grad.abs().sum() > 0
    assert all(p.grad is None for p in backbone.parameters())


def test_prompt_encoder_rejects_bad_shapes(backbone):
    encoder = PromptEncoder(backbone, CLASSES, n_ctx=4)
    with pytest.raises(ValueError, match=r"expected \[4, W\]"):
        encoder(torch.zeros(5, backbone.text_width))
    with pytest.raises(ValueError, match="has 4 tokens"):
        init_context(backbone, 3, "a photo of a")


def test_missing_weights_fail_fast_and_say_how_to_fix(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(BackboneLoadError, match=r"HF_HUB_OFFLINE=1.*--method\.pretrained"):
        CLIPBackbone("RN50", "openai")
    assert time.monotonic() - start < 30  # no network retries
    with pytest.raises(BackboneLoadError, match="does not exist"):
        CLIPBackbone("mlr-tiny-rn", str(tmp_path / "missing.safetensors"))


def test_local_weights_file_roundtrip(tmp_path):
    from safetensors.torch import save_file

    source = CLIPBackbone("mlr-tiny-vit", None)
    with torch.no_grad():
        source.clip.logit_scale.fill_(3.0)
    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in source.clip.state_dict().items()}, str(path))
    loaded = CLIPBackbone("mlr-tiny-vit", str(path))
    assert float(loaded.clip.logit_scale) == 3.0
    assert torch.allclose(loaded.encode_image(images()), source.encode_image(images()))


def test_openai_tags_get_the_activation_they_were_trained_with(monkeypatch):
    """OpenAI weights were trained with QuickGELU; open_clip's plain configs use GELU and only
    warn, so the backbone must force QuickGELU for such tags (and only for them)."""
    from mlr_bench.clip import backbone

    assert backbone.tag_wants_quick_gelu("RN50", "openai")
    assert backbone.tag_wants_quick_gelu("ViT-B-16", "openai")
    assert not backbone.tag_wants_quick_gelu("mlr-tiny-rn", None)
    assert not backbone.tag_wants_quick_gelu("RN50", "/weights/rn50.safetensors")
    seen = {}
    real = backbone.open_clip.create_model_and_transforms

    def spy(model, pretrained=None, **kwargs):
        seen[model] = kwargs.get("force_quick_gelu")
        return real("mlr-tiny-rn", pretrained=None)

    monkeypatch.setattr(backbone.open_clip, "create_model_and_transforms", spy)
    backbone.create_clip("RN50", "openai")
    backbone.create_clip("mlr-tiny-rn", None)
    assert seen == {"RN50": True, "mlr-tiny-rn": False}
