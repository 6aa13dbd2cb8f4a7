"""The benchmark matrix: which (method, dataset, seed) cells to run and with which arguments."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import mlr_bench
from mlr_bench import registry
from mlr_bench.benchmark.probe import CLASS_PATH as PROBE
from mlr_bench.errors import MLRBenchError

#: Reference recipes, ``<method>_<dataset>.yaml``, next to the package in a source checkout.
DEFAULT_RECIPES = Path(mlr_bench.__file__).resolve().parent.parent / "configs" / "experiment"
#: Inner progress bars would fight with the matrix's own bar; pass-through args may re-enable.
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
#: ``--logger NAME`` -> the ``--trainer.logger`` class (None: the CLI's default CSV logger).
LOGGERS: dict[str, str | None] = {
    "csv": None,
    "tensorboard": "mlr_bench.loggers.MLRTensorBoardLogger",
    "wandb": "mlr_bench.loggers.MLRWandbLogger",
}


@dataclass(frozen=True)
class Cell:
    """One run of the matrix: a method on a dataset with a seed, in its own folder."""

    method: str
    dataset: str
    seed: int

    @property
    def name(self) -> str:
        return f"{self.method}-{self.dataset}-s{self.seed}"


@dataclass
class CellSettings:
    """What every cell shares: recipes, extra configs, pass-through args, logger."""

    recipes: Path | None = DEFAULT_RECIPES
    configs: Sequence[str] = ()
    extra_args: Sequence[str] = ()
    max_epochs: int | None = None
    logger: str | None = None
    project: str = "mlr-bench"
    group: str = "benchmark"


def split_list(option: str, value: str) -> list[str]:
    """``a,b, c`` -> ``["a", "b", "c"]``; an empty list is a user error."""
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise MLRBenchError(f"{option}: expected a comma-separated list, got {value!r}")
    return items


def parse_seeds(value: str) -> list[int]:
    seeds = []
    for item in split_list("--seeds", value):
        try:
            seeds.append(int(item))
        except ValueError:
            raise MLRBenchError(f"--seeds: expected integers like 1,2,3, got {item!r}") from None
    return list(dict.fromkeys(seeds))


def resolve_names(kind: str, value: str) -> list[str]:
    """Registered short names in the order given; unknown names fail before anything runs.

    ``all`` = every registered name that imports, in registry order: a plugin that fails to
    import is left out with a warning (as ``mlr-bench list`` reports it); named explicitly, it
    runs and fails as its own cell.
    """
    group = registry.GROUPS[kind]
    if value.strip().lower() == "all":
        loaded, failures = registry.load_group(group)
        for failure in failures:
            print(
                f"mlr-bench benchmark: warning: leaving out {kind} '{failure.entry.name}': "
                f"it failed to load ({failure.error})",
                file=sys.stderr,
            )
        return [name for name in registry.entries(group) if name in loaded]
    option = "--methods" if kind == "method" else "--data"
    names = [registry.resolve(kind, n).name for n in split_list(option, value)]
    return list(dict.fromkeys(names))


def expand(methods: Sequence[str], datasets: Sequence[str], seeds: Sequence[int]) -> list[Cell]:
    """Cells in run order: dataset, then method, then seed (one method's seeds side by side)."""
    return [Cell(m, d, s) for d in datasets for m in methods for s in seeds]


def recipe_for(cell: Cell, recipes: Path | None) -> Path | None:
    """The reference recipe of the cell's method and dataset, when the recipes dir has one."""
    if recipes is None:
        return None
    path = recipes / f"{cell.method}_{cell.dataset}.yaml"
    return path if path.is_file() else None


def cell_args(cell: Cell, cell_dir: Path, settings: CellSettings) -> list[str]:
    """The ``mlr-bench train`` arguments of one cell.

    Order matters (later wins): recipe or ``--method/--data``, the user's ``--config`` files,
    the seed, the cell's folder, ``--max-epochs``, the logger, then the pass-through args.
    """
    recipe = recipe_for(cell, settings.recipes)
    args = ["train"]
    if recipe is not None:
        args += ["--config", str(recipe)]
    else:
        args += ["--method", cell.method, "--data", cell.dataset]
    for config in settings.configs:
        args += ["--config", str(config)]
    args += ["--seed_everything", str(cell.seed), "--trainer.default_root_dir", str(cell_dir)]
    if settings.max_epochs is not None:
        args += ["--trainer.max_epochs", str(settings.max_epochs)]
    args += logger_args(settings)
    args += [*QUIET, f"--trainer.callbacks+={PROBE}", *settings.extra_args]
    return args


def logger_args(settings: CellSettings) -> list[str]:
    """``--trainer.logger`` for the chosen logger; W&B runs are grouped by benchmark id (their
    default name is already ``<method>-<dataset>-<backbone>-s<seed>``)."""
    if settings.logger is None:
        return []
    if settings.logger not in LOGGERS:
        raise MLRBenchError(
            f"--logger: unknown logger {settings.logger!r}; expected one of {', '.join(LOGGERS)}"
        )
    target = LOGGERS[settings.logger]
    if target is None:
        return []
    args = ["--trainer.logger", target]
    if settings.logger == "wandb":
        args += [
            "--trainer.logger.init_args.project",
            settings.project,
            "--trainer.logger.init_args.group",
            settings.group,
        ]
    return args
