"""Logger presets: a W&B logger that is safe offline, and run-tree placement for TensorBoard.

``MLRWandbLogger`` is what ``--logger wandb`` selects. It never needs the network: without an
API key (``WANDB_API_KEY`` or a netrc entry for the W&B host) it logs offline, to be uploaded
later with ``wandb sync``. Runs are named ``<method>-<dataset>-<backbone>-s<seed>`` (with
``-random`` after the backbone, config ``weights: random`` and tag ``random-weights`` when CLIP
has random weights, so a dashboard never mixes them with real runs), typed by the CLI
subcommand (``job_type``) and live inside mlr-bench's run tree, so a run's checkpoints,
``config.yaml``, ``results_test.json`` and its W&B files sit in one folder::

    runs/<method>/<dataset>/wandb/<run id>/            checkpoints/, config.yaml, results_*.json
    runs/<method>/<dataset>/wandb/<run id>/wandb/      offline-run-<time>-<run id>/ (W&B's files)

Nothing here imports ``wandb`` until a W&B logger actually starts a run.
"""

from __future__ import annotations

import json
import math
import netrc
import os
import secrets
import string
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from lightning.pytorch.loggers import Logger, TensorBoardLogger, WandbLogger
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only

from mlr_bench import registry
from mlr_bench.errors import MLRBenchError
from mlr_bench.provenance import RANDOM, RANDOM_TAG, weights_provenance

if TYPE_CHECKING:
    from lightning.pytorch import LightningModule, Trainer
    from torch import Tensor

DEFAULT_PROJECT = "mlr-bench"
#: Seconds ``wandb.init`` may wait for the W&B service/server (W&B's default is 90).
DEFAULT_INIT_TIMEOUT = 15.0
#: Top-level config keys every run carries, for filtering and grouping in the W&B UI.
FLAT_KEYS = ("method", "dataset", "protocol", "backbone", "weights", "seed", "text_source")
BEST_KEY = "val/mAP"
#: W&B's staging folder for media and artifact files (read when a file is logged).
DATA_DIR_ENV = "WANDB_DATA_DIR"


@dataclass
class RunContext:
    """What the CLI knows about a run before it starts (loggers name and place runs from it)."""

    stage: str
    model: Any
    datamodule: Any
    root_dir: str = "runs"
    config: dict[str, Any] = field(default_factory=dict)


# ---- facts and modes ----------------------------------------------------------------------
def run_facts(model: Any, datamodule: Any, seed: int | None = None) -> dict[str, Any]:
    """The flat keys of a run: method, dataset, protocol (its label: the name, plus any
    override), backbone, weights, seed, text_source."""
    if seed is None and os.environ.get("PL_GLOBAL_SEED") is not None:
        seed = int(os.environ["PL_GLOBAL_SEED"])
    return {
        "method": registry.name_for_class("method", type(model)),
        "dataset": registry.name_for_class("data", type(datamodule)) if datamodule else None,
        "protocol": protocol_label_of(datamodule),
        "backbone": getattr(model, "hparams", {}).get("backbone"),
        "weights": weights_provenance(model),
        "seed": seed,
        "text_source": getattr(model, "text_source", None),
    }


def protocol_label_of(datamodule: Any) -> str | None:
    """``clean``, ``reference`` or ``clean (legacy_val=true)``; None without a protocol."""
    record = getattr(datamodule, "protocol_record", None)
    return record()["label"] if callable(record) else None


def default_run_name(facts: Mapping[str, Any]) -> str:
    """``<method>-<dataset>-<backbone>[-random]-s<seed>`` (no ``-s`` part when no seed was
    set): ``-random`` keeps a random-weight run's name from passing for a real one."""
    seed = "" if facts.get("seed") is None else f"-s{facts['seed']}"
    weights = "-random" if facts.get("weights") == RANDOM else ""
    return f"{facts['method']}-{facts['dataset']}-{facts['backbone']}{weights}{seed}"


def run_tags(tags: Sequence[str] | None, facts: Mapping[str, Any]) -> list[str] | None:
    """``tags`` plus ``random-weights`` for a run whose CLIP has random weights."""
    tags = list(tags or ())
    if facts.get("weights") == RANDOM and RANDOM_TAG not in tags:
        tags.append(RANDOM_TAG)
    return tags or None


def has_wandb_credentials() -> bool:
    """Whether an API key is configured, without asking W&B (which may prompt or connect)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlsplit(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).netloc
    path = os.environ.get("NETRC") or os.path.expanduser("~/.netrc")
    try:
        entry = netrc.netrc(path).authenticators(host)
    except (OSError, netrc.NetrcParseError):
        return False
    return bool(entry and entry[2])


def resolve_mode(offline: bool | None = None) -> str:
    """``offline=None`` (auto): ``WANDB_MODE`` if set, else online only with credentials."""
    if offline is True:
        return "offline"
    if offline is None and os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    return "online" if has_wandb_credentials() else "offline"


def _settings(mode: str, init_timeout: float, extra: Any = None) -> Any:
    import wandb

    settings = wandb.Settings(mode=mode, init_timeout=init_timeout, silent=True)
    if extra is not None:  # the user's own settings win
        extra = extra if isinstance(extra, Mapping) else extra.to_dict()
        settings.update_from_dict({k: v for k, v in extra.items() if v is not None})
    return settings


#: The ``WANDB_DATA_DIR`` this module set for the open run (None: not set by us).
_STAGED_IN: str | None = None


def stage_in_run(run: Any) -> None:
    """Keep the run self-contained: W&B copies logged media (table images) to a staging area
    under ``WANDB_DATA_DIR`` (default ``~/.local/share/wandb``) and the run's record points
    there, so ``wandb sync`` of the run folder alone would miss them. Stage inside the run's own
    folder instead; a ``WANDB_DATA_DIR`` the user set is left alone."""
    global _STAGED_IN
    current = os.environ.get(DATA_DIR_ENV)
    if current is not None and current != _STAGED_IN:
        return
    sync_dir = getattr(getattr(run, "settings", None), "sync_dir", None)
    if sync_dir:
        os.environ[DATA_DIR_ENV] = _STAGED_IN = str(sync_dir)


def unstage() -> None:
    """Undo ``stage_in_run`` once the run is finished (the next run stages in its own folder)."""
    global _STAGED_IN
    if _STAGED_IN is not None and os.environ.get(DATA_DIR_ENV) == _STAGED_IN:
        del os.environ[DATA_DIR_ENV]
    _STAGED_IN = None


def print_sync_hint(run: Any) -> None:
    """An offline run is only useful once uploaded: say how, with the run's own folder."""
    settings = getattr(run, "settings", None)
    sync_dir = getattr(settings, "sync_dir", None)
    if sync_dir and getattr(settings, "mode", None) == "offline":
        print(
            f"wandb: offline run saved in {sync_dir}; upload it with: wandb sync {sync_dir}",
            file=sys.stderr,
        )


def _new_run_id() -> str:
    """A W&B-style id, known before ``wandb.init`` so the run's folder is too."""
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(8))


# ---- the W&B preset -----------------------------------------------------------------------
class MLRWandbLogger(WandbLogger):
    """W&B for mlr-bench runs: offline without an API key, named, grouped, never blocking.

    Logs the flat keys (method, dataset, backbone, weights, seed, text_source) and the full
    resolved CLI config, keeps ``val/mAP`` in the summary as the best value so far (also
    ``val/mAP_best``) and, at test, a per-class AP table and a predictions table (see
    ``log_test_tables``). A run with random CLIP weights is tagged ``random-weights``.
    """

    def __init__(
        self,
        project: str = DEFAULT_PROJECT,
        group: str | None = None,
        name: str | None = None,
        job_type: str | None = None,
        tags: list[str] | None = None,
        save_dir: str | None = None,
        version: str | None = None,
        offline: bool | None = None,
        init_timeout: float = DEFAULT_INIT_TIMEOUT,
        max_predictions: int = 16,
        log_model: bool = False,
        prefix: str = "",
        **kwargs: Any,
    ) -> None:
        """
        Args:
            project: W&B project.
            group: W&B group, e.g. a benchmark id (runs of one benchmark side by side).
            name: run name; default ``<method>-<dataset>-<backbone>-s<seed>``.
            job_type: default: the CLI subcommand (``fit``, ``test``, ``train``, ...).
            tags: W&B tags.
            save_dir: parent of the run folders; default ``<default_root_dir>/<method>/<data>``
                (``runs/...``), so W&B files stay inside the run's directory.
            version: run id (to resume a run); default: a new one.
            offline: ``None`` = offline unless ``WANDB_MODE`` says otherwise or an API key is
                configured; ``True`` always offline; ``False`` online (needs a key).
            init_timeout: seconds ``wandb.init`` may wait before failing.
            max_predictions: rows of the test predictions table.
            log_model: upload checkpoints as artifacts (online only in practice).
            prefix: prefix of every logged metric key.
            **kwargs: more ``wandb.init`` arguments (``entity``, ``notes``, ``settings``, ...).
        """
        self._save_dir_given = save_dir is not None
        self.mode = resolve_mode(offline)
        self.max_predictions = max_predictions
        self._best: float | None = None
        user_settings = kwargs.pop("settings", None)
        super().__init__(
            name=name,
            save_dir=save_dir or "runs",
            version=version or _new_run_id(),
            project=project,
            log_model=log_model,
            prefix=prefix,
            group=group,
            job_type=job_type,
            tags=list(tags) if tags else None,
            **kwargs,
        )
        self._wandb_init["settings"] = _settings(self.mode, init_timeout, user_settings)
        self._place()

    @property
    def name(self) -> str:
        """Folder name under ``save_dir`` (runs are ``<save_dir>/wandb/<run id>``)."""
        return "wandb"

    def _place(self) -> None:
        self._wandb_init["dir"] = os.path.join(self._save_dir, self.name, str(self._id))

    def bind_run(self, context: RunContext) -> None:
        """Take name, job type, folder and config from the CLI before the W&B run starts."""
        if self._experiment is not None:
            return
        facts = run_facts(context.model, context.datamodule)
        if not self._save_dir_given:
            self._save_dir = os.path.join(context.root_dir, facts["method"], facts["dataset"])
            self._place()
        init = self._wandb_init
        if init.get("name") is None:
            init["name"] = self._name = default_run_name(facts)
        if init.get("job_type") is None:
            init["job_type"] = context.stage
        init["tags"] = run_tags(init.get("tags"), facts)
        init["config"] = {**facts, **context.config, **dict(init.get("config") or {})}

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        """The W&B run; its folder is created first (W&B would fall back to a temp dir)."""
        starting = self._experiment is None
        if starting:
            Path(self._wandb_init["dir"]).mkdir(parents=True, exist_ok=True)
        run = super().experiment
        if starting and self._experiment is not None:
            stage_in_run(run)
        return run

    @rank_zero_only
    def log_hyperparams(self, params: Any) -> None:
        """The module's init args go under ``hparams``: they must not shadow the flat keys
        (a datamodule's ``seed`` is the data's seed, not the run's)."""
        from lightning.fabric.utilities.logger import (
            _convert_json_serializable,
            _convert_params,
            _sanitize_callable_params,
        )

        params = _convert_json_serializable(_sanitize_callable_params(_convert_params(params)))
        self.experiment.config.update({"hparams": params}, allow_val_change=True)

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Log, then keep the best ``val/mAP`` so far as the summary value."""
        super().log_metrics(metrics, step)
        value = metrics.get(BEST_KEY)
        if value is None or not math.isfinite(float(value)):
            return
        self._best = float(value) if self._best is None else max(self._best, float(value))
        key = self._prefix + self.LOGGER_JOIN_CHAR + BEST_KEY if self._prefix else BEST_KEY
        self.experiment.summary.update({key: self._best, f"{key}_best": self._best})

    def finish(self) -> None:
        """End the W&B run (flushes the offline files); the CLI calls it after the command."""
        if self._experiment is not None and rank_zero_only.rank == 0:
            run = self._experiment
            run.finish()
            unstage()
            print_sync_hint(run)


def require_tensorboard() -> None:
    """TensorBoard logging needs ``tensorboard`` (or ``tensorboardX``), an optional package:
    say so in one line before anything is built, not in a traceback from deep inside."""
    import importlib.util

    if not any(importlib.util.find_spec(m) for m in ("tensorboard", "tensorboardX")):
        raise MLRBenchError(
            "--logger tensorboard needs the tensorboard package, which is not installed: "
            "pip install tensorboard (or use --logger csv / --logger wandb)"
        )


class MLRTensorBoardLogger(TensorBoardLogger):
    """TensorBoard in the run tree, ``<default_root_dir>/<method>/<data>/version_N``, like the
    default CSV logger (plain ``TensorBoardLogger`` would need ``save_dir`` on the command line).
    Needs ``tensorboard`` (or ``tensorboardX``) installed."""

    def __init__(self, save_dir: str | None = None, name: str | None = None, **kwargs: Any):
        require_tensorboard()
        self._save_dir_given, self._name_given = save_dir is not None, name is not None
        super().__init__(save_dir=save_dir or "runs", name=name or "", **kwargs)

    def bind_run(self, context: RunContext) -> None:
        """Take the run tree's root and ``<method>/<data>`` from the CLI."""
        facts = run_facts(context.model, context.datamodule)
        if not self._save_dir_given:
            self._root_dir = context.root_dir
        if not self._name_given:
            self._name = f"{facts['method']}/{facts['dataset']}"


def bind_loggers(loggers: Sequence[Logger], context: RunContext) -> None:
    """Give every logger that wants it (``bind_run``) the run's context."""
    for logger in loggers:
        bind = getattr(logger, "bind_run", None)
        if callable(bind):
            bind(context)


def finish_loggers(loggers: Sequence[Logger]) -> None:
    """End runs of loggers that hold one open (W&B), so the next command starts a new run."""
    for logger in loggers:
        finish = getattr(logger, "finish", None)
        if isinstance(logger, WandbLogger) and callable(finish):
            finish()


# ---- what the evaluator reports (any WandbLogger) -------------------------------------------
def describe_run(logger: WandbLogger, trainer: Trainer, pl_module: LightningModule) -> None:
    """Add the flat keys (and the default name) to a run the CLI did not describe beforehand."""
    if not trainer.is_global_zero:
        return
    facts = run_facts(pl_module, getattr(trainer, "datamodule", None))
    run = logger.experiment
    missing = {k: v for k, v in facts.items() if k not in run.config}
    if missing:
        run.config.update(missing, allow_val_change=True)
    tags = run_tags(run.tags, facts)
    if tags and tuple(tags) != tuple(run.tags or ()):
        run.tags = tuple(tags)
    if isinstance(logger, MLRWandbLogger) and logger._wandb_init.get("name") is None:
        run.name = default_run_name(facts)


def log_budget_summary(logger: WandbLogger, budget: Mapping[str, Any] | None) -> None:
    """The training budget in the run's summary (``budget/*``): steps in all, per stage, the
    reference recipe's steps and the ratio, device seconds, and the policy's fraction."""
    if not budget:
        return
    summary: dict[str, Any] = {
        "budget/optimizer_steps": budget.get("optimizer_steps"),
        "budget/device_s": budget.get("device_s"),
        "budget/reference_steps": (budget.get("reference") or {}).get("optimizer_steps"),
        "budget/steps_x_reference": budget.get("ratio_to_reference"),
        "budget/fraction": (budget.get("policy") or {}).get("budget_fraction"),
    }
    for stage, spent in (budget.get("stages") or {}).items():
        summary[f"budget/{stage}/optimizer_steps"] = spent.get("optimizer_steps")
    logger.experiment.summary.update({k: v for k, v in summary.items() if v is not None})


def log_test_tables(
    logger: WandbLogger,
    trainer: Trainer,
    per_class_ap: Mapping[str, float | None],
    index: Tensor,
    scores: Tensor,
    targets: Tensor,
) -> None:
    """``test/per_class_ap`` (class, AP, positives) and ``test/predictions`` (image or index,
    top-5 labels with scores, ground truth) for the first test images by index."""
    import wandb

    names = list(per_class_ap)
    positives = (targets == 1).sum(dim=0).tolist()
    ap_table = wandb.Table(
        columns=["class", "AP", "positives"],
        data=[[n, per_class_ap[n], int(p)] for n, p in zip(names, positives, strict=True)],
    )
    limit = getattr(logger, "max_predictions", 16)
    images = _thumbnails(getattr(trainer, "datamodule", None))
    columns = ["index", *(["image"] if images is not None else []), "top5", "ground_truth"]
    rows = []
    k = min(5, len(names))
    for i, row, target in zip(index[:limit].tolist(), scores[:limit], targets[:limit], strict=True):
        top = row.topk(k)
        pairs = zip(top.indices.tolist(), top.values.tolist(), strict=True)
        predicted = ", ".join(f"{names[c]} ({s:.3g})" for c, s in pairs)
        truth = ", ".join(names[c] for c in (target == 1).nonzero().flatten().tolist())
        image = [wandb.Image(images[i]["image"])] if images is not None else []
        rows.append([i, *image, predicted, truth])
    predictions = wandb.Table(columns=columns, data=rows)
    logger.log_metrics(
        {"test/per_class_ap": ap_table, "test/predictions": predictions},  # type: ignore[dict-item]
        step=trainer.global_step,
    )


def _thumbnails(datamodule: Any) -> Any:
    """The test images as small RGB pictures, or None where the datamodule cannot give them."""
    if datamodule is None or not hasattr(datamodule, "eval_dataset"):
        return None

    def thumbnail(image: Any) -> Any:
        image = image.convert("RGB")  # loads the pixels: the file may be closed afterwards
        image.thumbnail((128, 128))
        return image

    try:
        return datamodule.eval_dataset("test", thumbnail)
    except Exception:  # images are a nicety: no files on disk must not fail the test run
        return None


# ---- benchmark summary ----------------------------------------------------------------------
def log_leaderboard(
    rows: list[dict[str, Any]],
    project: str,
    group: str,
    *,
    save_dir: str = "runs",
    name: str | None = None,
    offline: bool | None = None,
) -> None:
    """A ``summary`` run in ``group`` with the leaderboard (one row per run) as a table.

    Columns are the union of the rows' keys in first-seen order (method, dataset, backbone,
    seed, mAP, ...); values that are not scalars are stored as JSON text.
    """
    import wandb

    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    data = [[_cell(row.get(c)) for c in columns] for row in rows]
    folder = Path(save_dir) / "wandb" / f"leaderboard-{group}"
    folder.mkdir(parents=True, exist_ok=True)
    run = wandb.init(
        project=project,
        group=group,
        job_type="summary",
        name=name or f"leaderboard-{group}",
        dir=str(folder),
        config={"num_rows": len(rows), "columns": columns},
        settings=_settings(resolve_mode(offline), DEFAULT_INIT_TIMEOUT),
        reinit="create_new",
    )
    stage_in_run(run)
    try:
        run.log({"leaderboard": wandb.Table(columns=columns, data=data, allow_mixed_types=True)})
    finally:
        run.finish()
        unstage()
    print_sync_hint(run)


def _cell(value: Any) -> Any:
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return json.dumps(value, default=str)
