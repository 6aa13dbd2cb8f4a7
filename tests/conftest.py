"""Test-wide settings: offline, one thread per process, shared tiny fixtures."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
import torch

torch.set_num_threads(1)

from mlr_bench.demo import write_demo_dataset  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def feature_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Feature caches of the whole session go to a temporary folder, never ~/.cache."""
    path = str(tmp_path_factory.mktemp("feature-cache"))
    os.environ["MLR_BENCH_CACHE"] = path
    return path


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The demo dataset in the ``folder`` format (24 val, 41 test images, 5 classes)."""
    return str(write_demo_dataset(tmp_path_factory.mktemp("demo-data")))


@pytest.fixture
def zeroshot_args(demo_root: str) -> list[str]:
    """CLI arguments selecting zero-shot CLIP (random tiny backbone) on the demo dataset."""
    return [
        "--method",
        "zeroshot",
        "--method.backbone",
        "mlr-tiny-rn",
        "--method.pretrained",
        "none",
        "--data",
        "folder",
        "--data.root",
        demo_root,
        "--data.batch_size",
        "16",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.enable_model_summary",
        "false",
    ]
