"""Every built-in method passes the conformance checks plugins are held to."""

from __future__ import annotations

import pytest

from method_args import FAST_ARGS
from mlr_bench import registry, testing

BUILT_IN = sorted(registry.entries(registry.GROUPS["method"]))


def test_every_builtin_method_is_checked():
    assert {"zeroshot", "taidpt", "comc", "pvp"} <= set(BUILT_IN)


@pytest.mark.parametrize("method", BUILT_IN)
def test_method_conforms(method, tmp_path):
    model, datamodule = testing.build_from_cli(method, method_args=FAST_ARGS.get(method, []))
    testing.check_training_step(model, datamodule, tmp_path / "step")
    testing.check_scores(model, datamodule)
    testing.check_checkpoint_roundtrip(model, datamodule, tmp_path / "ckpt")


@pytest.mark.slow
@pytest.mark.parametrize("method", BUILT_IN)
def test_method_works_under_two_process_ddp(method, tmp_path):
    args = FAST_ARGS.get(method, [])
    metrics = testing.check_ddp_matches_single_process(method, tmp_path, method_args=args)
    assert 0 <= metrics["mAP"] <= 100
