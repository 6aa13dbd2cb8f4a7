"""The benchmark matrix: which (method, dataset, backbone, seed) cells to run and with which
arguments."""

from __future__ import annotations

import hashlib
import json
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlr_bench
from mlr_bench import registry
from mlr_bench.benchmark.probe import CLASS_PATH as PROBE
from mlr_bench.errors import MLRBenchError
from mlr_bench.protocol import CLEAN

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
#: Tracks of the matrix: the recipes' hyperparameters, or those a sweep chose (``--tuned``).
REFERENCE, TUNED = "reference", "tuned"


@dataclass(frozen=True)
class Cell:
    """One run of the matrix: a method on a dataset with a seed, in its own folder; on the
    tuned track with the hyperparameters its sweep chose (``mlr-bench sweep``)."""

    method: str
    dataset: str
    seed: int
    track: str = REFERENCE
    #: ``--backbones``: the CLIP the cell runs (``--method.backbone``); None = its recipe's.
    backbone: str | None = None

    @property
    def name(self) -> str:
        track = "" if self.track == REFERENCE else f"-{self.track}"
        backbone = "" if self.backbone is None else "-" + re.sub(r"[^\w.-]", "_", self.backbone)
        return f"{self.method}-{self.dataset}{backbone}{track}-s{self.seed}"


@dataclass
class CellSettings:
    """What every cell shares: recipes, extra configs, pass-through args, logger."""

    recipes: Path | None = DEFAULT_RECIPES
    configs: Sequence[str] = ()
    extra_args: Sequence[str] = ()
    max_epochs: int | None = None
    logger: str | None = None
    #: The protocol of every cell (``--protocol``; recipes and args after ``--`` may differ:
    #: each cell's results record the protocol it ran, and the leaderboard separates them).
    protocol: str = CLEAN
    #: Replicates of the leaderboard's bootstrap (None: automatic; 0: none). Not a cell
    #: setting: it changes the report, not the runs.
    bootstrap: int | None = None
    #: Cells run at once (``--workers``; not a cell setting: each cell's numbers are its own).
    workers: int = 1
    #: Where cells run: "local" (this machine), "slurm" or "submitit-local" (cluster jobs via
    #: submitit, see ``launcher.py``), with ``slurm`` holding the ``--slurm.*`` options.
    launcher: str = "local"
    slurm: Any = None
    project: str = "mlr-bench"
    group: str = "benchmark"
    #: Folder of sweep outputs, ``<tuned>/<method>-<dataset>/best.yaml`` (``--tuned``): adds
    #: the tuned track.
    tuned: Path | None = None
    #: ``--backbones``: every cell once per CLIP (None = the recipe's own backbone).
    backbones: Sequence[str | None] = (None,)


def split_list(option: str, value: str) -> list[str]:
    """``a,b, c`` -> ``["a", "b", "c"]``; an empty list or an empty item (``1,,2``, a trailing
    comma: usually a lost value) is a user error."""
    items = [v.strip() for v in value.split(",")]
    if not any(items):
        raise MLRBenchError(f"{option}: expected a comma-separated list, got {value!r}")
    if not all(items):
        raise MLRBenchError(f"{option}: empty item in {value!r}; expected e.g. a,b,c")
    return items


#: Seeds ``seed_everything`` accepts; Lightning silently replaces others by 0.
SEED_RANGE = (0, 2**32 - 1)


def parse_seeds(value: str) -> list[int]:
    """``1,2,3`` -> ``[1, 2, 3]`` (repeats dropped); non-integers and seeds out of range fail."""
    seeds = []
    for item in split_list("--seeds", value):
        try:
            seed = int(item)
        except ValueError:
            raise MLRBenchError(f"--seeds: expected integers like 1,2,3, got {item!r}") from None
        if not SEED_RANGE[0] <= seed <= SEED_RANGE[1]:
            raise MLRBenchError(
                f"--seeds: {seed} is out of range; seeds go from {SEED_RANGE[0]} to {SEED_RANGE[1]}"
            )
        seeds.append(seed)
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
                f"it {failure.reason} ({failure.error})",
                file=sys.stderr,
            )
        return [name for name in registry.entries(group) if name in loaded]
    option = "--methods" if kind == "method" else "--data"
    known = registry.entries(group)
    wanted = split_list(option, value)
    unknown = [n for n in wanted if n.lower() not in known]
    if unknown:  # all of them in one message, with the choices
        names = ", ".join(repr(n) for n in unknown)
        raise MLRBenchError(
            f"{option}: unknown {kind} name(s) {names}; choose from: all, "
            f"{', '.join(sorted(known)) or '(none installed)'} (`mlr-bench list` describes them)"
        )
    return list(dict.fromkeys(known[n.lower()].name for n in wanted))


def expand(
    methods: Sequence[str],
    datasets: Sequence[str],
    seeds: Sequence[int],
    tracks: Sequence[str] = (REFERENCE,),
    backbones: Sequence[str | None] = (None,),
) -> list[Cell]:
    """Cells in run order: dataset, method, backbone, track, then seed (one method's seeds
    side by side)."""
    return [
        Cell(m, d, s, t, b)
        for d in datasets
        for m in methods
        for b in backbones
        for t in tracks
        for s in seeds
    ]


def backbone_of(record: Mapping[str, Any]) -> str | None:
    """A record's ``--backbones`` axis value: its stored settings', else the one a failed or
    busy cell was given (None: the recipe's own backbone)."""
    settings = record.get("settings")
    stored = settings.get("backbone") if isinstance(settings, Mapping) else None
    return stored or record.get("backbone_axis")


def image_tower(backbone: str) -> str | None:
    """ "resnet" or "vit" for an open_clip config name (bundled ones included), without
    building the model; None when the name is no known config (a local folder, a typo)."""
    import open_clip

    from mlr_bench.clip.backbone import register_bundled_configs

    register_bundled_configs()
    config = open_clip.get_model_config(backbone)
    if not config:
        return None
    return "resnet" if isinstance(config["vision_cfg"].get("layers"), list | tuple) else "vit"


def runs_on(cell: Cell) -> bool:
    """Whether the cell's method can run on its backbone (``MLRMethod.image_towers``)."""
    if cell.backbone is None:
        return True
    tower = image_tower(cell.backbone)
    method = registry.resolve("method", cell.method).load()
    return tower is None or tower in method.image_towers


def track_of(record: Mapping[str, Any]) -> str:
    """A record's track: its own key, else its stored settings' (absent: reference)."""
    settings = record.get("settings")
    stored = settings.get("track") if isinstance(settings, Mapping) else None
    return record.get("track") or stored or REFERENCE


def record_name(record: Mapping[str, Any]) -> str:
    """The name of the cell a record came from (``comc-world-tuned-s1``)."""
    cell = Cell(
        record["method"], record["dataset"], record["seed"], track_of(record), backbone_of(record)
    )
    return cell.name


def tuned_config(cell: Cell, settings: CellSettings) -> Path | None:
    """The sweep's ``best.yaml`` of a tuned-track cell (None on the reference track)."""
    if cell.track != TUNED or settings.tuned is None:
        return None
    return settings.tuned / f"{cell.method}-{cell.dataset}" / "best.yaml"


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
    tuned = tuned_config(cell, settings)
    if tuned is not None:
        args += ["--config", str(tuned)]
    if cell.backbone is not None:
        args += ["--method.backbone", cell.backbone]
    args += ["--seed_everything", str(cell.seed), "--trainer.default_root_dir", str(cell_dir)]
    if settings.max_epochs is not None:
        args += ["--trainer.max_epochs", str(settings.max_epochs)]
    args += logger_args(settings)
    if settings.protocol != CLEAN:
        args += ["--protocol", settings.protocol]
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


# ---- a cell's key: its full settings ----------------------------------------------------------
def _file_entry(path: Path | str) -> dict[str, str]:
    """A file by content (sha256) and path: moving a recipe is not a change, editing it is."""
    path = Path(path)
    try:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as exc:
        raise MLRBenchError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    return {"path": str(path), "sha256": digest}


def cell_settings(cell: Cell, settings: CellSettings) -> dict[str, Any]:
    """Everything that decides a cell's result, as stored in its ``cell.json``/``result.json``.

    The cell's folder (``--out``), the isolation and the W&B group are left out: they do not
    change the numbers. The logger is in: it decides what a finished cell has logged.
    """
    recipe = recipe_for(cell, settings.recipes)
    tuned = tuned_config(cell, settings)
    track = {"track": cell.track, "tuned": _file_entry(tuned)} if tuned is not None else {}
    return {
        "method": cell.method,
        "dataset": cell.dataset,
        "seed": cell.seed,
        "recipe": _file_entry(recipe) if recipe is not None else None,
        "configs": [_file_entry(c) for c in settings.configs],
        "max_epochs": settings.max_epochs,
        "logger": settings.logger or "csv",  # csv is the default: the same cell
        "protocol": settings.protocol,
        "extra_args": list(settings.extra_args),
        **track,  # reference cells: no key, as before tracks existed
        **({"backbone": cell.backbone} if cell.backbone is not None else {}),
    }


def comparable(stored: Mapping[str, Any]) -> dict[str, Any]:
    """The compared part of stored settings: files by content only."""

    def content(entry: Any) -> Any:
        return entry.get("sha256") if isinstance(entry, Mapping) else entry

    view = {k: stored.get(k) for k in SETTING_KEYS}
    view["recipe"] = content(view["recipe"])
    view["configs"] = [content(c) for c in view["configs"] or []]
    if view["protocol"] in (None, CLEAN):  # cells stored before protocols ran clean
        del view["protocol"]  # (and keep the fingerprints they were stored with)
    view["tuned"] = content(view["tuned"])
    for key in ("track", "tuned", "backbone"):  # as before tracks and backbones existed
        if view[key] in (None, REFERENCE):
            del view[key]
    return view


#: The settings a stored cell is compared on, in message order.
SETTING_KEYS = ("method", "dataset", "seed", "recipe", "configs", "max_epochs", "logger")
SETTING_KEYS += ("protocol", "extra_args", "track", "tuned", "backbone")


def fingerprint(stored: Mapping[str, Any]) -> str:
    """sha256 of the compared settings: equal fingerprints, same cell."""
    text = json.dumps(comparable(stored), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _show(key: str, value: Any) -> str:
    if key == "recipe":
        return "none (--method/--data)" if value is None else str(value.get("path"))
    if key == "configs":
        return "[" + ", ".join(str(c.get("path")) for c in value or []) + "]"
    if key == "extra_args":
        return repr(" ".join(value or []))
    if key == "protocol":
        return value or CLEAN
    if key == "track":
        return value or REFERENCE
    if key == "tuned":
        return "none" if value is None else str(value.get("path"))
    if key == "backbone":
        return value or "the recipe's"
    return "not set" if value is None else str(value)


def settings_diff(stored: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """``max_epochs: 2 (stored) -> 5 (now)``, one line per differing setting."""
    old, new = comparable(stored), comparable(now)
    lines = []
    for key in SETTING_KEYS:
        if old.get(key, CLEAN) == new.get(key, CLEAN):  # protocol, track, ... may be absent
            continue
        before, after = _show(key, stored.get(key)), _show(key, now.get(key))
        if before == after:  # same path, other content
            after += " (edited since)"
        long_option = ("max_epochs", "logger", "protocol")
        label = "--" + key.replace("_", "-") if key in long_option else key
        if key == "extra_args":
            label = "args after --"
        elif key == "configs":
            label = "--config"
        elif key == "tuned":
            label = "--tuned config"
        elif key == "backbone":
            label = "--backbones"
        lines.append(f"{label}: {before} (stored) -> {after} (now)")
    return lines
