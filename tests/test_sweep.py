"""`mlr-bench sweep`: search spaces, seeded proposals, resuming, validation-only selection,
bad input, and the benchmark's tuned track."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from bench_fixtures import COMC_TINY, TINY

from mlr_bench import registry
from mlr_bench.benchmark import CellSettings, run_benchmark
from mlr_bench.benchmark.matrix import DEFAULT_RECIPES, Cell, cell_args, fingerprint
from mlr_bench.benchmark.report import by_track, leaderboard_markdown, to_rows
from mlr_bench.cli import run_cli
from mlr_bench.errors import MLRBenchError
from mlr_bench.sweep import study as st
from mlr_bench.sweep.command import SweepSpec, run_sweep, search_dims, spec_from_args
from mlr_bench.sweep.probe import ForbiddenTestStage, TrialProbe
from mlr_bench.sweep.space import LogScale, check_space, declared_space, resolve
from mlr_bench.sweep.trial import TrialJob, run_trial_here
from mlr_bench.sweep.trial import run_in_process as run_trial_in_process

FIT_TINY = ["--trainer.max_epochs", "1", *TINY]


def tiny_recipes(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "comc_world.yaml").write_text(COMC_TINY)
    return folder


def overrides(args: tuple[str, ...]) -> dict[str, str]:
    """``--model.X v`` pairs of a trial's arguments."""
    return {a[len("--model.") :]: args[i + 1] for i, a in enumerate(args) if a.startswith("--m")}


class FakeRunner:
    """A trial without training: a val mAP that is a smooth function of the parameters
    (best at lr 3e-3), written like a real trial; ``interrupt_at`` simulates Ctrl-C."""

    def __init__(self, interrupt_at: int | None = None) -> None:
        self.ran: list[int] = []
        self.interrupt_at = interrupt_at

    def __call__(self, job: TrialJob) -> None:
        if job.number == self.interrupt_at:
            raise KeyboardInterrupt
        self.ran.append(job.number)
        params = overrides(job.args)
        value = 60 - 10 * (math.log10(float(params["lr"])) + 2.5) ** 2
        record = {"number": job.number, "val_mAP": value, "history": [value], "best_epoch": 0}
        (job.trial_dir / "trial.json").write_text(json.dumps(record))


def fake_spec(out: Path, trials: int = 4, **kwargs) -> SweepSpec:
    return SweepSpec(method="comc", dataset="world", trials=trials, out=out, **kwargs)


def params_of(out: Path) -> list[dict]:
    data = json.loads((out / "summary.json").read_text())
    return [t["params"] for t in data["all_trials"] if t["state"] == "complete"]


# ---- search spaces ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["zeroshot", "taidpt", "comc", "pvp", "t2ipal"])
def test_search_spaces_are_equal_budget_and_centred_on_the_recipe(name: str) -> None:
    cls = registry.entries(registry.METHODS_GROUP)[name].load()
    space = declared_space(cls)
    check_space(cls, space)  # __init__ arguments, no budget setting
    assert name == "zeroshot" or len(space) >= 4
    spec = SweepSpec(method=name, dataset="world", trials=1, out=Path("unused"))
    for dim in search_dims(spec):
        if dim.kind == "log":
            assert math.isclose(math.sqrt(dim.low * dim.high), dim.reference, rel_tol=1e-9)
        elif dim.kind == "uniform":
            assert dim.low <= dim.reference <= dim.high
        else:
            assert dim.options[0] == dim.reference  # the recipe's choice


def test_reference_values_come_from_the_recipe_of_the_dataset() -> None:
    """TaI-DPT's NUS-WIDE recipe sets lr 1e-3 and spatial scale 4: searched around those."""
    dims = {d.name: d for d in search_dims(SweepSpec("taidpt", "nuswide", 1, Path("unused")))}
    assert dims["lr"].reference == pytest.approx(1e-3)
    assert (dims["lr"].low, dims["lr"].high) == pytest.approx((1e-4, 1e-2))
    assert dims["image_spatial_scale"].reference == pytest.approx(4.0)


def test_budget_settings_cannot_be_searched() -> None:
    cls = registry.entries(registry.METHODS_GROUP)["comc"].load()
    for name in ("template_copies", "warmup_epochs"):
        with pytest.raises(ValueError, match="budget"):
            resolve(cls, {name: LogScale(2)}, {})


# ---- the study: seeds, resume, stale trials ---------------------------------------------------
@pytest.mark.parametrize("sampler", ["tpe", "random"])
def test_seeded_sampler_proposes_the_same_params(tmp_path: Path, sampler: str) -> None:
    runs = {}
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        run_sweep(fake_spec(tmp_path / name, sampler=sampler, sampler_seed=seed), FakeRunner())
        runs[name] = params_of(tmp_path / name)
    assert runs["a"] == runs["b"] and len(runs["a"]) == 4
    assert runs["a"][0] == {  # trial 0: the reference hyperparameters of the recipe
        "lr": 1e-3, "weight_decay": 5e-4, "noise_std": 0.1, "margin": 1.0,
        "fusion_weight": 0.3, "merge_rate": 0.5,
    }  # fmt: skip
    assert runs["a"][1:] != runs["c"][1:]


def test_interrupted_sweep_resumes_with_the_same_proposals(tmp_path: Path) -> None:
    """Ctrl-C during trial 2, then the same command: N trials done, trial 2's parameters
    retried, nothing run twice, and the same proposals as a sweep never interrupted."""
    whole = tmp_path / "whole"
    run_sweep(fake_spec(whole), FakeRunner())
    out = tmp_path / "out"
    first = FakeRunner(interrupt_at=2)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(fake_spec(out), first)
    assert first.ran == [0, 1]
    again = FakeRunner()
    outcome = run_sweep(fake_spec(out), again)
    assert again.ran == [3, 4]  # the retry of 2, then one new trial
    trials = outcome.summary["all_trials"]
    assert [t["state"] for t in trials] == ["complete", "complete", "fail", "complete", "complete"]
    assert trials[3]["retry_of"] == 2 and trials[3]["params"] == trials[2]["params"]
    assert outcome.summary["trials"] | {"requested": 4} == {
        "requested": 4, "complete": 4, "failed": 0, "running": 0, "waiting": 0, "interrupted": 1,
    }  # fmt: skip
    assert params_of(out) == params_of(whole)
    assert yaml.safe_load((out / "best.yaml").read_text()) == yaml.safe_load(
        (whole / "best.yaml").read_text()
    )


def test_more_trials_extend_the_study(tmp_path: Path) -> None:
    run_sweep(fake_spec(tmp_path, trials=2), FakeRunner())
    runner = FakeRunner()
    outcome = run_sweep(fake_spec(tmp_path, trials=3), runner)
    assert runner.ran == [2] and outcome.summary["trials"]["complete"] == 3


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_running_trial_of_a_dead_sweep_is_failed_and_retried(tmp_path: Path) -> None:
    spec = fake_spec(tmp_path, trials=3)
    run_sweep(fake_spec(tmp_path, trials=1), FakeRunner())
    study = optuna.load_study(study_name=spec.name, storage=spec.storage_url)
    stale = study.ask()  # as left by a sweep killed with SIGKILL during the trial
    stale.suggest_float("lr", 1e-4, 1e-2, log=True)
    stale.set_user_attr(st.OWNER, {**st.owner(), "pid": dead_pid()})
    alive = study.ask()  # another sweep on this machine, alive, working on the same study
    parent = os.getppid()
    alive.set_user_attr(st.OWNER, {**st.owner(), "pid": parent, "start": st._start_ticks(parent)})
    runner = FakeRunner()
    outcome = run_sweep(spec, runner)
    trials = outcome.summary["all_trials"]
    assert [t["state"] for t in trials] == ["complete", "fail", "running", "complete"]
    assert trials[1]["interrupted"] == "its sweep process died"
    assert trials[3]["retry_of"] == 1 and trials[3]["params"]["lr"] == stale.params["lr"]
    assert runner.ran == [3]  # trial 0 done, trial 2 runs elsewhere: only the retry was left
    assert outcome.summary["trials"]["running"] == 1


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used")
def test_trial_without_heartbeat_on_another_machine_is_retried(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(st, "HEARTBEAT_S", 1)
    monkeypatch.setattr(st, "GRACE_S", 1)
    spec = fake_spec(tmp_path, trials=2)
    run_sweep(fake_spec(tmp_path, trials=1), FakeRunner())
    study = optuna.load_study(study_name=spec.name, storage=st.open_storage(spec.storage_url))
    lost = study.ask()  # its machine went down: no heartbeat since
    lost.suggest_float("lr", 1e-4, 1e-2, log=True)
    lost.set_user_attr(st.OWNER, {"host": "another-node", "pid": 1, "start": None})
    study._storage.record_heartbeat(lost._trial_id)
    time.sleep(2.2)
    outcome = run_sweep(spec, FakeRunner())
    trials = outcome.summary["all_trials"]
    assert [t["state"] for t in trials] == ["complete", "fail", "complete"]
    assert trials[2]["retry_of"] == 1 and trials[2]["params"]["lr"] == lost.params["lr"]


def test_study_with_other_settings_is_refused(tmp_path: Path) -> None:
    run_sweep(fake_spec(tmp_path, trials=1), FakeRunner())
    with pytest.raises(MLRBenchError, match=r"other settings.*\n  seed: 0 \(study\) -> 5 \(now\)"):
        run_sweep(fake_spec(tmp_path, trials=2, seed=5), FakeRunner())


def test_failing_trials_stop_the_sweep_after_three_in_a_row(tmp_path: Path) -> None:
    def failing(job: TrialJob) -> None:
        (job.trial_dir / "error.txt").write_text("trial failed: exit code 2: error: broken\n")

    outcome = run_sweep(fake_spec(tmp_path, trials=10), failing)
    assert outcome.failed == [0, 1, 2] and outcome.stopped_early
    assert outcome.summary["best"] is None and not (tmp_path / "best.yaml").exists()
    assert outcome.summary["all_trials"][0]["error"] == "exit code 2: error: broken"


# ---- bad input --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--method", "nope", "--data", "world", "--trials", "2"], "unknown method 'nope'; exp"),
        (["--method", "comc", "--data", "mars", "--trials", "2"], "--data: unknown data 'mars'"),
        (["--method", "comc", "--data", "world", "--trials", "0"], "expected 1 or more, got 0"),
        (["--method", "comc", "--data", "world", "--trials", "2", "--seed", "-1"], "--seed: -1"),
    ],
)  # fmt: skip
def test_bad_arguments_fail_before_anything_runs(argv: list[str], message: str) -> None:
    with pytest.raises(MLRBenchError, match=message):
        spec_from_args(argv)


def test_unreachable_storage_is_one_message(tmp_path: Path, capsys) -> None:
    url = "sqlite:////nonexistent-folder/deeper/study.db"
    argv = ["sweep", "--method", "comc", "--data", "world", "--trials", "2"]
    with pytest.raises(SystemExit) as exit_info:
        run_cli([*argv, "--out", str(tmp_path), "--storage", url])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"--storage: cannot open '{url}'" in err and "expected a reachable database URL" in err
    assert "postgresql://user:***@" in st.display_url("postgresql://user:secret@host/db")


def test_searched_parameters_cannot_be_fixed_after_dashes(tmp_path: Path) -> None:
    spec = fake_spec(tmp_path, extra_args=["--method.lr", "0.1"])
    with pytest.raises(MLRBenchError, match=r"--method\.lr is a searched parameter of comc"):
        run_sweep(spec, FakeRunner())
    with pytest.raises(MLRBenchError, match="--seed_everything is not for a sweep"):
        run_sweep(fake_spec(tmp_path, extra_args=["--seed_everything=3"]), FakeRunner())


def test_missing_optuna_is_a_clear_message(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "optuna", None)
    with pytest.raises(MLRBenchError, match=r"pip install 'mlr-bench\[sweep\]'"):
        st.import_optuna()


# ---- validation only --------------------------------------------------------------------------
def test_probe_refuses_the_test_stage() -> None:
    with pytest.raises(ForbiddenTestStage, match="never runs the test stage"):
        TrialProbe().on_test_start(None, None)  # type: ignore[arg-type]


@pytest.mark.slow
def test_a_trial_that_would_test_fails_without_a_test_metric(tmp_path: Path) -> None:
    """Even `train` (fit + test) in a trial's place stops at the test stage: the probe."""
    recipes = tiny_recipes(tmp_path / "recipes")
    spec = SweepSpec("comc", "world", 1, tmp_path / "out", recipes=recipes, extra_args=FIT_TINY)
    from mlr_bench.sweep.command import trial_args

    trial_dir = tmp_path / "trial"
    trial_dir.mkdir()
    args = ("train", *trial_args(spec, trial_dir, {"lr": 1e-3})[1:])
    with pytest.raises(ForbiddenTestStage):
        run_trial_here(TrialJob(0, trial_dir, args))
    run_trial_in_process(TrialJob(0, trial_dir, args))
    assert "ForbiddenTestStage" in (trial_dir / "error.txt").read_text()
    assert not list(trial_dir.rglob("results_test.json"))


# ---- real sweeps on the tiny world ------------------------------------------------------------
@pytest.mark.slow
def test_sweep_writes_best_yaml_that_train_accepts(tmp_path: Path, capsys) -> None:
    recipes = tiny_recipes(tmp_path / "recipes")
    out = tmp_path / "sweep"
    argv = ["sweep", "--method", "comc", "--data", "world", "--trials", "2", "--out", str(out)]
    argv += ["--recipes", str(recipes), "--isolation", "in-process", "--sampler", "random"]
    run_cli([*argv, "--", *FIT_TINY])  # exit code 0: returns
    printed = capsys.readouterr().out
    assert "trials: 2 done, 0 failed" in printed and "best val mAP" in printed
    summary = json.loads((out / "summary.json").read_text())
    best = summary["best"]
    assert summary["trials"]["complete"] == 2 and summary["sampler"] == "random"
    assert 0 < best["val_mAP"] <= 100 and best["optimizer_steps"] > 0
    text = (out / "best.yaml").read_text()
    assert text.startswith("# mlr-bench sweep: best trial of study 'comc-world'")
    assert f"best val/mAP {best['val_mAP']:.2f} (trial {best['number']})" in text
    chosen = yaml.safe_load(text)["model"]["init_args"]
    assert chosen == best["params"] and set(chosen) == set(summary["search_space"])
    # validation only: no trial ran the test stage or wrote a test metric
    assert not list(out.rglob("results_test.json")) and not list(out.rglob("scores_test.npz"))
    for trial in ("trial-0000", "trial-0001"):
        args = json.loads((out / trial / "trial.json").read_text())["args"]
        assert args[0] == "fit" and "--config" in args

    run = tmp_path / "train"
    run_cli([
        "train", "--config", str(recipes / "comc_world.yaml"), "--config", str(out / "best.yaml"),
        "--trainer.default_root_dir", str(run), *FIT_TINY,
    ])  # fmt: skip
    (config,) = run.rglob("config.yaml")
    used = yaml.safe_load(config.read_text())["model"]["init_args"]
    assert used["lr"] == pytest.approx(chosen["lr"]) and used["template_copies"] == 1
    assert list(run.rglob("results_test.json"))


def processes_mentioning(text: str) -> list[int]:
    """Pids whose command line mentions ``text`` (Linux)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text in cmdline.read_text(errors="replace"):
                found.append(int(cmdline.parent.name))
        except OSError:
            continue
    return found


@pytest.mark.slow
def test_killed_sweep_resumes_without_duplicate_work(tmp_path: Path) -> None:
    """SIGKILL the sweep process during trial 1 (each trial in its own process, which dies
    with it); the same command again finishes the study: 3 trials done, trial 0 not run
    again, the stale trial 1 failed and retried once with its parameters."""
    recipes = tiny_recipes(tmp_path / "recipes")
    out = tmp_path / "sweep"
    argv = ["--method", "comc", "--data", "world", "--trials", "3", "--out", str(out)]
    argv += ["--recipes", str(recipes)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "mlr_bench.cli", "sweep", *argv, "--", *FIT_TINY]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while not ((out / "trial-0000/trial.json").exists() and (out / "trial-0001").exists()):
            assert proc.poll() is None and time.monotonic() < deadline, "first trial never ended"
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    deadline = time.monotonic() + 10  # the trial's process dies with the sweep
    while processes_mentioning(str(out / "trial-0001")) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not processes_mentioning(str(out / "trial-0001"))
    first = (out / "trial-0000/trial.json").stat().st_mtime_ns
    killed = json.loads((out / "summary.json").read_text())
    assert killed["trials"]["complete"] == 1

    spec = spec_from_args([*argv, "--isolation", "in-process", "--", *FIT_TINY])  # faster
    outcome = run_sweep(spec)
    trials = outcome.summary["all_trials"]
    assert [t["state"] for t in trials] == ["complete", "fail", "complete", "complete"]
    assert trials[1]["interrupted"] == "its sweep process died"
    assert trials[2]["retry_of"] == 1 and trials[2]["params"] == trials[1]["params"]
    assert outcome.ran == [2, 3]
    assert (out / "trial-0000/trial.json").stat().st_mtime_ns == first
    assert outcome.summary["trials"]["complete"] == 3 and (out / "best.yaml").is_file()


@pytest.mark.slow
def test_zeroshot_sweep_evaluates_its_template_choices_once_each(tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    spec = SweepSpec("zeroshot", "world", 5, out, isolation="in-process", extra_args=TINY)
    outcome = run_sweep(spec)
    rows = outcome.summary["all_trials"]
    assert [r["params"]["templates"] for r in rows] == ["single", "ensemble"]
    assert outcome.summary["notes"][0].startswith("the search space of zeroshot has 2 point(s)")
    assert yaml.safe_load((out / "best.yaml").read_text())["model"]["init_args"]["templates"]
    assert not list(out.rglob("results_test.json"))


# ---- the benchmark's tuned track --------------------------------------------------------------
def record(method: str, seed: int, mAP: float, track: str | None = None) -> dict:
    settings = {"track": track} if track else {}
    return {
        "method": method, "dataset": "world", "seed": seed, "status": "ok", "backbone": "world",
        "weights": "pretrained", "metrics": {"mAP": mAP, "CF1": 1.0, "OF1": 1.0},
        "settings": settings,
    }  # fmt: skip


def test_leaderboard_labels_tuned_rows_and_never_merges_tracks() -> None:
    records = [record("pvp", 1, 50.0), record("pvp", 2, 52.0)]
    records += [record("pvp", 1, 60.0, "tuned"), record("pvp", 2, 62.0, "tuned")]
    labelled = by_track(records)
    text = leaderboard_markdown("t", labelled, ["pvp", "pvp (tuned)"], ["world"], [1, 2])
    assert "| pvp | 51.00 ± 1.00" in text and "| pvp (tuned) | **61.00 ± 1.00**" in text
    assert "**Tracks:** rows marked *(tuned)*" in text
    columns, rows = to_rows(records)
    assert columns[:2] == ["method", "track"] and [r["track"] for r in rows][1:3] == [
        "reference", "tuned",
    ]  # fmt: skip
    assert "track" not in to_rows(records[:2])[0]  # no tuned cell: tables as before
    plain = leaderboard_markdown("t", records[:2], ["pvp"], ["world"], [1, 2])
    assert "Tracks" not in plain


def test_tuned_cells_run_with_the_sweeps_config_and_their_own_key(tmp_path: Path) -> None:
    best = tmp_path / "tuned" / "comc-world" / "best.yaml"
    best.parent.mkdir(parents=True)
    best.write_text("model:\n  init_args:\n    lr: 0.002\n")
    settings = CellSettings(recipes=DEFAULT_RECIPES, tuned=tmp_path / "tuned")
    ref, tuned = Cell("comc", "world", 1), Cell("comc", "world", 1, "tuned")
    assert (ref.name, tuned.name) == ("comc-world-s1", "comc-world-tuned-s1")
    assert str(best) not in cell_args(ref, tmp_path, settings)
    args = cell_args(tuned, tmp_path, settings)
    assert args[args.index(str(best)) - 1] == "--config"
    from mlr_bench.benchmark.matrix import cell_settings

    stored = cell_settings(ref, settings)
    assert "track" not in stored  # reference cells keep the key they had before tracks
    assert fingerprint(stored) == fingerprint(cell_settings(ref, CellSettings()))
    assert fingerprint(cell_settings(tuned, settings)) != fingerprint(stored)


def test_benchmark_refuses_a_tuned_folder_without_best_yaml(tmp_path: Path, capsys) -> None:
    argv = ["benchmark", "--methods", "comc,taidpt", "--data", "world", "--seeds", "1"]
    (tmp_path / "tuned" / "comc-world").mkdir(parents=True)
    (tmp_path / "tuned" / "comc-world" / "best.yaml").write_text("model: {init_args: {}}\n")
    with pytest.raises(SystemExit) as exit_info:
        run_cli([*argv, "--out", str(tmp_path / "out"), "--tuned", str(tmp_path / "tuned")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "no best.yaml for taidpt-world" in err and "mlr-bench sweep --method taidpt" in err


@pytest.mark.slow
def test_benchmark_runs_both_tracks(tmp_path: Path) -> None:
    recipes = tiny_recipes(tmp_path / "recipes")
    best = tmp_path / "tuned" / "comc-world" / "best.yaml"
    best.parent.mkdir(parents=True)
    best.write_text("# from a sweep\nmodel:\n  init_args:\n    lr: 0.005\n")
    settings = CellSettings(recipes=recipes, extra_args=TINY, max_epochs=1, tuned=best.parents[1])
    result = run_benchmark(
        ["comc"], ["world"], [1], tmp_path / "out", settings, isolation="in-process"
    )
    assert [r.get("track") for r in result.outcome.records] == [None, "tuned"]
    tuned_config = tmp_path / "out" / "comc-world-tuned-s1"
    (config,) = tuned_config.rglob("config.yaml")
    assert yaml.safe_load(config.read_text())["model"]["init_args"]["lr"] == 0.005
    assert "| comc (tuned) |" in result.leaderboard and "| comc |" in result.leaderboard
