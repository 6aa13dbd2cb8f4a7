"""Runs, checkpoints and weights: wrong inputs and faults end in one message (exit 2), never in
a silently wrong result, and leave no half-written file or result-looking folder behind."""

from __future__ import annotations

import errno
import os
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mlr_bench import registry
from mlr_bench.cli import run_cli
from mlr_bench.runs import FAILED_MARKER, atomic_write_json, default_file_mode
from mlr_bench.testing import QUIET, SMALL_WORLD
from mlr_bench.world import CLASS_NAMES

WORLD = [*SMALL_WORLD, *QUIET]
CONSOLE = [sys.executable, "-m", "mlr_bench.cli"]


def class_path(method: str) -> str:
    return registry.entries(registry.GROUPS["method"])[method].class_path


def fake_checkpoint(path: Path, method: str, state: dict | None = None, **hparams) -> Path:
    """A Lightning-format checkpoint as `mlr-bench fit` writes it (hparams from LightningCLI)."""
    saved = {
        "_class_path": class_path(method),
        "class_names": list(CLASS_NAMES),
        "backbone": "world",
        "pretrained": "bundled",
        **hparams,
    }
    torch.save({"state_dict": state or {}, "hyper_parameters": saved, "epoch": 1}, path)
    return path


def refused(args: list[str], capsys: pytest.CaptureFixture) -> str:
    """Run the CLI, expect exit code 2 and return the one-line message."""
    with pytest.raises(SystemExit) as exc:
        run_cli(args)
    assert exc.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    asides = ("mlr-bench: note:", "mlr-bench: warning:")
    err = [line for line in lines if line.startswith("mlr-bench") and not line.startswith(asides)]
    assert len(err) == 1, err
    return err[0]


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def no_runs(root: Path) -> bool:
    return not (root / "runs").exists()


class Payload:
    """A pickle that runs code when loaded without ``weights_only``: it creates a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


# ---- 1. a checkpoint of another method / classes / backbone / stage ----------------------
def test_checkpoint_of_another_method_is_refused(workdir, capsys):
    ckpt = fake_checkpoint(workdir / "comc.ckpt", "comc")
    message = refused(["test", "--method", "taidpt", *WORLD, "--ckpt_path", str(ckpt)], capsys)
    assert "is a checkpoint of CoMC (comc), but this run asks for TaIDPT (taidpt)" in message
    assert "comc.ckpt" in message
    assert no_runs(workdir)


def test_checkpoint_of_another_backbone_is_refused(workdir, capsys):
    ckpt = fake_checkpoint(workdir / "rn.ckpt", "taidpt", backbone="mlr-tiny-rn")
    message = refused(["test", "--method", "taidpt", *WORLD, "--ckpt_path", str(ckpt)], capsys)
    assert "backbone='mlr-tiny-rn', but this run asks for backbone='world'" in message
    assert no_runs(workdir)


def test_pvp_stage1_checkpoint_is_refused_for_a_stage2_test(workdir, capsys):
    ckpt = fake_checkpoint(workdir / "stage1.ckpt", "pvp", stage="pretrain")
    message = refused(["test", "--method", "pvp", *WORLD, "--ckpt_path", str(ckpt)], capsys)
    assert "stage='pretrain', but this run asks for stage='finetune'" in message
    assert no_runs(workdir)


@pytest.mark.parametrize(
    ("classes", "expected"),
    [
        (list(CLASS_NAMES)[:5], f"5 classes, the dataset has {len(CLASS_NAMES)}"),
        ([f"thing{i}" for i in range(len(CLASS_NAMES))], "different classes"),
        (list(reversed(CLASS_NAMES)), "the same classes in another order"),
    ],
)
def test_checkpoint_for_other_classes_is_refused(workdir, capsys, classes, expected):
    ckpt = fake_checkpoint(workdir / "other.ckpt", "taidpt", class_names=classes)
    message = refused(["test", "--method", "taidpt", *WORLD, "--ckpt_path", str(ckpt)], capsys)
    assert f"was trained on {expected}" in message and "vs dataset classes" in message
    assert no_runs(workdir)


def test_checkpoint_missing_learned_tensors_is_refused(workdir, capsys):
    from mlr_bench.methods.taidpt import TaIDPT

    state = TaIDPT(class_names=list(CLASS_NAMES)).state_dict()
    dropped = sorted(state)[0]
    del state[dropped]
    ckpt = fake_checkpoint(workdir / "partial.ckpt", "taidpt", state=state)
    message = refused(["test", "--method", "taidpt", *WORLD, "--ckpt_path", str(ckpt)], capsys)
    assert f"does not fit TaIDPT as configured: missing {dropped}" in message
    assert no_runs(workdir)


# ---- 5. a missing, unreadable or wrong --ckpt_path -----------------------------------------
@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("missing.ckpt", "--ckpt_path file 'missing.ckpt' does not exist"),
        ("notes.txt", "--ckpt_path file 'notes.txt' is not a PyTorch checkpoint"),
        ("folder", "--ckpt_path file 'folder' is a directory; expected a .ckpt file"),
        ("tensor.pt", "--ckpt_path file 'tensor.pt' is not a Lightning checkpoint"),
        ("last", "--ckpt_path last: every mlr-bench run writes to a new folder"),
    ],
)
def test_bad_ckpt_path_is_one_message(workdir, capsys, name, expected):
    (workdir / "notes.txt").write_text("not a checkpoint\n")
    (workdir / "folder").mkdir()
    torch.save(torch.zeros(2), workdir / "tensor.pt")
    message = refused(["test", "--method", "zeroshot", *WORLD, "--ckpt_path", name], capsys)
    assert expected in message
    assert no_runs(workdir)


def test_unreadable_ckpt_path_is_one_message(workdir, capsys):
    if os.geteuid() == 0:
        pytest.skip("root reads every file")
    ckpt = fake_checkpoint(workdir / "locked.ckpt", "zeroshot")
    ckpt.chmod(0)
    message = refused(["test", "--method", "zeroshot", *WORLD, "--ckpt_path", str(ckpt)], capsys)
    assert "is not readable (permission denied)" in message
    assert no_runs(workdir)


# ---- 7. a crafted pickle never runs --------------------------------------------------------
def test_crafted_checkpoint_is_refused_and_does_not_run(workdir, capsys):
    marker = workdir / "pwned"
    evil = workdir / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": Payload(marker)}, evil)
    message = refused(["test", "--method", "zeroshot", *WORLD, "--ckpt_path", str(evil)], capsys)
    assert "evil.ckpt' refused: it holds pickled Python objects" in message
    assert not marker.exists()
    assert no_runs(workdir)


def test_crafted_pvp_stage1_checkpoint_does_not_run(tmp_path):
    from mlr_bench.methods.pvp import PVPArtifactError, load_prompts

    marker = tmp_path / "pwned"
    evil = tmp_path / "stage1.ckpt"
    torch.save({"state_dict": {"pvp_global": Payload(marker)}}, evil)
    with pytest.raises(PVPArtifactError, match="refused: it holds pickled Python objects"):
        load_prompts(evil)
    assert not marker.exists()


def test_pvp_prompts_of_other_classes_are_refused(tmp_path):
    import json

    from safetensors.torch import save_file

    from mlr_bench.methods.pvp import PVPArtifactError, load_prompts

    path = tmp_path / "pvp_prompts.safetensors"
    tensors = {"pvp_global": torch.zeros(2, 3, 4, 4), "pvp_local": torch.zeros(2, 3, 4, 4)}
    save_file(tensors, str(path), metadata={"classes": json.dumps(["cat", "dog"])})
    assert set(load_prompts(path, ["cat", "dog"])) == {"pvp_global", "pvp_local"}
    with pytest.raises(PVPArtifactError, match=r"trained for classes \['cat', 'dog'\]"):
        load_prompts(path, ["dog", "cat"])


# ---- 2. zero epochs of a trainable method ----------------------------------------------------
@pytest.mark.parametrize("option", ["max_epochs", "max_steps", "limit_train_batches"])
def test_training_a_trainable_method_for_nothing_is_refused(workdir, capsys, option):
    args = ["fit", "--method", "comc", *WORLD, f"--trainer.{option}", "0"]
    message = refused(args, capsys)
    assert (
        f"--trainer.{option} 0 trains nothing, but CoMC (comc) has trainable parameters" in message
    )
    assert no_runs(workdir)


# ---- 4. weights files that are not weights -------------------------------------------------
@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("notes.txt", b"some notes\n", "is not a weights file (neither safetensors nor"),
        ("fake.safetensors", b"garbage garbage garbage", "is not a valid safetensors file"),
        ("missing.pt", None, "CLIP weights file 'missing.pt' does not exist"),
    ],
)
def test_pretrained_that_is_not_weights_is_one_message(workdir, capsys, name, content, expected):
    if content is not None:
        (workdir / name).write_bytes(content)
    args = ["fit", "--method", "zeroshot", *WORLD, "--method.pretrained", name]
    message = refused(args, capsys)
    assert expected in message and name in message
    assert no_runs(workdir)


def test_crafted_weights_file_does_not_run(workdir, capsys):
    marker = workdir / "pwned"
    torch.save({"visual.proj": Payload(marker)}, workdir / "evil.pt")
    message = refused(
        ["fit", "--method", "zeroshot", *WORLD, "--method.pretrained", "evil.pt"], capsys
    )
    assert "evil.pt" in message
    assert not marker.exists()
    assert no_runs(workdir)


# ---- 6. an unreachable hub fails in seconds --------------------------------------------------
def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_hub_fails_fast_with_the_how_to(workdir, capsys, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", f"https://127.0.0.1:{_closed_port()}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(workdir / "hub-cache"))
    args = [
        "fit",
        "--method",
        "zeroshot",
        "--method.backbone",
        "RN50",
        "--method.pretrained",
        "openai",
        *WORLD,
    ]
    started = time.monotonic()
    message = refused(args, capsys)
    assert time.monotonic() - started < 30  # not a minute of download retries
    assert "could not load CLIP 'RN50' with pretrained='openai'" in message
    assert "could not be reached within 3 s, and the weights are not in the local cache" in message
    assert "127.0.0.1" in message
    assert "Provide weights with --method.pretrained" in message
    assert constants.HF_HUB_OFFLINE is False  # the cache-only mode was for that one load
    assert no_runs(workdir)


def test_hub_probe_gives_up_on_a_server_that_never_answers(monkeypatch):
    from mlr_bench.clip.backbone import hub_reachable

    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    with socket.socket() as silent:  # accepts connections (kernel backlog), never replies
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        started = time.monotonic()
        assert not hub_reachable(f"https://127.0.0.1:{silent.getsockname()[1]}", timeout=0.5)
        assert time.monotonic() - started < 5


# ---- 3. a run that fails after its folder exists is marked, a full disk is one message -----
def test_full_disk_during_a_run_marks_it_failed_and_leaves_no_partial_file(
    workdir, capsys, monkeypatch, zeroshot_args
):
    import mlr_bench.checkpoints

    real_write = mlr_bench.checkpoints.atomic_write_bytes

    def disk_fills_up(path: Path, write) -> None:
        def half(f) -> None:  # the disk fills up part-way through the checkpoint
            f.write(b"the first bytes of a checkpoint")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        real_write(path, half)

    monkeypatch.setattr(mlr_bench.checkpoints, "atomic_write_bytes", disk_fills_up)
    message = refused(["fit", *zeroshot_args], capsys)
    assert "no space left on the device (No space left on device)" in message
    assert f"is marked {FAILED_MARKER}" in message
    (run,) = (workdir / "runs" / "zeroshot" / "folder").iterdir()
    assert (run / FAILED_MARKER).exists()
    assert (run / "config.yaml").exists()
    leftovers = [p.name for p in run.rglob("*") if p.suffix in (".tmp", ".ckpt", ".json")]
    assert not leftovers, leftovers


def test_failing_run_gets_a_failed_marker_with_the_error(
    workdir, capsys, monkeypatch, zeroshot_args
):
    from mlr_bench.eval.evaluator import Evaluator

    def broken(*args, **kwargs):
        raise RuntimeError("evaluator exploded")

    monkeypatch.setattr(Evaluator, "on_validation_epoch_end", broken)
    with pytest.raises(RuntimeError, match="evaluator exploded"):
        run_cli(["fit", *zeroshot_args])
    (run,) = (workdir / "runs" / "zeroshot" / "folder").iterdir()
    assert (run / FAILED_MARKER).read_text().startswith("failed: RuntimeError: evaluator exploded")


# ---- 8. results and checkpoints have the usual file mode ------------------------------------
def test_results_and_checkpoints_respect_the_umask(tmp_path):
    from mlr_bench.checkpoints import AtomicCheckpointIO

    old = os.umask(0o027)
    try:
        assert default_file_mode() == 0o640
        atomic_write_json(tmp_path / "results_test.json", {"mAP": 1.0})
        AtomicCheckpointIO().save_checkpoint({"state_dict": {}}, tmp_path / "c" / "last.ckpt")
    finally:
        os.umask(old)
    for path in (tmp_path / "results_test.json", tmp_path / "c" / "last.ckpt"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o640, path
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["c", "last.ckpt", "results_test.json"]


# ---- the console script, as users call it ---------------------------------------------------
@pytest.mark.slow
def test_console_refuses_a_checkpoint_of_another_method(tmp_path):
    ckpt = fake_checkpoint(tmp_path / "comc.ckpt", "comc")
    out = subprocess.run(
        [*CONSOLE, "test", "--method", "taidpt", *WORLD, "--ckpt_path", str(ckpt)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 2, out.stderr
    assert "is a checkpoint of CoMC (comc), but this run asks for TaIDPT (taidpt)" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "runs").exists()
