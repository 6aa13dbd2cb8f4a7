"""Scale-out as users run it: the ``mlr-bench`` console script with ``--trainer.strategy ddp``.

Plain ``ddp`` re-launches the script once per extra rank (Lightning's subprocess launcher), which
only works from a console script, never inside pytest's own process; so every run here is a
subprocess. Two CPU processes stand in for two GPUs or nodes (gloo instead of NCCL).

Training under 2 processes legitimately differs from 1 (each rank draws its own batches, the
global batch doubles), so exactness is checked on a fixed checkpoint: testing it with 1 and with
2 processes must give the same metrics bit for bit; a 2-process ``train`` must finish too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mlr_bench.testing import QUIET, world_args

MLR_BENCH = Path(sys.executable).with_name("mlr-bench")
TINY_WORLD = [
    "--method",
    "comc",
    # odd test size: DistributedSampler pads a rank with a duplicate the evaluator must drop
    *world_args(num_test=61, num_val=30, num_captions=300, num_sentences=200),
    *QUIET,
    "--trainer.accelerator",
    "cpu",
]
DDP2 = ["--trainer.devices", "2", "--trainer.strategy", "ddp"]


def _mlr_bench(args: list[str], root: Path, cache: Path, tmp: Path) -> None:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "WANDB_MODE": "offline",
        "MLR_BENCH_CACHE": str(cache),
        "WANDB_DATA_DIR": str(tmp / "wandb-data"),
        "WANDB_CACHE_DIR": str(tmp / "wandb-cache"),
        "WANDB_CONFIG_DIR": str(tmp / "wandb-config"),
    }
    env.pop("WANDB_API_KEY", None)
    cmd = [str(MLR_BENCH), *args, "--trainer.default_root_dir", str(root)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stderr[-4000:]}"


def _results(root: Path) -> dict[str, Any]:
    (found,) = root.rglob("results_test.json")
    return json.loads(found.read_text())


@pytest.mark.slow
def test_ddp_console_script_matches_single_process(tmp_path: Path) -> None:
    assert MLR_BENCH.is_file(), f"console script missing: {MLR_BENCH} (pip install -e .)"
    cache = tmp_path / "cache"  # shared like a cluster's cache dir; built by rank 0 only

    # 2 processes fit + test the last checkpoint end to end, with W&B: one run (rank 0)
    train_root = tmp_path / "ddp-train"
    fit = ["--trainer.max_epochs", "1", "--test_ckpt", "last", "--logger", "wandb"]
    _mlr_bench(["train", *TINY_WORLD, *DDP2, *fit], train_root, cache, tmp_path)
    two = _results(train_root)
    assert 0 < two["metrics"]["mAP"] <= 100
    runs = [p for p in train_root.rglob("offline-run-*") if p.is_dir()]
    assert len(runs) == 1, runs
    (ckpt,) = train_root.rglob("last.ckpt")

    # 1 process, same checkpoint: identical metrics, bit for bit
    single = tmp_path / "single"
    one_process = ["--trainer.devices", "1", "--ckpt_path", str(ckpt)]
    _mlr_bench(["test", *TINY_WORLD, *one_process], single, cache, tmp_path)
    one = _results(single)
    assert (one["world_size"], two["world_size"]) == (1, 2)
    assert two["num_samples"] == one["num_samples"] == 61
    assert two["metrics"] == one["metrics"]
    assert two["per_class_ap"] == one["per_class_ap"]
