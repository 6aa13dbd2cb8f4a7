"""W&B logging, offline: what a run folder holds after ``mlr-bench train --logger wandb``.

In offline mode this wandb version writes no ``wandb-summary.json``/``config.yaml``; everything
is in the run's ``run-<id>.wandb`` transaction log (LevelDB-log framing of protobuf records),
which ``read_offline_run`` decodes, plus ``files/media/table/**.table.json`` for tables.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from mlr_bench import cli
from mlr_bench.loggers import MLRWandbLogger, log_leaderboard, resolve_mode
from mlr_bench.testing import QUIET, world_args

TINY_WORLD = [
    "--method",
    "comc",
    *world_args(num_test=60, num_val=30, num_captions=300, num_sentences=200),
    *QUIET,
]


# ---- reading an offline run -----------------------------------------------------------------
@dataclass
class OfflineRun:
    folder: Path
    name: str = ""
    group: str = ""
    job_type: str = ""
    project: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    offline: bool = False
    artifact_files: list[str] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)  # record types in order, for failure messages

    def tables(self, key: str) -> list[dict[str, Any]]:
        """Table JSONs logged under ``key`` (e.g. ``test/predictions``)."""
        base = self.folder / "files" / "media" / "table"
        return [json.loads(p.read_text()) for p in sorted(base.glob(f"{key}_*.table.json"))]


def _records(path: Path) -> Any:
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, pending = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a record header is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 0:
            break
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):  # FULL or LAST
            record = pb.Record()
            record.ParseFromString(pending)
            yield record


def _key(item: Any) -> str:
    return item.key or "/".join(item.nested_key)


def read_offline_run(folder: Path, wait_s: float = 30.0) -> OfflineRun:
    """Decode a finished offline run (waits for its ``exit`` record: wandb-core writes the log
    from its own process, possibly a moment after ``finish()`` returned on a busy machine)."""
    (log,) = folder.glob("run-*.wandb")
    deadline = time.monotonic() + wait_s
    while True:
        records = list(_records(log))
        kinds = [r.WhichOneof("record_type") for r in records]
        if "exit" in kinds or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    run = OfflineRun(folder, kinds=kinds)
    for record in records:
        kind = record.WhichOneof("record_type")
        if kind == "run":
            r = record.run
            run.name, run.group, run.job_type, run.project = (
                r.display_name,
                r.run_group,
                r.job_type,
                r.project,
            )
            run.config.update({_key(u): json.loads(u.value_json) for u in r.config.update})
        elif kind == "config":
            run.config.update({_key(u): json.loads(u.value_json) for u in record.config.update})
        elif kind == "summary":
            run.summary.update({_key(u): json.loads(u.value_json) for u in record.summary.update})
        elif kind == "history":
            run.history.append({_key(i): json.loads(i.value_json) for i in record.history.item})
        elif kind == "telemetry":
            run.offline = run.offline or record.telemetry.feature.offline
        elif kind == "artifact":
            run.artifact_files += [c.path for c in record.artifact.manifest.contents]
    return run


def offline_runs(root: Path) -> list[OfflineRun]:
    return [read_offline_run(p) for p in sorted(root.rglob("offline-run-*")) if p.is_dir()]


# ---- fixtures -----------------------------------------------------------------------------
@pytest.fixture
def wandb_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No credentials, every W&B folder in tmp, and any non-loopback connect attempt recorded."""
    for var in ("WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    for var in ("WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home" / var.lower()))
    attempts: list[Any] = []
    real_connect = socket.socket.connect

    def guarded(sock: socket.socket, address: Any) -> Any:
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not _loopback(address[0]):
            attempts.append(address)
            raise OSError("network access in an offline test")
        return real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)
    yield tmp_path
    assert not attempts, f"network connections attempted: {attempts}"


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


# ---- tests --------------------------------------------------------------------------------
def test_logger_shortcut_rewrites_and_rejects_unknown(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.rewrite_argv(["fit", "--logger", "wandb"]) == [
        "fit",
        "--trainer.logger=mlr_bench.loggers.MLRWandbLogger",
    ]
    assert cli.rewrite_argv(["fit", "--logger=CSV"]) == ["fit", "--trainer.logger=true"]
    assert cli.rewrite_argv(["fit", "--trainer.logger", "x.Y"]) == [
        "fit",
        "--trainer.logger",
        "x.Y",
    ]
    with pytest.raises(SystemExit) as exc:
        cli.run_cli(["fit", "--logger", "neptune"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "neptune" in err and "wandb, csv, tensorboard" in err


def test_offline_unless_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    netrc = tmp_path / "netrc"
    monkeypatch.setenv("NETRC", str(netrc))
    assert resolve_mode() == "offline"
    netrc.write_text("machine api.wandb.ai\n  login user\n  password " + "k" * 40 + "\n")
    assert resolve_mode() == "online"
    assert resolve_mode(offline=True) == "offline"
    netrc.unlink()
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    assert resolve_mode() == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert resolve_mode() == "disabled"


def test_summary_keeps_best_val_map(wandb_offline: Path) -> None:
    logger = MLRWandbLogger(save_dir=str(wandb_offline / "runs"), name="best")
    for step, value in enumerate([3.0, 5.0, 2.0]):
        logger.log_metrics({"val/mAP": value}, step=step)
    logger.finish()
    (run,) = offline_runs(wandb_offline / "runs")
    assert [h["val/mAP"] for h in run.history] == [3.0, 5.0, 2.0], run.kinds
    assert run.summary["val/mAP"] == run.summary["val/mAP_best"] == 5.0
    assert run.folder.parent.parent == wandb_offline / "runs" / "wandb" / logger.version


@pytest.mark.slow
def test_train_and_test_with_wandb_offline(wandb_offline: Path) -> None:
    root = wandb_offline / "runs"
    common = [*TINY_WORLD, "--logger", "wandb", "--trainer.default_root_dir", str(root)]
    start = time.monotonic()
    trained = cli.run_cli(["train", *common, "--trainer.max_epochs", "2"])
    assert time.monotonic() - start < 120  # no network wait anywhere

    (run,) = offline_runs(root)
    run_id = trained.trainer.logger.version
    run_dir = root / "comc" / "world" / "wandb" / run_id
    assert run.folder.parent == run_dir / "wandb"  # W&B's files inside the run's directory
    expected = {"config.yaml", "checkpoints", "results_test.json"}
    assert expected <= {p.name for p in run_dir.iterdir()}
    assert run.offline and run.folder.name.startswith("offline-run-")
    assert (run.name, run.job_type, run.project) == ("comc-world-world-s0", "train", "mlr-bench")

    # flat keys for filtering, then the full resolved CLI config
    keys = ("method", "dataset", "protocol", "backbone", "seed", "text_source")
    flat = {k: run.config[k] for k in keys}
    assert flat == {
        "method": "comc",
        "dataset": "world",
        "protocol": "clean",
        "backbone": "world",
        "seed": 0,
        "text_source": "sentences",
    }
    assert run.config["model"]["class_path"] == "mlr_bench.methods.comc.CoMC"
    assert run.config["data"]["init_args"]["num_test"] == 60
    assert run.config["trainer"]["max_epochs"] == 2
    assert run.config["hparams"]["seed"] == 0  # the datamodule's seed, kept apart

    # history and summary: val/mAP per epoch, best in the summary, test/mAP as in results
    vals = [h["val/mAP"] for h in run.history if "val/mAP" in h]
    assert len(vals) == 2
    assert run.summary["val/mAP"] == run.summary["val/mAP_best"] == max(vals)
    results = json.loads((run_dir / "results_test.json").read_text())
    assert run.summary["test/mAP"] == pytest.approx(results["metrics"]["mAP"], abs=1e-4)
    # the training budget, as in results_test.json (the world borrows COCO's reference)
    budget = results["budget"]
    assert run.summary["budget/optimizer_steps"] == budget["optimizer_steps"] > 0
    assert run.summary["budget/train/optimizer_steps"] == budget["optimizer_steps"]
    assert run.summary["budget/reference_steps"] == 4200
    assert run.summary["budget/steps_x_reference"] == pytest.approx(
        budget["optimizer_steps"] / 4200
    )

    # tables: per-class AP and predictions with images
    (ap,) = run.tables("test/per_class_ap")
    assert ap["columns"] == ["class", "AP", "positives"]
    assert len(ap["data"]) == 18
    by_class = {c: (a, p) for c, a, p in ap["data"]}
    for name, value in results["per_class_ap"].items():
        assert by_class[name][0] == pytest.approx(value)
    assert sum(p for _, p in by_class.values()) > 0
    (pred,) = run.tables("test/predictions")
    assert pred["columns"] == ["index", "image", "top5", "ground_truth"]
    assert [row[0] for row in pred["data"]] == list(range(16))
    assert all(row[2].count("(") == 5 for row in pred["data"])
    assert any(p.startswith("media/images/") for p in run.artifact_files)

    # a later `test` in the same process is its own run, typed "test"
    best = trained.trainer.checkpoint_callback.best_model_path
    cli.run_cli(["test", *common, "--ckpt_path", best])
    runs = offline_runs(root)
    assert len(runs) == 2
    tested = next(r for r in runs if r.folder != run.folder)
    assert tested.job_type == "test" and tested.name == "comc-world-world-s0"
    assert tested.summary["test/mAP"] == pytest.approx(run.summary["test/mAP"])


def test_log_leaderboard_writes_a_summary_run(wandb_offline: Path) -> None:
    rows = [
        {"method": "comc", "dataset": "world", "backbone": "world", "seed": 0, "mAP": 64.4},
        {"method": "zeroshot", "dataset": "world", "backbone": "world", "seed": 0, "mAP": 50.2},
        {"method": "taidpt", "dataset": "world", "seed": 1, "mAP": 67.3, "extra": {"a": 1}},
    ]
    log_leaderboard(rows, project="mlr-bench", group="bench-1", save_dir=str(wandb_offline))
    (run,) = offline_runs(wandb_offline)
    assert (run.job_type, run.group, run.project) == ("summary", "bench-1", "mlr-bench")
    (table,) = run.tables("leaderboard")
    assert table["columns"] == ["method", "dataset", "backbone", "seed", "mAP", "extra"]
    assert [r[0] for r in table["data"]] == ["comc", "zeroshot", "taidpt"]
    assert table["data"][2][3:] == [1, 67.3, '{"a": 1}']
