"""Small world settings and a script runner shared by the benchmark tests."""

import os
import subprocess
import sys
from pathlib import Path

TINY = [
    "--data.num_test", "60", "--data.num_val", "30",
    "--data.num_captions", "300", "--data.num_sentences", "200",
]  # fmt: skip

#: A CoMC recipe for the world with one template copy: the cheapest trainable cell.
COMC_TINY = """\
model:
  class_path: mlr_bench.methods.comc.CoMC
  init_args:
    template_copies: 1
data:
  class_path: mlr_bench.datamodules.world.World
"""


def run_benchmark_script(
    script: Path, *args: str, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run a ``benchmarks/`` script offline, one thread, from the repository root."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    return subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        cwd=script.parent.parent,
    )
