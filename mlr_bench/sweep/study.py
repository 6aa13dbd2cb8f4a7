"""The Optuna side of a sweep: storage, samplers, which trials count, and stale trials.

The study lives in an RDB (SQLite by default) so that a killed sweep resumes and several
processes or machines can work on one study. A trial left RUNNING by a sweep that died is
*stale*: when its owner ran on this machine and is gone, the next sweep fails it at once;
elsewhere Optuna's heartbeat fails it after ``GRACE_S`` without a beat. Either way the trial
is retried once with the same hyperparameters, and the stale one no longer counts toward
``--trials``: "N trials" means N trials that finished (or are running now), never a killed one.
"""

from __future__ import annotations

import contextlib
import os
import socket
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlr_bench.benchmark.process import pid_alive
from mlr_bench.errors import MLRBenchError
from mlr_bench.sweep.space import Dimension

#: Seconds between a running trial's heartbeats, and without one before it counts as stale.
HEARTBEAT_S = 30
GRACE_S = 120
#: Trial user attributes.
OWNER, RETRY_OF, INTERRUPTED, REFERENCE = "owner", "retry_of", "interrupted", "reference"
#: Study user attribute holding the settings the study was started with.
SETTINGS = "mlr_bench_settings"


def import_optuna() -> Any:
    """Optuna, imported only when a sweep runs; a clear message when it is not installed."""
    try:
        import optuna
    except ImportError:
        raise MLRBenchError(
            "mlr-bench sweep needs Optuna, which is not installed; install it with "
            "`pip install 'mlr-bench[sweep]'` (or `pip install optuna`)"
        ) from None
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # the sweep prints its own lines
    return optuna


def display_url(url: str) -> str:
    """The storage URL with any password hidden (it goes into messages and files)."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@", 1)[-1] if "@" in url else url


def open_storage(url: str) -> Any:
    """An RDB storage with heartbeats and retries of stale trials; unreachable -> one message."""
    optuna = import_optuna()
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # heartbeat_interval is "experimental"
            return optuna.storages.RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=HEARTBEAT_S,
                grace_period=GRACE_S,
                heartbeat_stale_trial_callback=retry_stale,
            )
    except Exception as exc:
        reason = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise MLRBenchError(
            f"--storage: cannot open {display_url(url)!r} ({type(exc).__name__}: {reason}); "
            "expected a reachable database URL such as sqlite:///path/to/study.db or "
            "postgresql://user@host/dbname (with its driver installed)"
        ) from None


# ---- who runs a trial ------------------------------------------------------------------------
def _start_ticks(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (tells a reused pid apart)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def owner() -> dict[str, Any]:
    """This sweep process, as stored on the trials it runs."""
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "start": _start_ticks(pid)}


def owner_gone(info: Any) -> bool:
    """Whether a trial's owner ran on this machine and is no longer running."""
    if not isinstance(info, dict) or info.get("host") != socket.gethostname():
        return False
    pid = info.get("pid")
    if not isinstance(pid, int) or pid == os.getpid():
        return False
    if not pid_alive(pid):
        return True
    return info.get("start") is not None and _start_ticks(pid) != info.get("start")


# ---- retries of stale or interrupted trials --------------------------------------------------
def retried_numbers(trials: Sequence[Any]) -> set[int]:
    return {t.user_attrs[RETRY_OF] for t in trials if RETRY_OF in t.user_attrs}


def retry(study: Any, number: int, params: dict[str, Any], reference: bool = False) -> None:
    """Enqueue trial ``number`` again with its parameters (once)."""
    if number in retried_numbers(study.get_trials(deepcopy=False)):
        return
    attrs: dict[str, Any] = {RETRY_OF: number}
    if reference:
        attrs[REFERENCE] = True
    study.enqueue_trial(params, user_attrs=attrs)


def retry_stale(study: Any, trial: Any) -> None:
    """Optuna's callback for a trial its heartbeat found stale (already marked FAIL)."""
    retry(study, trial.number, dict(trial.params), bool(trial.user_attrs.get(REFERENCE)))


def fail_dead_owners(study: Any) -> list[int]:
    """Fail and retry RUNNING trials whose sweep process on this machine is gone."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    failed = []
    storage = study._storage
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not owner_gone(trial.user_attrs.get(OWNER)):
            continue
        try:
            storage.set_trial_user_attr(trial._trial_id, INTERRUPTED, "its sweep process died")
            if not storage.set_trial_state_values(trial._trial_id, TrialState.FAIL):
                continue
        except UpdateFinishedTrialError:  # another sweep got there first
            continue
        retry_stale(study, trial)
        failed.append(trial.number)
    return failed


def fail_stale(study: Any) -> list[int]:
    """Fail (and retry) every stale trial now: of dead local owners, and those whose
    heartbeat stopped (other machines); the numbers of the trials failed."""
    optuna = import_optuna()
    running = _numbers(study, "RUNNING")
    failed = set(fail_dead_owners(study))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # experimental API
        optuna.storages.fail_stale_trials(study)
    failed |= running & _numbers(study, "FAIL")
    return sorted(failed)


def _numbers(study: Any, state: str) -> set[int]:
    return {t.number for t in study.get_trials(deepcopy=False) if t.state.name == state}


# ---- counting -------------------------------------------------------------------------------
@dataclass
class Tally:
    """Trials by what they mean for ``--trials``."""

    complete: int = 0
    failed: int = 0  # failed on their own: they count
    running: int = 0
    waiting: int = 0  # enqueued (reference point, retries), not started
    interrupted: int = 0  # killed or stale, retried: they do not count

    @property
    def counted(self) -> int:
        return self.complete + self.failed + self.running


def tally(trials: Sequence[Any]) -> Tally:
    from optuna.trial import TrialState

    retried = retried_numbers(trials)
    out = Tally()
    for t in trials:
        if t.state == TrialState.COMPLETE:
            out.complete += 1
        elif t.state == TrialState.RUNNING:
            out.running += 1
        elif t.state == TrialState.WAITING:
            out.waiting += 1
        elif t.number in retried or INTERRUPTED in t.user_attrs:
            out.interrupted += 1
        else:  # FAIL (or PRUNED, which a sweep never asks for)
            out.failed += 1
    return out


# ---- samplers ---------------------------------------------------------------------------------
SAMPLERS = ("tpe", "random")


def sample_index(trials: Sequence[Any]) -> int:
    """How many trials were sampled so far (enqueued ones, the reference point and retries,
    were not): the place of the next sampled trial, the same with or without a kill."""
    return sum(1 for t in trials if REFERENCE not in t.user_attrs and RETRY_OF not in t.user_attrs)


def trial_seed(sampler_seed: int, index: int) -> int:
    """The sampler's seed for the ``index``-th sampled trial: proposals depend on the seed and
    that place only, not on how many processes, resumes or retries came before."""
    return int(np.random.SeedSequence([sampler_seed, index]).generate_state(1)[0])


def make_sampler(kind: str, seed: int, n_trials: int) -> Any:
    """TPE (random for the first half of the trials, at most 10) or random search."""
    optuna = import_optuna()
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    startup = min(10, max(2, n_trials // 2))
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup)


def suggest(trial: Any, dims: Sequence[Dimension]) -> dict[str, Any]:
    """The trial's value of every dimension (fixed ones for enqueued trials)."""
    params = {}
    for d in dims:
        if d.kind == "choice":
            params[d.name] = trial.suggest_categorical(d.name, list(d.options))
        else:
            params[d.name] = trial.suggest_float(d.name, d.low, d.high, log=d.kind == "log")
    return params


# ---- the study's settings ---------------------------------------------------------------------
def check_settings(study: Any, settings: dict[str, Any], where: str) -> None:
    """Record the settings in a new study; refuse a study started with other ones."""
    stored = study.user_attrs.get(SETTINGS)
    if stored is None:
        with contextlib.suppress(Exception):  # another process may record them at once
            study.set_user_attr(SETTINGS, settings)
        return
    diffs = [
        f"  {key}: {stored.get(key)!r} (study) -> {settings.get(key)!r} (now)"
        for key in settings
        if stored.get(key) != settings.get(key)
    ]
    if diffs:
        raise MLRBenchError(
            f"study {study.study_name!r} in {where} was started with other settings; nothing "
            "was run:\n" + "\n".join(diffs) + "\nRun it with the settings it was started "
            "with, or start another study (--study-name or --out)."
        )
