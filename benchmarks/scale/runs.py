"""The rehearsal's cells: real ``mlr-bench`` subprocesses, one per method x dataset x stage.

Two kinds of cell:

- **full**: the bundled ``world`` micro-CLIP (small, fast) on the full-size data: every test and
  validation image and every training text goes through the feature caches, so reading, memory
  and disk are exercised at the real N; a few training steps with the recipe's batch;
- **probe**: RN50 (random weights, same cost as trained ones) on a tiny subset of the same
  formats: per-image, per-text and per-step costs of the real backbone, from which the full
  recipe's time is extrapolated (see ``report``).

Each cell runs the recipe ``configs/experiment/<method>_<dataset>.yaml`` with overrides (paths,
backbone, limits) through the console script, with ``PhaseTimer`` added as a callback; its peak
RSS comes from ``wait4`` (the largest of the process and its waited-for children).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scale import TIMER_CLASS_PATH, TIMER_ENV_OUT, TIMER_ENV_T0
from scale.write import corpus_files, dataset_root

REPO = Path(__file__).resolve().parents[2]
BENCHMARKS = REPO / "benchmarks"
#: Which text file each method trains on, as (CLI option, corpus role).
TEXT_OPTION = {
    "taidpt": ("--data.captions_file", "captions"),
    "t2ipal": ("--data.captions_file", "captions"),
    "comc": ("--data.sentences_file", "comc"),
}
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


@dataclass
class Cell:
    """One subprocess: what it runs and, once run, what it measured."""

    method: str
    dataset: str
    stage: str  # train | stage1 | stage2 | generate
    kind: str  # full | probe
    backbone: str
    command: list[str]
    needs: str | None = None  # id of a cell whose output this one reads
    result: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.method}/{self.dataset}/{self.stage}/{self.kind}"

    @property
    def slug(self) -> str:
        return self.id.replace("/", "-")


@dataclass(frozen=True)
class Plan:
    """Where things are and how each kind of cell is sized."""

    out: Path
    full_steps: int = 3
    probe_steps: int = 1
    world_image_size: int = 64

    @property
    def data(self) -> Path:
        return self.out / "data"

    @property
    def subset(self) -> Path:
        return self.out / "subset"

    @property
    def cache(self) -> Path:
        return self.out / "cache"


def mlr_bench() -> str:
    """The console script of this interpreter's environment (as users run it)."""
    script = Path(sys.executable).with_name("mlr-bench")
    return str(script) if script.exists() else "mlr-bench"


def recipe(method: str, dataset: str) -> Path:
    return REPO / "configs" / "experiment" / f"{method}_{dataset}.yaml"


def _common(plan: Plan, cell_root: Path, kind: str, data_root: Path) -> list[str]:
    args = [
        "--data.root", str(data_root), "--data.cache_dir", str(plan.cache),
        "--trainer.default_root_dir", str(cell_root), "--trainer.accelerator", "cpu",
        "--trainer.devices", "1", "--trainer.num_sanity_val_steps", "0",
        "--trainer.max_epochs", "1", f"--trainer.callbacks+={TIMER_CLASS_PATH}", *QUIET,
    ]  # fmt: skip
    if kind == "full":
        args += ["--method.backbone", "world", "--method.pretrained", "bundled"]
        args += ["--data.image_size", str(plan.world_image_size)]
    else:
        args += ["--method.backbone", "RN50", "--method.pretrained", "none"]
    return args


def _probe_overrides(method: str) -> list[str]:
    """The probe keeps RN50's text work small: no template sentences (K copies are C x (K + 79)
    texts: 80 templates per class) and a one-prompt CoMC bank; both are extrapolated from the
    measured per-text cost instead."""
    if method == "pvp":
        return ["--method.pretrain_template_copies", "0", "--method.template_copies", "0"]
    if method == "comc":
        return ["--method.template_copies", "0", "--method.bank_templates", "single"]
    if method in ("taidpt", "t2ipal"):
        return ["--method.template_copies", "0"]
    return []


def method_cells(plan: Plan, method: str, dataset: str, kind: str) -> list[Cell]:
    """The cells of one method on one dataset (PVP: two stages; T2I-PAL: generate + train)."""
    data = plan.data if kind == "full" else plan.subset
    files = corpus_files(data, dataset)
    steps = str(plan.full_steps if kind == "full" else plan.probe_steps)
    backbone = "world" if kind == "full" else "RN50"

    def cell(stage: str, sub: str, extra: list[str], needs: str | None = None) -> Cell:
        made = Cell(method, dataset, stage, kind, backbone, [], needs)
        root = plan.out / "runs" / made.slug
        made.command = [
            mlr_bench(), sub, "--config", str(recipe(method, dataset)),
            *_common(plan, root, kind, dataset_root(data, dataset)),
            "--trainer.limit_train_batches", steps, *extra,
        ]  # fmt: skip
        if kind == "probe":
            made.command += _probe_overrides(method)
        return made

    if method == "zeroshot":
        return [cell("train", "train", [])]
    if method in ("taidpt", "comc"):
        option, role = TEXT_OPTION[method]
        return [cell("train", "train", [option, str(files[role])])]
    if method == "pvp":  # stage 2 finds stage 1's prompts by its corpus: both get the file
        stage1_text = ["--data.pretrain_sentences_file", str(files["pvp_stage1"])]
        first = cell(
            "stage1", "fit",
            ["--method.stage", "pretrain", *stage1_text, "--trainer.limit_val_batches", "0"],
        )  # fmt: skip
        # the recipes' stage-2 text: COCO captions on VOC (as the reference), else sentences
        stage2_text = (
            ["--data.captions_file", str(files["captions"])]
            if dataset == "voc2007"
            else ["--data.sentences_file", str(files["pvp_stage2"])]
        )
        second = cell(
            "stage2",
            "train",
            ["--method.stage", "finetune", *stage1_text, *stage2_text],
            needs=first.id,
        )
        return [first, second]
    if method == "t2ipal":
        gen_out = plan.out / "gen" / f"{dataset}-{kind}"
        size = str(plan.world_image_size)
        generate = Cell(
            method, dataset, "generate", kind, "world-renderer",
            [mlr_bench(), "generate", "--generator", "world", "--captions",
             str(files["generate"]), "--data", dataset, "--out", str(gen_out), "--size", size,
             "--no-progress"],
        )  # fmt: skip
        option, role = TEXT_OPTION[method]
        train = cell("train", "train", [option, str(files[role])], needs=generate.id)
        return [generate, train]
    raise ValueError(f"unknown method {method!r}")


def resolve_inputs(cell: Cell, done: dict[str, Cell], plan: Plan) -> str | None:
    """Add what a cell takes from the one it needs; a reason when that one did not succeed."""
    if cell.needs is None:
        return None
    before = done.get(cell.needs)
    if before is None or before.result.get("status") != "ok":
        return f"skipped: needs {cell.needs}, which did not succeed"
    if cell.method == "pvp":
        runs = plan.out / "runs" / before.slug
        found = sorted(runs.rglob("pvp_prompts.safetensors"), key=lambda p: p.stat().st_mtime)
        if not found:
            return f"skipped: {before.id} left no pvp_prompts.safetensors under {runs}"
        cell.command += ["--method.pretrained_prompts", str(found[-1])]
    if cell.method == "t2ipal":
        out = Path(before.command[before.command.index("--out") + 1])
        folders = sorted(out.glob("world-*"), key=lambda p: p.stat().st_mtime)
        if not folders:
            return f"skipped: {before.id} left no generated folder under {out}"
        cell.command += ["--data.generated_dir", str(folders[-1])]
    return None


# ---- running one cell ----------------------------------------------------------------------
def cache_dirs(root: Path) -> dict[str, int]:
    """Caches under the cache root and their disk usage (bytes): feature-cache folders, and
    the parsed corpora (``corpora/*.npz``) one by one."""
    if not root.is_dir():
        return {}
    sizes = {}
    for entry in root.iterdir():
        if entry.name.startswith("."):
            continue
        if entry.name == "corpora":
            for item in entry.glob("*.npz"):
                sizes[f"corpora/{item.name}"] = item.stat().st_blocks * 512
        elif entry.is_dir():
            sizes[entry.name] = sum(
                f.stat().st_blocks * 512 for f in entry.rglob("*") if f.is_file()
            )
    return sizes


def _kill_after(proc: subprocess.Popen, seconds: float, fired: list[bool]) -> threading.Timer:
    def kill() -> None:
        fired.append(True)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)

    timer = threading.Timer(seconds, kill)
    timer.daemon = True
    timer.start()
    return timer


def run_cell(cell: Cell, plan: Plan, timeout_s: float) -> dict[str, Any]:
    """Run one cell; its measurements (status ok / failed: ... / timed out)."""
    logs = plan.out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"{cell.slug}.log"
    timer_path = logs / f"{cell.slug}.timer.json"
    timer_path.unlink(missing_ok=True)
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "WANDB_MODE": "offline",
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(BENCHMARKS), os.environ.get("PYTHONPATH")])
        ),
        TIMER_ENV_OUT: str(timer_path),
        TIMER_ENV_T0: repr(time.time()),
    }
    before = cache_dirs(plan.cache)
    start = time.perf_counter()
    with open(log_path, "w") as log:
        log.write(" ".join(cell.command) + "\n\n")
        log.flush()
        proc = subprocess.Popen(
            cell.command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO,
            start_new_session=True,
        )  # fmt: skip
        fired: list[bool] = []
        killer = _kill_after(proc, timeout_s, fired)
        _, status, usage = os.wait4(proc.pid, 0)
        killer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    after = cache_dirs(plan.cache)
    timing = json.loads(timer_path.read_text()) if timer_path.is_file() else {}
    return {
        "status": _status(proc.returncode, fired, log_path, timeout_s),
        "wall_s": wall,
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "new_caches": {k: v for k, v in after.items() if k not in before},
        "timing": timing,
        "log": str(log_path),
        "command": cell.command,
    }


def _status(code: int, fired: list[bool], log: Path, timeout_s: float) -> str:
    if fired:
        return f"timed out after {timeout_s / 60:.0f} min"
    if code == 0:
        return "ok"
    return f"failed (exit {code}): {last_error(log)}"


def last_error(log: Path) -> str:
    """The last line that looks like an error in a cell's log (its one-line reason)."""
    lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    for line in reversed(lines):
        if "Error" in line or "error:" in line or "Killed" in line:
            return line[:300]
    return lines[-1][:300] if lines else "no output"
