"""PVP: stage 1 learns pixel prompts that move towards their class's text, the stages run from
the CLI with a cached stage-1 artifact, and the method passes the conformance checks."""

from __future__ import annotations

import inspect
import json
import math
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, Subset

from method_args import PVP_ARGS
from mlr_bench import testing
from mlr_bench.cli import MLRTrainer, run_cli
from mlr_bench.clip.prompts import hand_prompt_embeddings
from mlr_bench.methods.pvp import ARTIFACT_NAME, PVPArtifactError, load_prompts

QUIET = testing.QUIET


def _trainer(root: Path, **kwargs) -> MLRTrainer:
    return testing._trainer(root, **kwargs)


def _fixed_batch(model, datamodule, n: int = 256) -> dict[str, torch.Tensor]:
    datamodule.attach(model)
    dataset = datamodule.train_dataset("text")
    return next(iter(DataLoader(Subset(dataset, range(n)), batch_size=n)))


def _alignment(model) -> tuple[float, float]:
    """Mean cosine of each class's global PVP with its own class text, and with the others."""
    text = hand_prompt_embeddings(model.backbone, model.class_names, "single")
    with torch.no_grad():
        pvp, _ = model.encode_pvps()
    sim = pvp @ text.T
    own = sim.diagonal().mean().item()
    others = (sim.sum() - sim.diagonal().sum()).item() / (sim.numel() - len(sim))
    return own, others


def test_stage1_lowers_its_loss_and_moves_pvps_towards_their_class_text(tmp_path):
    model, datamodule = testing.build_from_cli(
        "pvp", method_args=[*PVP_ARGS, "--method.stage", "pretrain"]
    )
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"pvp_global", "pvp_local"}, "stage 1 trains the pixel prompts only"
    batch = _fixed_batch(model, datamodule)
    model.noise_std = 0.0  # a deterministic measurement
    with torch.no_grad():
        loss_before = model.losses(batch)[0].item()
    own_before, others_before = _alignment(model)
    model.noise_std = 0.04

    _trainer(tmp_path, max_epochs=3, limit_val_batches=0).fit(model, datamodule=datamodule)

    model.noise_std = 0.0
    with torch.no_grad():
        loss_after = model.losses(batch)[0].item()
    own_after, others_after = _alignment(model)
    assert loss_after < 0.8 * loss_before, (loss_before, loss_after)
    assert own_after > own_before + 0.05, (own_before, own_after)
    assert own_after - others_after > own_before - others_before + 0.05
    artifact = next(tmp_path.rglob(ARTIFACT_NAME))
    saved = load_prompts(artifact)
    assert torch.equal(saved["pvp_global"], model.pvp_global.detach())


def test_stage2_trains_prompts_pvps_and_adapters_only():
    model, _ = testing.build_from_cli("pvp", method_args=[*PVP_ARGS, "--method.stage", "finetune"])
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {
        "pvp_global",
        "pvp_local",
        "ctx_global",
        "ctx_local",
        "text_adapter",
        "image_adapter",
    }


def test_reference_quirks_are_parameters():
    model, datamodule = testing.build_from_cli(
        "pvp", method_args=[*PVP_ARGS, "--method.stage", "finetune"]
    )
    raw = model.backbone.clip.logit_scale.item()
    assert model.contrastive_temperature() == pytest.approx(raw)
    model.contrastive_scale = "exp"
    assert model.contrastive_temperature() == pytest.approx(torch.tensor(raw).exp().item())
    model.contrastive_scale = 2.5
    assert model.contrastive_temperature() == 2.5
    model.eval()
    batch = testing._first_test_batch(model, datamodule)
    with torch.no_grad():
        swapped = model.score(batch)
        model.swap_test_spatial_scales = False
        unswapped = model.score(batch)
        model.append_global_token = False
        no_global_token = model.score(batch)
    assert not torch.allclose(swapped, unswapped)
    assert not torch.allclose(unswapped, no_global_token)


def test_pixel_prompts_are_encoded_in_fp32_by_default_as_in_the_reference():
    import yaml

    from mlr_bench.methods.pvp import PVP

    assert inspect.signature(PVP).parameters["encode_dtype"].default == "float32"
    recipe = yaml.safe_load((Path(__file__).parent.parent / "configs/method/pvp.yaml").read_text())
    assert recipe["init_args"]["encode_dtype"] == "float32"


def test_reference_hand_off_stops_stage1_after_41_epochs_of_a_100_epoch_cosine(tmp_path):
    """The reference's stage 2 loads the prompts saved after epoch index 40 of a 100-epoch
    stage 1: 41 epochs run, and the last one runs at Dassl's cosine for t = 40 - 1 of T = 100
    (base lr 0.1): 0.1 * (1 + cos(0.39 pi)) / 2 = 0.06694 — still two thirds of the base lr."""
    import lightning.pytorch as pl

    args = [*PVP_ARGS, "--method.pretrain_epochs", "100", "--method.pretrain_stop_epoch", "41"]
    model, datamodule = testing.build_from_cli("pvp", method_args=args)
    trainer = pl.Trainer(max_epochs=20, logger=False, default_root_dir=tmp_path)
    datamodule.trainer = trainer
    prior = model.prior_stage(datamodule, trainer)
    assert prior is not None and prior.max_epochs == 41
    stage1 = prior.module
    stage1.trainer = pl.Trainer(max_epochs=41, logger=False, default_root_dir=tmp_path)
    schedule = stage1.configure_optimizers()["lr_scheduler"]["scheduler"]
    lrs = [0.1 * schedule.lr_lambdas[0](e) for e in range(41)]
    assert lrs[0] == pytest.approx(1.0)  # the reference's constant warm-up lr (a quirk)
    assert lrs[1] == pytest.approx(0.1)
    assert lrs[40] == pytest.approx(0.1 * (1 + math.cos(math.pi * 39 / 100)) / 2)
    assert lrs[40] == pytest.approx(0.066937, abs=1e-6)
    # the artifact is keyed by the hand-off: the full 100 epochs are another artifact
    full, _ = testing.build_from_cli(
        "pvp", method_args=[*PVP_ARGS, "--method.pretrain_epochs", "100"]
    )
    assert full.artifact_path(datamodule, trainer, full.stage1_epochs()) != stage1.artifact_path(
        datamodule, trainer, stage1.stage1_epochs(41)
    )
    assert stage1.artifact_path(datamodule, trainer, stage1.stage1_epochs(41)) == model._artifact
    with pytest.raises(ValueError, match="pretrain_stop_epoch"):
        testing.build_from_cli(
            "pvp", method_args=[*PVP_ARGS, "--method.pretrain_stop_epoch", "101"]
        )


def test_adapter_mixes_the_feature_residually():
    from mlr_bench.methods.pvp import ResidualAdapter

    adapter = ResidualAdapter(8, ratio=1.0).eval()
    x = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    assert torch.allclose(adapter(x), x, atol=1e-6), "ratio 1 keeps CLIP's feature unchanged"


def test_stage2_without_prompts_says_how_to_get_them(tmp_path):
    fresh_cache = [*testing.SMALL_WORLD, "--data.cache_dir", str(tmp_path / "cache")]
    model, datamodule = testing.build_from_cli(
        "pvp", fresh_cache, [*PVP_ARGS, "--method.stage", "finetune"]
    )
    with pytest.raises(PVPArtifactError, match=r"--method\.pretrained_prompts"):
        _trainer(tmp_path, max_steps=1, limit_val_batches=0).fit(model, datamodule=datamodule)
    bad = tmp_path / "bad.safetensors"
    bad.write_text("not tensors")
    with pytest.raises(PVPArtifactError, match="pvp_global"):
        load_prompts(bad)
    with pytest.raises(PVPArtifactError, match="no pvp_prompts"):
        load_prompts(tmp_path)


def _results(root: Path) -> dict:
    return json.loads(next(root.rglob("results_test.json")).read_text())


def _train(root: Path, *extra: str) -> dict:
    run_cli(
        [
            "train",
            "--method",
            "pvp",
            *PVP_ARGS,
            *testing.SMALL_WORLD,
            *QUIET,
            "--seed_everything",
            "3",
            "--method.pretrain_epochs",
            "1",
            "--trainer.max_epochs",
            "1",
            "--trainer.limit_train_batches",
            "3",
            "--trainer.default_root_dir",
            str(root),
            *extra,
        ]
    )
    return json.loads(next(root.rglob("results_test.json")).read_text())["metrics"]


@pytest.mark.slow
def test_both_stages_from_the_cli_cache_stage1_and_reload_it(tmp_path, capsys):
    first = _train(tmp_path / "first")
    assert "prompts saved" in capsys.readouterr().out
    stage1_dir = next((tmp_path / "first").rglob(ARTIFACT_NAME)).parent
    second = _train(tmp_path / "second")
    assert "reusing cached prompts" in capsys.readouterr().out
    assert not list((tmp_path / "second").rglob(ARTIFACT_NAME)), "stage 1 ran again"
    assert first == second, "a cached stage 1 must give the same stage 2 as a fresh one"
    # budgets: both stages metered (3 batches each); the cached stage 1 reports its own
    budgets = [_results(tmp_path / run)["budget"] for run in ("first", "second")]
    for budget, cached in zip(budgets, (False, True), strict=True):
        assert budget["stages"]["pretrain"]["optimizer_steps"] == 3
        assert budget["stages"]["pretrain"].get("cached", False) is cached
        assert budget["stages"]["train"]["optimizer_steps"] == 3 and budget["optimizer_steps"] == 6
        assert budget["reference"]["dataset"] == "coco2014"  # the world borrows COCO's
    from_dir = _train(
        tmp_path / "third",
        "--method.stage",
        "finetune",
        "--method.pretrained_prompts",
        str(stage1_dir),
    )
    assert from_dir == first


#: Stage-2 text of the reference per dataset (Pseudo-Visual-Prompt pvp_finetune/datasets/:
#: voc2007_distill.py hard-codes COCO captions, nuswide_distill.py LLM sentences; the released
#: COCO script passes --use-chatglm 1, LLM sentences).
REFERENCE_STAGE2_TEXT = {"voc2007": "captions", "coco2014": "sentences", "nuswide": "sentences"}


@pytest.mark.parametrize("dataset", sorted(REFERENCE_STAGE2_TEXT))
def test_recipes_train_each_dataset_on_the_reference_text(dataset):
    import yaml

    recipe = Path(__file__).parent.parent / "configs" / "experiment" / f"pvp_{dataset}.yaml"
    config = yaml.safe_load(recipe.read_text())
    method, data = config["model"]["init_args"], config["data"]["init_args"]
    assert method["pretrain_text_source"] == "pretrain_sentences"
    assert method["text_source"] == REFERENCE_STAGE2_TEXT[dataset]
    assert data["pretrain_sentences_file"]  # stage 1 reads its own (500k) file
    stage2_file = "captions_file" if method["text_source"] == "captions" else "sentences_file"
    assert data[stage2_file] and data[stage2_file] != data["pretrain_sentences_file"]


def test_stage1_reads_its_own_sentence_file_or_falls_back_to_the_stage2_one(tmp_path):
    from test_real_datamodules import write_voc

    from mlr_bench.datamodules.voc2007 import VOC2007

    root = write_voc(tmp_path)
    first, second = tmp_path / "stage1.txt", tmp_path / "stage2.txt"
    first.write_text("a dog runs after a cat\na bird sits on a boat\n")
    second.write_text("a horse stands near a car\n")
    cache = str(tmp_path / "cache")
    both = VOC2007(
        str(root), sentences_file=str(second), pretrain_sentences_file=str(first), cache_dir=cache
    )
    assert both.text_corpus("pretrain_sentences").texts == [
        "a dog runs after a cat", "a bird sits on a boat",
    ]  # fmt: skip
    assert both.text_corpus("sentences").texts == ["a horse stands near a car"]
    one = VOC2007(str(root), sentences_file=str(second), cache_dir=cache)
    assert one.text_corpus("pretrain_sentences").texts == ["a horse stands near a car"]
