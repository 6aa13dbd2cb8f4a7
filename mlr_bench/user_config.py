"""Machine-local settings in ``~/.config/mlr-bench.yaml`` (or the file ``$MLR_BENCH_CONFIG``).

The file says where *this machine* keeps each dataset, and optionally a few defaults::

    # ~/.config/mlr-bench.yaml
    data_roots:            # --data.root per dataset, used only when that dataset is chosen
      voc2007: ~/data/VOCdevkit
      coco2014: /datasets/coco
    defaults:              # LightningCLI defaults for fit/validate/test/predict/train
      trainer:
        accelerator: gpu
      seed_everything: 0

Why this shape and not a LightningCLI config: a plain ``data: {root: ...}`` default applies to
*every* dataset (``--data world`` then fails on an option it does not take, and one dataset's
root silently serves another), while a root belongs to one dataset. A root from here is added
as ``--data.root`` only when that dataset is the chosen one and nothing (command line or
``--config`` file) sets a root; it is announced on stderr and recorded in the run's
``config.yaml``. ``defaults`` may hold ``trainer``, ``evaluator``, ``checkpoint`` and
``seed_everything``; anything given on the command line or in a ``--config`` file wins. Every
error about the file names it. Older files written as a LightningCLI config with only those
keys at the top level keep working (they are read as ``defaults``).
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlr_bench.errors import MLRBenchError

#: Default location; ``$MLR_BENCH_CONFIG`` replaces it (tests, several set-ups per machine).
USER_CONFIG = "~/.config/mlr-bench.yaml"
ENV_VAR = "MLR_BENCH_CONFIG"
SECTIONS = ("data_roots", "defaults")
#: Top-level config keys ``defaults`` may set (the method and data are chosen per command).
DEFAULT_KEYS = ("trainer", "evaluator", "checkpoint", "seed_everything")


class UserConfigError(MLRBenchError, ValueError):
    """The user config file is malformed or names something unknown."""


@dataclass
class UserConfig:
    """The parsed file: where it is, the roots per dataset name, and the defaults."""

    path: Path | None = None
    data_roots: dict[str, str] = field(default_factory=dict)
    defaults: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """The file as named in messages (``~`` kept short)."""
        if self.path is None:
            return "(no user config)"
        home = Path.home()
        try:
            return "~/" + str(self.path.relative_to(home))
        except ValueError:
            return str(self.path)


def user_config_path() -> Path:
    """``$MLR_BENCH_CONFIG`` if set, else ``~/.config/mlr-bench.yaml``."""
    return Path(os.environ.get(ENV_VAR) or USER_CONFIG).expanduser()


def _closest(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.5)
    return f"; did you mean '{close[0]}'?" if close else ""


def load_user_config(path: Path | None = None) -> UserConfig:
    """Read and check the user config; an absent file is an empty config.

    ``$MLR_BENCH_CONFIG`` naming a file that does not exist is an error (an explicit setting
    that silently does nothing would hide a typo); the default location may be absent.
    """
    import yaml

    explicit = path is not None or bool(os.environ.get(ENV_VAR))
    path = path or user_config_path()
    config = UserConfig(path=path)
    label = config.label
    if not path.is_file():
        if explicit and not path.exists():
            raise UserConfigError(f"{label} (from ${ENV_VAR}): no such file")
        if path.exists():
            raise UserConfigError(f"{label}: not a file; expected the mlr-bench user config")
        return UserConfig()
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise UserConfigError(f"{label}: cannot read it ({exc})") from None
    except yaml.YAMLError as exc:
        detail = " ".join(str(exc).split())
        raise UserConfigError(f"{label}: not valid YAML: {detail}") from None
    if data is None:
        return config
    if not isinstance(data, dict):
        raise UserConfigError(
            f"{label}: expected a mapping with {' and/or '.join(SECTIONS)}, "
            f"got {type(data).__name__}"
        )
    legacy = {k: data.pop(k) for k in list(data) if k in DEFAULT_KEYS}
    for key in data:
        if key in ("data", "model", "method"):
            raise UserConfigError(_legacy_message(label, key, data[key]))
        if key not in SECTIONS:
            choices = [*SECTIONS, *DEFAULT_KEYS]
            raise UserConfigError(
                f"{label}: unknown key '{key}'{_closest(str(key), choices)} "
                f"(accepted: {', '.join(SECTIONS)}; see the mlr_bench.user_config docs)"
            )
    config.data_roots = _data_roots(label, data.get("data_roots"))
    defaults = data.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise UserConfigError(f"{label}: defaults: expected a mapping, got {defaults!r}")
    for key in defaults:
        if key not in DEFAULT_KEYS:
            hint = (
                " (data roots go under data_roots: {NAME: DIR})"
                if key in ("data", "data_roots")
                else ""
            )
            raise UserConfigError(
                f"{label}: defaults.{key} is not accepted{_closest(str(key), list(DEFAULT_KEYS))}"
                f"{hint}; defaults may set {', '.join(DEFAULT_KEYS)}"
            )
    config.defaults = {**legacy, **defaults}
    return config


def _legacy_message(label: str, key: str, value: Any) -> str:
    """Why a LightningCLI-style ``data:``/``model:`` section is refused, and what to write."""
    if key == "data" and isinstance(value, Mapping):
        init = value.get("init_args", value)
        root = init.get("root") if isinstance(init, Mapping) else None
        if root is not None:
            return (
                f"{label}: 'data: {{root: ...}}' would apply to every dataset; write the root per "
                f"dataset instead, e.g. 'data_roots: {{voc2007: {root}}}'"
            )
    return (
        f"{label}: a top-level '{key}:' section would choose the {key} of every command; put "
        "it in a file passed with --config (data roots: 'data_roots: {NAME: DIR}')"
    )


def _data_roots(label: str, value: Any) -> dict[str, str]:
    """``data_roots`` checked: registered dataset names that take a root, mapped to folders."""
    from mlr_bench import registry

    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UserConfigError(
            f"{label}: data_roots: expected a mapping of dataset name to folder, e.g. "
            f"'data_roots: {{voc2007: ~/data/VOCdevkit}}', got {value!r}"
        )
    loaded = registry.load_group(registry.DATAMODULES_GROUP)[0]
    known = sorted(registry.entries(registry.DATAMODULES_GROUP))
    roots: dict[str, str] = {}
    for name, root in value.items():
        key = str(name).lower()
        if key not in known:
            raise UserConfigError(
                f"{label}: data_roots.{name}: unknown dataset{_closest(key, known)} "
                f"(known: {', '.join(known)})"
            )
        if not isinstance(root, str | Path) or not str(root).strip():
            raise UserConfigError(
                f"{label}: data_roots.{name}: expected a folder path, got {root!r}"
            )
        cls = loaded.get(key)
        if cls is not None and not _takes_root(cls):
            raise UserConfigError(
                f"{label}: data_roots.{name}: the '{key}' dataset takes no --data.root "
                "(remove this entry)"
            )
        roots[key] = str(Path(str(root)).expanduser())
    return roots


def _takes_root(cls: type) -> bool:
    import inspect

    return "root" in inspect.signature(cls.__init__).parameters
