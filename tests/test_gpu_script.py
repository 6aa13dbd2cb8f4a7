"""benchmarks/gpu.py waits for a lent GPU; its --tiny run keeps it from rotting meanwhile.

The tiny run goes through every row's code on CPU with tiny shapes; a row may only be skipped
for its dtype (fp16 on CPU); none may fail (480 px works since CLIP's positional
embedding follows the input size).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
from bench_fixtures import run_benchmark_script

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu.py"
IMAGE_ROWS = {
    f"image/{model}/{dtype}{cl}"
    for model in ("RN50", "ViT-B-16")
    for dtype in ("fp32", "fp16", "bf16")
    for cl in ("", "+cl")
}
PVP_ROWS = {f"pvp/{px}/{mode}" for px in ("224px", "480px") for mode in ("fp32", "bf16+cl")}
EXPECTED = IMAGE_ROWS | PVP_ROWS | {"taidpt/cached", "taidpt/reencoded", "t2i/fp32", "t2i/fp16"}
#: Rows allowed to fail: none, now that CLIP's positional embedding follows the input size.
MAY_FAIL: set[str] = set()


def run_script(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return run_benchmark_script(SCRIPT, *args, timeout=timeout)


@pytest.mark.slow
def test_tiny_run_reports_every_row(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    done = run_script("--tiny", "--out", str(out), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(out.read_text())
    rows = {r["id"]: r for r in figures["rows"]}
    assert set(rows) == EXPECTED
    for row_id, row in rows.items():
        status = row["status"]
        if status == "ok":
            assert row["value"] > 0, row
        elif status.startswith("failed: "):
            assert row_id in MAY_FAIL, row
            assert "\n" not in status and len(status) > len("failed: "), row
        else:
            assert status == "skipped (cpu)" and "/fp16" in row_id, row
            assert row["value"] is None
        assert row["wall_s"] >= 0
        assert row_id in done.stdout  # the printed table has every row
    assert figures["environment"]["tiny"] is True and figures["total_s"] > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")
def test_refuses_without_cuda_unless_tiny() -> None:
    done = run_script(timeout=120)
    assert done.returncode == 2
    assert (done.stdout + done.stderr).strip() == (
        "no CUDA device; use --tiny to check the script on CPU"
    )
