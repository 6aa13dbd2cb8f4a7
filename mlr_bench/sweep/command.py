"""``mlr-bench sweep``: tune one method on one dataset, equal-budget, on validation mAP only.

Each trial is ``mlr-bench fit`` of the recipe the benchmark uses for that method and dataset
(``configs/experiment/<method>_<data>.yaml``) with the trial's hyperparameters as
``--model.X value`` overrides, in its own process like a benchmark cell. The budget (epochs,
corpus sizes, batch) is the recipe's and is never searched. Optuna proposes the values; the
study lives in an RDB so that a killed sweep resumes and several processes share one study.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mlr_bench import registry
from mlr_bench.benchmark import matrix as mx
from mlr_bench.benchmark.command import prepare_out
from mlr_bench.benchmark.process import report_interruption, stop_on_signals
from mlr_bench.errors import MLRBenchError
from mlr_bench.sweep import outputs
from mlr_bench.sweep import study as st
from mlr_bench.sweep.probe import CLASS_PATH as TRIAL_PROBE
from mlr_bench.sweep.space import (
    Dimension,
    SearchSpaceError,
    declared_space,
    grid,
    override_args,
    reference_params,
    resolve,
)
from mlr_bench.sweep.trial import (
    RUNNERS,
    TrialJob,
    TrialRunner,
    failure_text,
    prepare_dir,
    read_trial,
)

#: Trials in a row that may fail in one sweep process before it stops (a broken recipe or
#: argument would otherwise fail every trial of the study).
MAX_FAILURES_IN_A_ROW = 3


@dataclass
class SweepSpec:
    """Everything one ``mlr-bench sweep`` command asks for."""

    method: str
    dataset: str
    trials: int
    out: Path
    sampler: str = "tpe"
    sampler_seed: int = 0
    seed: int = 0
    storage: str | None = None
    study_name: str | None = None
    recipes: Path | None = mx.DEFAULT_RECIPES
    configs: Sequence[str] = ()
    extra_args: Sequence[str] = ()
    isolation: str = "subprocess"

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{(self.out / 'study.db').resolve()}"

    @property
    def name(self) -> str:
        return self.study_name or f"{self.method}-{self.dataset}"

    @property
    def cell(self) -> mx.Cell:
        return mx.Cell(self.method, self.dataset, self.seed)


@dataclass
class SweepOutcome:
    """What a sweep did in this process, and the study's summary afterwards."""

    summary: dict[str, Any]
    ran: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    stopped_early: str | None = None


class TrialFailed(Exception):
    """A trial left no score (Optuna records it as failed and the sweep goes on)."""


# ---- search space and trial arguments ---------------------------------------------------------
def method_class(name: str) -> type:
    entry = registry.entries(registry.GROUPS["method"]).get(name.lower())
    if entry is None:
        raise MLRBenchError(f"--method: unknown method {name!r}")
    return entry.load()


def configured_values(files: Sequence[Path | str]) -> dict[str, Any]:
    """``model.init_args`` of the recipe and ``--config`` files, later files winning."""
    values: dict[str, Any] = {}
    for path in files:
        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise MLRBenchError(f"{path}: cannot read it as YAML ({exc})") from None
        model = data.get("model") if isinstance(data, dict) else None
        init = model.get("init_args") if isinstance(model, dict) else None
        values.update(init if isinstance(init, dict) else {})
    return values


def protocol_of(files: Sequence[Path | str]) -> Any:
    protocol = None
    for path in files:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        init = ((data.get("data") or {}) if isinstance(data, dict) else {}).get("init_args")
        if isinstance(init, dict) and "protocol" in init:
            protocol = init["protocol"]
    return protocol


def config_files(spec: SweepSpec) -> list[Path | str]:
    recipe = mx.recipe_for(spec.cell, spec.recipes)
    return [*([recipe] if recipe else []), *spec.configs]


def search_dims(spec: SweepSpec) -> list[Dimension]:
    """The method's search space around the reference values of its recipe."""
    cls = method_class(spec.method)
    try:
        return resolve(cls, declared_space(cls), configured_values(config_files(spec)))
    except SearchSpaceError as exc:
        raise MLRBenchError(f"--method {spec.method}: {exc}") from None


def check_extra_args(spec: SweepSpec, dims: Sequence[Dimension]) -> None:
    """Arguments after ``--`` may not fix a searched parameter, the seed or the protocol."""
    searched = {d.name for d in dims}
    for arg in spec.extra_args:
        key = arg.split("=", 1)[0]
        for prefix in ("--model.", "--method.", "--model.init_args.", "--method.init_args."):
            name = key.removeprefix(prefix) if key.startswith(prefix) else None
            if name in searched:
                raise MLRBenchError(
                    f"args after --: {key} is a searched parameter of {spec.method}; the sweep "
                    f"sets it per trial (searched: {', '.join(sorted(searched))})"
                )
        if key in ("--seed_everything", "--protocol", "--data.protocol"):
            raise MLRBenchError(
                f"args after --: {key} is not for a sweep; use --seed for the trials' seed "
                "(a sweep always runs the clean protocol: validation from the training side)"
            )
    if protocol_of(config_files(spec)) not in (None, "clean"):
        raise MLRBenchError(
            "a sweep chooses on validation, so it runs the clean protocol only; the recipe or "
            "a --config sets data.init_args.protocol to something else"
        )


def trial_args(spec: SweepSpec, trial_dir: Path, params: dict[str, Any]) -> tuple[str, ...]:
    """``mlr-bench fit`` of the benchmark's recipe for the cell, plus the trial's overrides
    (before the pass-through args, which ``check_extra_args`` keeps off searched ones)."""
    settings = mx.CellSettings(
        recipes=spec.recipes,
        configs=spec.configs,
        extra_args=[
            f"--trainer.callbacks+={TRIAL_PROBE}",
            *override_args(params),
            *spec.extra_args,
        ],
    )
    args = mx.cell_args(spec.cell, trial_dir, settings)
    cell_probe = f"--trainer.callbacks+={mx.PROBE}"  # a cell's test timer: no use in a fit
    return ("fit", *[a for a in args[1:] if a != cell_probe])


def study_settings(spec: SweepSpec, dims: Sequence[Dimension]) -> dict[str, Any]:
    """What makes trials of one study comparable (paths by content: nodes may differ)."""

    def content(path: Path | str) -> str:
        return mx._file_entry(path)["sha256"]

    recipe = mx.recipe_for(spec.cell, spec.recipes)
    return {
        "method": spec.method,
        "dataset": spec.dataset,
        "recipe": content(recipe) if recipe else None,
        "configs": [content(c) for c in spec.configs],
        "extra_args": list(spec.extra_args),
        "seed": spec.seed,
        "sampler": spec.sampler,
        "sampler_seed": spec.sampler_seed,
        "search_space": {d.name: d.as_dict() for d in dims},
    }


# ---- the sweep ---------------------------------------------------------------------------------
def open_study(spec: SweepSpec, dims: Sequence[Dimension]) -> Any:
    """Create or load the study and check it was started with the same settings."""
    optuna = st.import_optuna()
    storage = st.open_storage(spec.storage_url)
    try:
        study = optuna.create_study(
            study_name=spec.name, storage=storage, direction="maximize", load_if_exists=True
        )
    except Exception as exc:
        raise MLRBenchError(
            f"--storage {st.display_url(spec.storage_url)}: cannot create or load study "
            f"{spec.name!r} ({type(exc).__name__}: {exc})"
        ) from None
    if study.direction != optuna.study.StudyDirection.MAXIMIZE:
        raise MLRBenchError(f"study {spec.name!r} exists and minimises; use another --study-name")
    st.check_settings(study, study_settings(spec, dims), st.display_url(spec.storage_url))
    return study


def enqueue_start(study: Any, dims: Sequence[Dimension], trials: int) -> int:
    """The reference point first (or every point of a finite space); the trials to run."""
    points = grid(dims)
    if points is None:
        study.enqueue_trial(
            reference_params(dims), user_attrs={st.REFERENCE: True}, skip_if_exists=True
        )
        return trials
    for i, point in enumerate(points[:trials]):
        study.enqueue_trial(point, user_attrs={st.REFERENCE: i == 0}, skip_if_exists=True)
    return min(trials, len(points))


def run_sweep(spec: SweepSpec, runner: TrialRunner | None = None) -> SweepOutcome:
    """Run (or resume) the study until ``spec.trials`` trials count; write the outputs."""
    dims = search_dims(spec)
    check_extra_args(spec, dims)
    prepare_out(spec.out)
    study = open_study(spec, dims)
    target = enqueue_start(study, dims, spec.trials)
    info = outputs.SweepInfo(
        study=spec.name,
        storage=st.display_url(spec.storage_url),
        method=spec.method,
        dataset=spec.dataset,
        recipe=str(r) if (r := mx.recipe_for(spec.cell, spec.recipes)) else None,
        sampler=spec.sampler,
        sampler_seed=spec.sampler_seed,
        seed=spec.seed,
        trials=spec.trials,
        dims=dims,
        configs=list(spec.configs),
        extra_args=list(spec.extra_args),
        best_path=spec.out / outputs.BEST,
    )
    if target < spec.trials:
        info.notes.append(
            f"the search space of {spec.method} has {target} point(s); ran each once "
            f"instead of {spec.trials} trials"
        )
    if not dims:
        info.notes.append(f"{spec.method} has nothing to tune: one evaluation")
    run = runner or RUNNERS[spec.isolation]
    outcome = SweepOutcome(summary={})
    in_a_row = 0
    me = st.owner()
    while True:
        for number in st.fail_stale(study):
            print(f"[trial {number}] stale (its sweep process is gone): marked failed, retried")
        if st.tally(study.get_trials(deepcopy=False)).counted >= target:
            break
        index = st.sample_index(study.get_trials(deepcopy=False))
        study.sampler = st.make_sampler(
            spec.sampler, st.trial_seed(spec.sampler_seed, index), target
        )
        done = _one_trial(study, spec, dims, run, me, outcome)
        outcome.summary = outputs.write_outputs(spec.out, info, study.get_trials(deepcopy=False))
        in_a_row = 0 if done else in_a_row + 1
        if in_a_row >= MAX_FAILURES_IN_A_ROW:
            outcome.stopped_early = (
                f"{in_a_row} trials in a row failed in this sweep; stopped. See their "
                "error.txt; failed trials count toward --trials (start another study with "
                "--study-name or --out once the cause is fixed)"
            )
            break
    outcome.summary = outputs.write_outputs(spec.out, info, study.get_trials(deepcopy=False))
    return outcome


def _one_trial(
    study: Any,
    spec: SweepSpec,
    dims: Sequence[Dimension],
    run: TrialRunner,
    me: dict[str, Any],
    outcome: SweepOutcome,
) -> bool:
    """Ask Optuna for one trial and run it (with its heartbeat); whether it gave a score."""
    result: dict[str, bool] = {}

    def objective(trial: Any) -> float:
        trial.set_user_attr(st.OWNER, me)
        params = st.suggest(trial, dims)
        trial_dir = spec.out / f"trial-{trial.number:04d}"
        trial.set_user_attr("trial_dir", str(trial_dir))
        prepare_dir(trial_dir)
        job = TrialJob(trial.number, trial_dir, trial_args(spec, trial_dir, params))
        outcome.ran.append(trial.number)
        try:
            run(job)
        except KeyboardInterrupt:
            trial.set_user_attr(st.INTERRUPTED, "the sweep was stopped")
            st.retry(study, trial.number, params, bool(trial.user_attrs.get(st.REFERENCE)))
            raise
        record = read_trial(trial_dir)
        if record is None:
            error = failure_text(trial_dir)
            trial.set_user_attr("error", error)
            outcome.failed.append(trial.number)
            print(outputs.trial_line(trial.number, "failed", params, f"{error} ({trial_dir})"))
            raise TrialFailed(error)
        for key in ("best_epoch", "optimizer_steps", "run_dir", "history"):
            trial.set_user_attr(key, record.get(key))
        steps = record.get("optimizer_steps")
        detail = f"val mAP {record['val_mAP']:6.2f}" + (f"  {steps} steps" if steps else "")
        print(outputs.trial_line(trial.number, "done", params, detail))
        result["done"] = True
        return float(record["val_mAP"])

    study.optimize(objective, n_trials=1, catch=(TrialFailed,), gc_after_trial=False)
    return result.get("done", False)


# ---- command line ---------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mlr-bench sweep",
        description=(
            "Tune one method on one dataset with Optuna: each trial is `mlr-bench fit` of the "
            "benchmark's recipe with the trial's hyperparameters, chosen on validation mAP "
            "only (the test stage never runs), at the recipe's training budget. Writes "
            "<out>/best.yaml (for `train --config` and `benchmark --tuned`) and "
            "<out>/summary.json. Re-running resumes the study. Arguments after `--` go to "
            "every trial."
        ),
    )
    parser.add_argument("--method", required=True, help="the method to tune (one name)")
    parser.add_argument("--data", required=True, help="the dataset to tune on (one name)")
    parser.add_argument(
        "--trials",
        type=int,
        required=True,
        metavar="N",
        help="trials of the study in all (finished ones of a resumed or shared study count)",
    )
    parser.add_argument("--sampler", choices=st.SAMPLERS, default="tpe", help="default: tpe")
    parser.add_argument("--sampler-seed", type=int, default=0, help="seed of the sampler (0)")
    parser.add_argument("--seed", type=int, default=0, help="seed_everything of every trial (0)")
    parser.add_argument(
        "--out", type=Path, help="output folder (default: runs/sweeps/<method>-<data>)"
    )
    parser.add_argument(
        "--storage", help="Optuna RDB URL (default: sqlite:///<out>/study.db); share one "
        "database between processes or machines to work on one study"
    )  # fmt: skip
    parser.add_argument("--study-name", help="default: <method>-<data>")
    parser.add_argument(
        "--config", action="append", default=[], help="extra config for every trial"
    )
    parser.add_argument(
        "--recipes",
        default=str(mx.DEFAULT_RECIPES),
        help="folder of <method>_<dataset>.yaml recipes ('none': --method/--data defaults)",
    )
    parser.add_argument(
        "--isolation",
        choices=list(RUNNERS),
        default="subprocess",
        help="one child process per trial (default) or all in this process",
    )
    return parser


def _one_name(kind: str, option: str, value: str) -> str:
    known = registry.entries(registry.GROUPS[kind])
    if value.lower() not in known:
        raise MLRBenchError(
            f"{option}: unknown {kind} {value!r}; expected one of "
            f"{', '.join(sorted(known)) or '(none installed)'} (`mlr-bench list`)"
        )
    return known[value.lower()].name


def spec_from_args(argv: Sequence[str]) -> SweepSpec:
    """Parse and check the command line (every problem is one message, nothing run)."""
    argv = list(argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = build_parser().parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    method = _one_name("method", "--method", args.method)
    dataset = _one_name("data", "--data", args.data)
    if args.trials < 1:
        raise MLRBenchError(f"--trials: expected 1 or more, got {args.trials}")
    for option, value in (("--seed", args.seed), ("--sampler-seed", args.sampler_seed)):
        if not mx.SEED_RANGE[0] <= value <= mx.SEED_RANGE[1]:
            raise MLRBenchError(
                f"{option}: {value} is out of range; expected {mx.SEED_RANGE[0]} to "
                f"{mx.SEED_RANGE[1]}"
            )
    recipes = None if args.recipes.lower() == "none" else Path(args.recipes).expanduser()
    if recipes is not None and not recipes.is_dir():
        raise MLRBenchError(f"--recipes: {recipes} is not a folder of <method>_<dataset>.yaml")
    for config in args.config:
        if not Path(config).expanduser().is_file():
            raise MLRBenchError(f"--config: {config} is not a file (expected a YAML file)")
    return SweepSpec(
        method=method,
        dataset=dataset,
        trials=args.trials,
        out=args.out or Path("runs/sweeps") / f"{method}-{dataset}",
        sampler=args.sampler,
        sampler_seed=args.sampler_seed,
        seed=args.seed,
        storage=args.storage,
        study_name=args.study_name,
        recipes=recipes,
        configs=[str(Path(c).expanduser().resolve()) for c in args.config],
        extra_args=extra,
        isolation=args.isolation,
    )


def sweep_main(argv: Sequence[str]) -> int:
    """Entry of ``mlr-bench sweep``. Exit codes: 0 a best config was written; 1 no trial
    finished, or the sweep stopped after failures in a row; 2 bad input (one message, nothing
    run); 130/143/129 on SIGINT/TERM/HUP (finished trials are kept: run it again to resume)."""
    spec = spec_from_args(argv)
    try:
        with stop_on_signals():
            outcome = run_sweep(spec)
    except KeyboardInterrupt as exc:
        return report_interruption(
            exc,
            "sweep",
            "the running trial was stopped and will be retried. Finished trials are kept in "
            "the study; run the same command again to resume.",
        )
    print()
    print(outputs.summary_text(outcome.summary, spec.out))
    if outcome.stopped_early:
        print(f"mlr-bench sweep: {outcome.stopped_early}", file=sys.stderr)
        return 1
    return 0 if outcome.summary.get("best") else 1
