"""`mlr-bench benchmark` under wrong inputs and faults: one message, the right exit code, and
nothing half-written or silently wrong (issue 15).

Real runs throughout: the bundled micro-CLIP on a tiny world, cells in-process where the
process model does not matter and real child processes where it does (kills, locks).
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from bench_fixtures import COMC_TINY as COMC_RECIPE
from bench_fixtures import TINY

from mlr_bench.benchmark.lock import LOCK
from mlr_bench.benchmark.matrix import DEFAULT_RECIPES
from mlr_bench.benchmark.process import pid_alive
from mlr_bench.cli import run_cli

ZEROSHOT = ["benchmark", "--methods", "zeroshot", "--data", "world", "--isolation", "in-process"]


def bench(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run ``mlr-bench <argv>`` in this process: (exit code, stdout, stderr)."""
    try:
        run_cli(argv)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (path -> bytes): 'nothing was written' is checked with it."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


# ---- defect 5: wrong inputs -> one message, exit 2, nothing written --------------------------
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--seeds", "1,,2"], "--seeds: empty item in '1,,2'"),
        (["--seeds", "1,2,"], "--seeds: empty item in '1,2,'"),
        (["--seeds", "x"], "--seeds: expected integers like 1,2,3, got 'x'"),
        (["--seeds", "-1"], "--seeds: -1 is out of range; seeds go from 0 to 4294967295"),
        (["--methods", "zeroshot,nope,bad"], "--methods: unknown method name(s) 'nope', 'bad'"),
        (["--data", "wrld"], "--data: unknown data name(s) 'wrld'; choose from: all,"),
        (["--recipes", "no/such/dir"], "--recipes: no/such/dir does not exist"),
        (["--max-epochs", "0"], "--max-epochs: expected a positive integer, got 0"),
    ],
)
def test_bad_option_is_one_message_exit_2(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    code, _, err = bench([*ZEROSHOT, "--out", str(out), *args], capsys)
    assert code == 2
    assert err.startswith(f"mlr-bench: error: {message}") and err.count("\n") == 1, err
    assert "Traceback" not in err and not out.exists()


def test_unknown_methods_message_lists_the_choices(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = bench([*ZEROSHOT, "--methods", "nope", "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "choose from: all, " in err and "zeroshot" in err and "comc" in err


def test_out_is_a_file_or_inside_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine\n")
    code, _, err = bench([*ZEROSHOT, "--out", str(a_file)], capsys)
    assert code == 2 and f"--out: {a_file} is a file; expected a folder" in err
    code, _, err = bench([*ZEROSHOT, "--out", str(a_file / "bench")], capsys)
    assert code == 2 and "--out: cannot write into" in err and "Not a directory" in err
    assert "Traceback" not in err and a_file.read_text() == "mine\n"


def test_a_file_where_a_cell_folder_goes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "zeroshot-world-s1").write_text("not a cell\n")
    code, _, err = bench([*ZEROSHOT, "--seeds", "1", "--out", str(out)], capsys)
    assert code == 2 and "is a file where cell zeroshot-world-s1 keeps its folder" in err
    assert sorted(p.name for p in out.iterdir()) == ["zeroshot-world-s1"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_unwritable_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        code, _, err = bench([*ZEROSHOT, "--out", str(locked / "bench")], capsys)
    finally:
        locked.chmod(0o700)
    assert code == 2 and "--out: cannot write into" in err and "Permission denied" in err


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("{not json", "is not a readable result"),
        ('{"status": "ok"}', "is not a cell result"),
        (  # a result from before settings were recorded: never taken as this run's
            '{"status": "ok", "method": "zeroshot", "dataset": "world", "seed": 1, '
            '"metrics": {"mAP": 50.0}}',
            "its settings were not recorded (run by an older mlr-bench)",
        ),
    ],
)
def test_broken_or_unkeyed_result_is_refused_not_rerun_over(
    content: str, problem: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    (out / "zeroshot-world-s1").mkdir(parents=True)
    (out / "zeroshot-world-s1" / "result.json").write_text(content)
    before = snapshot(out)
    code, _, err = bench([*ZEROSHOT, "--seeds", "1", "--out", str(out)], capsys)
    assert code == 2 and "nothing was run" in err and problem in err
    assert "add --rerun" in err and "use another --out" in err
    assert snapshot(out) == before  # not even benchmark.json


# ---- defect 2: a cell is keyed by its full settings ------------------------------------------
@pytest.mark.slow
def test_other_settings_are_refused_and_leaderboard_covers_the_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    base = [*ZEROSHOT, "--out", str(out), "--seeds", "1"]
    code, _, err = bench([*base, "--max-epochs", "1", "--", *TINY], capsys)
    assert code == 0, err
    stored = json.loads((out / "zeroshot-world-s1" / "result.json").read_text())
    assert stored["settings"]["max_epochs"] == 1 and stored["fingerprint"]
    finished = snapshot(out)

    changed = [
        (["--max-epochs", "2", "--", *TINY], "--max-epochs: 1 (stored) -> 2 (now)"),
        (["--max-epochs", "1", "--", *TINY[:-1], "100"], "args after --: '--data.num_test 60"),
        (
            ["--max-epochs", "1", "--recipes", "none", "--", *TINY],
            f"recipe: {DEFAULT_RECIPES / 'zeroshot_world.yaml'} (stored) -> none (--method/--data)",
        ),
        (
            ["--max-epochs", "1", "--logger", "tensorboard", "--", *TINY],
            "--logger: csv (stored) -> tensorboard (now)",
        ),
    ]
    for args, difference in changed:
        code, _, err = bench([*base, *args], capsys)
        assert code == 2, err
        assert "1 cell(s) there are finished with other settings" in err
        assert f"zeroshot-world-s1: {difference}" in err
        assert "use another --out" in err and "add --rerun" in err
        assert snapshot(out) == finished  # leaderboard, tables, cell: untouched

    # another seed with the same settings: runs; the leaderboard covers both seeds
    code, printed, err = bench([*ZEROSHOT, "--out", str(out), "--seeds", "2",
                                "--max-epochs", "1", "--", *TINY], capsys)  # fmt: skip
    assert code == 0 and "1 cells: 1 run now, 0 done before" in printed, err
    board = (out / "leaderboard.md").read_text()
    assert "Covers every finished cell in" in board and "plus 1 other finished cell(s)" in board
    assert "seeds 1, 2" in board and "(n=" not in board and "Warning" not in board
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert sorted(r["seed"] for r in rows) == [1, 2]

    # --rerun replaces the cell; the leaderboard then says the settings are mixed
    code, _, err = bench([*base, "--max-epochs", "2", "--rerun", "--", *TINY], capsys)
    assert code == 0, err
    stored = json.loads((out / "zeroshot-world-s1" / "result.json").read_text())
    assert stored["settings"]["max_epochs"] == 2
    board = (out / "leaderboard.md").read_text()
    assert "**Warning: not all of these cells were run with the same settings" in board
    assert "--max-epochs 2;" in board and "--max-epochs 1;" in board


# ---- defect 4: a failure is never a result; leftovers of a killed cell are re-run ------------
@pytest.mark.slow
def test_stale_error_and_killed_leftovers_are_rerun(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    recipe = recipes / "zeroshot_world.yaml"
    good = (DEFAULT_RECIPES / "zeroshot_world.yaml").read_text()
    recipe.write_text(good.replace("templates: single", "templates: single\n    no_such_option: 1"))
    out = tmp_path / "out"
    argv = [*ZEROSHOT, "--out", str(out), "--seeds", "1", "--recipes", str(recipes)]
    argv += ["--max-epochs", "1", "--", *TINY]
    code, _, err = bench(argv, capsys)
    cell = out / "zeroshot-world-s1"
    assert code == 1 and "1 cell(s) failed" in err and (cell / "error.txt").is_file()
    assert not (cell / "result.json").exists()

    recipe.write_text(good)  # fixed: the failed cell runs again
    code, _, err = bench(argv, capsys)
    assert code == 0, err
    assert (cell / "result.json").is_file() and not (cell / "error.txt").exists()
    assert "## Failed cells" not in (out / "leaderboard.md").read_text()

    # an error report beside a result (e.g. another DDP rank failed): not done, run again
    (cell / "error.txt").write_text("cell zeroshot-world-s1 failed: rank 1 died\n")
    # what a kill leaves: the cell started, wrote some files, never its result
    (cell / "result.json").unlink()
    (cell / "checkpoints").mkdir()
    (cell / "checkpoints" / "half.ckpt").write_bytes(b"\0" * 10)
    code, printed, err = bench(argv, capsys)
    assert code == 0 and "1 run now" in printed, err
    assert (cell / "result.json").is_file() and not (cell / "error.txt").exists()
    assert not (cell / "checkpoints").exists()


# ---- defect 1: cells die with the benchmark and are locked while they run --------------------
def mlr_bench_command() -> list[str]:
    script = Path(sys.executable).parent / "mlr-bench"
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from mlr_bench.cli import main; sys.exit(main())"]


def long_benchmark(tmp_path: Path) -> list[str]:
    """A benchmark whose one cell (CoMC, 1000 epochs) runs until it is killed."""
    recipes = tmp_path / "recipes"
    recipes.mkdir(exist_ok=True)
    (recipes / "comc_world.yaml").write_text(COMC_RECIPE)
    args = ["benchmark", "--methods", "comc", "--data", "world", "--seeds", "1"]
    args += ["--out", str(tmp_path / "out"), "--recipes", str(recipes), "--max-epochs", "1000"]
    return [*mlr_bench_command(), *args, "--", *TINY]


def start(command: list[str], tmp_path: Path, tag: str) -> subprocess.Popen:
    """The benchmark as a real process, its output to a file (read when a check fails)."""
    log = (tmp_path / f"{tag}.log").open("w")
    return subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, env=os.environ, preexec_fn=default_sigint
    )


def default_sigint() -> None:
    """Children of a pytest-xdist worker may inherit SIGINT ignored (then Python installs no
    KeyboardInterrupt handler): give them the default disposition, as a terminal would."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wait_for_cell_pid(cell_dir: Path, bench: subprocess.Popen, timeout: float = 240) -> int:
    """The cell process's pid, from the lock file, once the benchmark has started it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert bench.poll() is None, "the benchmark ended before its cell started"
        text = (cell_dir / LOCK).read_text() if (cell_dir / LOCK).exists() else ""
        for line in text.splitlines():
            if line.startswith("cell_pid="):
                return int(line.split("=", 1)[1])
        time.sleep(0.3)
    raise AssertionError("the cell process did not start in time")


def wait_gone(pid: int, timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.2)
    return False


def lock_is_free(cell_dir: Path) -> bool:
    with (cell_dir / LOCK).open("a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(f, fcntl.LOCK_UN)
        return True


@pytest.mark.slow
def test_second_benchmark_skips_a_running_cell_and_sigterm_kills_it(tmp_path: Path) -> None:
    command = long_benchmark(tmp_path)
    cell_dir = tmp_path / "out" / "comc-world-s1"
    first = start(command, tmp_path, "first")
    try:
        cell_pid = wait_for_cell_pid(cell_dir, first)
        started = (cell_dir / "cell.json").read_bytes()
        second = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert second.returncode == 1, second.stderr
        expected = (
            f"cell comc-world-s1 is being run by pid {first.pid} (cell process pid {cell_pid}); "
            "skipped"
        )
        assert expected in second.stderr
        assert "another benchmark is running them" in second.stderr
        assert pid_alive(cell_pid) and (cell_dir / "cell.json").read_bytes() == started
        assert "running elsewhere" in (tmp_path / "out" / "leaderboard.md").read_text()

        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
        if first.poll() is None:
            first.kill()
    assert wait_gone(cell_pid), "the cell process outlived its benchmark"
    assert not (cell_dir / "result.json").exists() and not (cell_dir / "error.txt").exists()
    assert lock_is_free(cell_dir)
    assert "stopped by SIGTERM" in (tmp_path / "first.log").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGKILL])
def test_cell_dies_with_its_benchmark(signum: int, tmp_path: Path) -> None:
    cell_dir = tmp_path / "out" / "comc-world-s1"
    bench_process = start(long_benchmark(tmp_path), tmp_path, "bench")
    try:
        cell_pid = wait_for_cell_pid(cell_dir, bench_process)
        bench_process.send_signal(signum)
        code = bench_process.wait(timeout=60)
    finally:
        if bench_process.poll() is None:
            bench_process.kill()
    assert code == (130 if signum == signal.SIGINT else -signal.SIGKILL)
    assert wait_gone(cell_pid), "the cell process outlived its benchmark"
    assert not (cell_dir / "result.json").exists() and lock_is_free(cell_dir)


# ---- defect 3: W&B offline runs are self-contained ---------------------------------------------
def test_wandb_offline_run_keeps_its_media_and_says_how_to_sync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import numpy as np
    import wandb

    from mlr_bench.loggers import MLRWandbLogger

    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for var in ("WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "XDG_DATA_HOME"):
        monkeypatch.delenv(var, raising=False)
    for var in ("WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_MODE", "offline")

    logger = MLRWandbLogger(save_dir=str(tmp_path / "runs"), name="media")
    image = wandb.Image(np.full((16, 16, 3), 200, dtype=np.uint8))
    logger.log_metrics({"t": wandb.Table(columns=["i", "image"], data=[[0, image]])}, step=0)
    logger.finish()

    assert not (home / ".local" / "share" / "wandb").exists()
    (run_dir,) = (tmp_path / "runs").rglob("offline-run-*")
    staged = [p for p in (run_dir / "artifacts" / "staging").iterdir() if p.is_file()]
    assert staged and any(p.read_bytes().startswith(b"\x89PNG") for p in staged)
    (record,) = run_dir.glob("run-*.wandb")
    # wandb-core may still be flushing the record after finish() on a loaded machine: poll
    staging = str(run_dir / "artifacts" / "staging").encode()
    deadline = time.monotonic() + 60
    while staging not in record.read_bytes() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert staging in record.read_bytes()
    assert f"upload it with: wandb sync {run_dir}" in capsys.readouterr().err
    assert "WANDB_DATA_DIR" not in os.environ  # restored for the next run


def test_ctrl_c_delivered_to_another_thread_still_stops_the_cell_wait(tmp_path: Path) -> None:
    """A process-directed signal may land on any thread (tqdm's monitor, ...): the benchmark's
    main thread, waiting for its cell, must still run the handler and stop within a poll."""
    script = textwrap.dedent(
        """
        import signal, sys, threading, time
        from mlr_bench.benchmark.process import run_cell_process

        def poke():
            time.sleep(1.0)
            signal.pthread_kill(threading.get_ident(), signal.SIGINT)  # this helper thread

        threading.Thread(target=poke, daemon=True).start()
        start = time.monotonic()
        try:
            run_cell_process([sys.executable, "-c", "import time; time.sleep(120)"], sys.stdout)
        except KeyboardInterrupt:
            print(f"interrupted after {time.monotonic() - start:.1f} s")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=90, cwd=tmp_path,
        preexec_fn=default_sigint,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    seconds = float(done.stdout.split("interrupted after ")[1].split()[0])
    assert seconds < 10, done.stdout


# ---- parallel cells (--workers) ----------------------------------------------------------------
@pytest.mark.slow
def test_parallel_cells_die_with_their_benchmark_on_ctrl_c(tmp_path: Path) -> None:
    """Two long cells at once, started from worker threads: Ctrl-C on the benchmark stops
    both (each worker kills its cell's process group) and frees their locks."""
    command = long_benchmark(tmp_path)
    command[command.index("--seeds") + 1] = "1,2"
    command[command.index("--") : command.index("--")] = ["--workers", "2"]
    bench_process = start(command, tmp_path, "bench")
    cells = [tmp_path / "out" / f"comc-world-s{seed}" for seed in (1, 2)]
    try:
        pids = [wait_for_cell_pid(cell, bench_process) for cell in cells]
        bench_process.send_signal(signal.SIGINT)
        code = bench_process.wait(timeout=60)
    finally:
        if bench_process.poll() is None:
            bench_process.kill()
    assert code == 130, (tmp_path / "bench.log").read_text()[-2000:]
    assert all(wait_gone(pid) for pid in pids), "a cell process outlived its benchmark"
    assert all(lock_is_free(cell) and not (cell / "result.json").exists() for cell in cells)


def test_workers_get_one_thread_and_devices_round_robin(monkeypatch) -> None:
    from mlr_bench.benchmark.runner import worker_environments

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    envs = worker_environments(3)
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["3", "5", "3"]
    assert all(e["OMP_NUM_THREADS"] == "1" for e in envs)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert worker_environments(2) == [{"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}] * 2


def test_workers_refuse_in_process_cells(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = bench([*ZEROSHOT, "--workers", "2", "--isolation", "in-process"], capsys)
    assert code == 2 and "does not combine with --isolation in-process" in err
    code, _, err = bench([*ZEROSHOT, "--workers", "0"], capsys)
    assert code == 2 and "--workers: expected 1 or more, got 0" in err


def test_slurm_launcher_without_slurm_is_one_clear_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["benchmark", "--methods", "zeroshot", "--data", "world", "--seeds", "1"]
    code, _, err = bench([*argv, "--out", str(tmp_path / "out"), "--launcher", "slurm"], capsys)
    assert code == 2 and "--launcher slurm:" in err and "slurm" in err.lower()
    code, _, err = bench([*ZEROSHOT, "--launcher", "slurm"], capsys)
    assert code == 2 and "does not combine with --isolation in-process" in err


def test_a_failing_tuned_cell_is_named_with_its_track(tmp_path: Path) -> None:
    """The child process rebuilds the cell with its track: error.txt names the tuned cell."""
    import subprocess
    import sys

    cell_dir = tmp_path / "comc-world-tuned-s1"
    cell_dir.mkdir()
    command = [sys.executable, "-m", "mlr_bench.benchmark.worker", str(cell_dir), "comc"]
    command += ["world", "1", "--track", "tuned", "--", "fit", "--method", "comc"]
    command += ["--data", "world", "--no_such_option", "1"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr
    assert (cell_dir / "error.txt").read_text().startswith("cell comc-world-tuned-s1 failed")
