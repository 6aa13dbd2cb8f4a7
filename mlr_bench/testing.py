"""Conformance checks every method — built-in or plugin — must pass.

Use them in a plugin's own test suite::

    from mlr_bench import testing

    def test_my_method_conforms(tmp_path):
        testing.check_method("mymethod", tmp_path, data_args=["--data", "world", ...])

Each check raises ``AssertionError`` with a message saying what the contract expects.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Trainer
from torch import Tensor

from mlr_bench.datamodule import MLRDataModule
from mlr_bench.method import MLRMethod


def world_args(**sizes: int) -> list[str]:
    """CLI arguments selecting the built-in world with the given sizes (``num_test=60``, ...):
    tests and plugin test suites build small worlds this way."""
    args = ["--data", "world"]
    for name, value in sizes.items():
        args += [f"--data.{name}", str(value)]
    return args


#: A small world that builds in seconds: the default data of the checks.
SMALL_WORLD = world_args(
    num_test=48, num_val=24, num_captions=256, num_sentences=256, batch_size=64
)
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


def build_from_cli(
    method: str, data_args: Sequence[str] = SMALL_WORLD, method_args: Sequence[str] = ()
) -> tuple[MLRMethod, MLRDataModule]:
    """Instantiate method and datamodule exactly as ``mlr-bench fit`` would (short names)."""
    from mlr_bench.cli import _cli, rewrite_argv

    cli = _cli(rewrite_argv(["--method", method, *method_args, *data_args]), run=False)
    assert isinstance(cli.model, MLRMethod), f"{method} is not an MLRMethod: {type(cli.model)}"
    assert isinstance(cli.datamodule, MLRDataModule), "the datamodule is not an MLRDataModule"
    linked = cli.model.class_names == cli.datamodule.prompt_class_names
    assert linked, "class names were not linked"
    return cli.model, cli.datamodule


def _trainer(root: Path, **kwargs: Any) -> Trainer:
    """mlr-bench's own Trainer (it also fits a staged method's prior stage, as the CLI does)."""
    from mlr_bench.cli import MLRTrainer

    defaults: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "default_root_dir": str(root),
    }
    return MLRTrainer(**{**defaults, **kwargs})


def _snapshot(model: MLRMethod) -> dict[str, Tensor]:
    state = {f"param:{n}": p.detach().clone() for n, p in model.named_parameters()}
    state.update({f"buffer:{n}": b.detach().clone() for n, b in model.named_buffers()})
    return state


def check_training_step(model: MLRMethod, datamodule: MLRDataModule, root: Path) -> None:
    """One optimisation step changes trainable parameters and nothing else (frozen CLIP, BN
    statistics, buffers). A method that does not train must have no trainable parameters."""
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    if not model.requires:
        assert not trainable, f"a method that does not train has trainable parameters {trainable}"
        return
    assert trainable, "a method that trains (requires training data) has no trainable parameter"
    before = _snapshot(model)
    _trainer(root, max_steps=1, limit_val_batches=0).fit(model, datamodule=datamodule)
    after = _snapshot(model)
    changed = {k for k in before if not torch.equal(before[k], after[k].to(before[k].device))}
    frozen_changed = {k for k in changed if k.removeprefix("param:") not in trainable}
    assert not frozen_changed, f"one training step changed frozen state: {sorted(frozen_changed)}"
    assert changed, "one training step changed no trainable parameter"


def _first_test_batch(model: MLRMethod, datamodule: MLRDataModule) -> dict[str, Any]:
    datamodule.attach(model)
    datamodule.setup("test")
    return next(iter(datamodule.test_dataloader()))


def check_scores(model: MLRMethod, datamodule: MLRDataModule) -> Tensor:
    """``score`` returns finite raw scores of shape ``[batch, classes]``."""
    model.eval()
    batch = _first_test_batch(model, datamodule)
    with torch.no_grad():
        scores = model.score(batch)
    expected = (len(batch["target"]), model.num_classes)
    assert tuple(scores.shape) == expected, f"score shape {tuple(scores.shape)} != {expected}"
    assert torch.isfinite(scores).all(), "score returned non-finite values"
    return scores


def check_checkpoint_roundtrip(model: MLRMethod, datamodule: MLRDataModule, root: Path) -> None:
    """A saved checkpoint holds no frozen backbone weights and reloads to identical scores."""
    trainer = _trainer(root, max_steps=0, limit_val_batches=0)
    trainer.fit(model, datamodule=datamodule)
    path = root / "roundtrip.ckpt"
    trainer.save_checkpoint(path)
    saved = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    frozen = [k for k in saved if k.startswith(model.frozen_prefixes)]
    assert not frozen, f"checkpoint holds frozen weights, e.g. {frozen[:3]}"
    reloaded = type(model).load_from_checkpoint(path, map_location="cpu")
    reloaded.eval()
    model.eval()
    batch = _first_test_batch(model, datamodule)
    with torch.no_grad():
        original, restored = model.score(batch), reloaded.score(batch)
    assert torch.equal(original, restored), "scores differ after a checkpoint round-trip"


#: The ``mlr-bench`` console script of this interpreter's environment (plain ``ddp`` relaunches
#: ``sys.argv``, which must therefore be a script, not ``python -c``).
CONSOLE_SCRIPT = Path(sys.executable).with_name("mlr-bench")


def check_ddp_matches_single_process(
    method: str,
    root: Path,
    data_args: Sequence[str] = SMALL_WORLD,
    method_args: Sequence[str] = (),
) -> dict[str, float]:
    """``mlr-bench train`` (fit one epoch, test the last checkpoint) under 2-process DDP on
    CPU, then test the same checkpoint in one process: the test metrics must be identical.
    Runs the real CLI in fresh interpreters, as users run it (plain ``ddp`` through the console
    script when it is installed: one launch for fit and test; ``ddp_spawn`` otherwise, which
    spawns again for each). Plain ``ddp`` also proves that every trainable parameter of each
    stage gets a gradient every step (PVP's two fits), or DDP's reducer fails. Returns the
    metrics."""
    common = ["--method", method, *method_args, *data_args, *QUIET]
    ddp_root, single_root = root / "ddp", root / "single"
    strategy = "ddp" if CONSOLE_SCRIPT.is_file() else "ddp_spawn"
    ddp = ["--trainer.accelerator", "cpu", "--trainer.strategy", strategy, "--trainer.devices"]
    _run_cli(
        ["train", *common, *ddp, "2", "--trainer.max_epochs", "1", "--test_ckpt", "last"], ddp_root
    )
    ckpts = sorted(ddp_root.rglob("last.ckpt"))
    assert ckpts, f"2-process fit wrote no checkpoint under {ddp_root}"
    _run_cli(["test", *common, "--ckpt_path", str(ckpts[0]), "--trainer.devices", "1"], single_root)
    two, single = _results(ddp_root), _results(single_root)
    assert two["world_size"] == 2 and single["world_size"] == 1
    assert two["num_samples"] == single["num_samples"], "DDP evaluated a different sample count"
    assert two["metrics"] == single["metrics"], (
        f"2-process test metrics differ from 1-process: {two['metrics']} vs {single['metrics']}"
    )
    return single["metrics"]


def _run_cli(args: list[str], root: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    if CONSOLE_SCRIPT.is_file():
        launcher = [str(CONSOLE_SCRIPT)]
    else:
        launcher = [sys.executable, "-c", "from mlr_bench.cli import main; main()"]
    cmd = [*launcher, *args, "--trainer.default_root_dir", str(root)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}"


def _results(root: Path) -> dict[str, Any]:
    found = sorted(root.rglob("results_test.json"))
    assert found, f"no results_test.json under {root}"
    return json.loads(found[-1].read_text())


def check_method(
    method: str,
    root: Path,
    data_args: Sequence[str] = SMALL_WORLD,
    method_args: Sequence[str] = (),
    ddp: bool = True,
) -> None:
    """Run every conformance check on one registered method."""
    root = Path(root)
    model, datamodule = build_from_cli(method, data_args, method_args)
    check_training_step(model, datamodule, root / "step")
    check_scores(model, datamodule)
    check_checkpoint_roundtrip(model, datamodule, root / "ckpt")
    if ddp:
        check_ddp_matches_single_process(method, root / "ddp", data_args, method_args)
