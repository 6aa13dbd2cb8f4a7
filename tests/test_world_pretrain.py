"""Pre-training of the world micro-CLIPs: the recipe runs end to end and its dense term is right."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from mlr_bench.errors import MLRBenchError
from mlr_bench.world.pretrain import (
    PretrainConfig,
    _random_windows,
    _window_distillation,
    pretrain,
)

TINY = dict(pool_images=12, captions_per_image=2, steps=3, batch_size=6, warmup_steps=1, threads=1)


class _ConstantTeacher(torch.nn.Module):
    """Embeds every image as the same unit vector and remembers what it was shown."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.seen: list[torch.Tensor] = []

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        self.seen.append(images.clone())
        return F.normalize(torch.ones(len(images), self.dim), dim=-1)


def test_vit_pretraining_with_the_dense_term_runs_and_records_its_recipe(tmp_path):
    cfg = PretrainConfig(model="world-vit", self_distill_weight=1.0, lock_text=True, **TINY)
    weights = pretrain(cfg, tmp_path)
    recipe = json.loads((tmp_path / "world-vit_recipe.json").read_text())
    assert weights.is_file() and not (tmp_path / "pretrain_state.pt").exists()
    assert recipe["config"]["self_distill_weight"] == 1.0
    assert recipe["config"]["self_distill_view"] == "mask"
    assert torch.isfinite(torch.tensor(recipe["final_loss"]))


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(model="world", self_distill_weight=1.0), "needs a ViT"),
        (dict(model="world-vit", self_distill_view="blur"), "'mask' or 'resize'"),
    ],
)
def test_bad_dense_settings_are_refused_before_training(tmp_path, change, message):
    with pytest.raises(MLRBenchError, match=message):
        pretrain(PretrainConfig(**{**TINY, **change}), tmp_path)


def test_windows_stay_in_the_grid_and_repeat_per_step():
    cfg = PretrainConfig(self_distill_max_cells=4)
    for step in range(20):
        windows = _random_windows((8, 6), 32, cfg, step)
        top, left, h, w = windows.T
        assert (h >= 1).all() and (h <= 4).all() and (w >= 1).all() and (w <= 4).all()
        assert (top + h <= 8).all() and (left + w <= 6).all()
        assert torch.equal(windows, _random_windows((8, 6), 32, cfg, step))
    assert not torch.equal(_random_windows((8, 6), 32, cfg, 0), _random_windows((8, 6), 32, cfg, 1))


@pytest.mark.parametrize("view", ["mask", "resize"])
def test_window_distillation_pools_the_window_and_shows_the_teacher_only_the_window(view):
    grid, cell, dim = (4, 4), 3, 5
    pixels = torch.randn(2, 3, 12, 12)
    windows = torch.tensor([[1, 2, 2, 1], [0, 0, 4, 4]])  # (top, left, height, width) in cells
    teacher = _ConstantTeacher(dim)
    tokens = torch.randn(2, 16, dim)
    # the tokens inside image 0's window point the teacher's way; the rest point elsewhere
    inside = torch.zeros(4, 4, dtype=torch.bool)
    inside[1:3, 2] = True
    tokens[0, inside.flatten()] = torch.ones(dim)
    tokens[1] = torch.ones(dim)
    tokens[0, ~inside.flatten()] = -torch.ones(dim)
    loss = _window_distillation(teacher, pixels, tokens, grid, windows, view)
    torch.testing.assert_close(loss, torch.tensor(0.0), atol=1e-6, rtol=0)
    seen = teacher.seen[0]
    assert seen.shape == pixels.shape
    window = pixels[0, :, 1 * cell : 3 * cell, 2 * cell : 3 * cell]
    if view == "mask":
        torch.testing.assert_close(seen[0, :, 3:9, 6:9], window)
        outside = torch.ones(12, 12, dtype=torch.bool)
        outside[3:9, 6:9] = False
        assert (seen[0][:, outside] == 0).all()
    else:
        expected = F.interpolate(window[None], size=(12, 12), mode="bilinear")[0]
        torch.testing.assert_close(seen[0], expected)
    torch.testing.assert_close(seen[1], pixels[1])  # the whole image is its own window


def test_a_killed_run_resumes_to_the_same_weights(tmp_path, monkeypatch):
    """Windows are drawn per step, batches replayed: resuming changes nothing."""
    from safetensors.torch import load_file

    import mlr_bench.world.pretrain as module

    cfg = PretrainConfig(
        model="world-vit", self_distill_weight=1.0, lock_text=True, save_every=2, lr=0.05,
        **{**TINY, "steps": 4},
    )  # fmt: skip
    straight = load_file(pretrain(cfg, tmp_path / "straight"))

    lr_at = module._lr_at

    def killed_at_step_2(step, config):
        if step == 2:
            raise KeyboardInterrupt
        return lr_at(step, config)

    monkeypatch.setattr(module, "_lr_at", killed_at_step_2)
    with pytest.raises(KeyboardInterrupt):
        pretrain(cfg, tmp_path / "resumed")
    assert (tmp_path / "resumed" / "pretrain_state.pt").is_file()
    monkeypatch.setattr(module, "_lr_at", lr_at)
    resumed = load_file(pretrain(cfg, tmp_path / "resumed"))
    for name, tensor in straight.items():
        torch.testing.assert_close(resumed[name], tensor, rtol=0, atol=1e-3)
    assert (tmp_path / "straight" / "world-vit_recipe.json").is_file()
