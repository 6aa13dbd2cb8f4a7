"""Discovery of methods and datamodules through package entry points.

Built-in methods and datamodules are declared in mlr-bench's own ``pyproject.toml`` under the
same entry-point groups a third-party plugin uses, so a plugin is a first-class citizen: it is
listed, selectable by short name and loaded the same way.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from dataclasses import dataclass
from functools import cache
from importlib.metadata import entry_points

from mlr_bench.errors import MLRBenchError

METHODS_GROUP = "mlr_bench.methods"
DATAMODULES_GROUP = "mlr_bench.datamodules"
GROUPS = {"method": METHODS_GROUP, "data": DATAMODULES_GROUP}


class UnknownNameError(MLRBenchError, LookupError):
    """A short name that no installed plugin registers."""


@dataclass(frozen=True)
class RegistryEntry:
    """One registered name: where it points and, once loaded, the class or the import error."""

    name: str
    group: str
    target: str  # "package.module:ClassName"
    distribution: str | None

    @property
    def class_path(self) -> str:
        """Dotted path that jsonargparse/LightningCLI accept as ``class_path``."""
        return self.target.replace(":", ".")

    def load(self) -> type:
        """Import the target class; errors propagate so callers decide how to report them."""
        module_name, _, attr = self.target.partition(":")
        obj = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
        return obj  # type: ignore[return-value]


@dataclass(frozen=True)
class LoadFailure:
    """A registered plugin that could not be used; reported, never fatal for the others.

    ``invalid`` is True when the target imported but is not a subclass of the group's base
    class (an entry point pointing at a function or an unrelated class), False when the
    import itself failed.
    """

    entry: RegistryEntry
    error: str
    invalid: bool = False

    @property
    def status(self) -> str:
        """What ``mlr-bench list`` shows in place of the description."""
        return "INVALID" if self.invalid else "FAILED TO LOAD"

    @property
    def reason(self) -> str:
        """Why the entry point is unusable, in a few words."""
        return "is not a valid plugin" if self.invalid else "failed to load"

    def message(self, kind: str) -> str:
        """One line saying why ``--<kind> NAME`` cannot run this entry point."""
        source = f", from {self.entry.distribution}" if self.entry.distribution else ""
        return (
            f"--{kind} {self.entry.name}: the entry point '{self.entry.name}' "
            f"({self.entry.target}{source}) {self.reason}: {self.error}"
        )


def base_class(group: str) -> type:
    """The class every entry of ``group`` must subclass (imported late: no import cycle)."""
    if group == METHODS_GROUP:
        from mlr_bench.method import MLRMethod

        return MLRMethod
    from mlr_bench.datamodule import MLRDataModule

    return MLRDataModule


def _kind_of(obj: object) -> str:
    """``obj`` described for an error message: "function 'f'", "class 'pkg.C'"..."""
    if inspect.isclass(obj):
        return f"class '{obj.__module__}.{obj.__qualname__}'"
    if inspect.isfunction(obj) or inspect.isbuiltin(obj):
        return f"function '{getattr(obj, '__qualname__', obj)}'"
    if inspect.ismodule(obj):
        return f"module '{obj.__name__}'"
    return f"{type(obj).__name__} object"


def entries(group: str) -> dict[str, RegistryEntry]:
    """All names registered in ``group``, sorted; the first registration of a name wins."""
    found: dict[str, RegistryEntry] = {}
    for ep in sorted(entry_points(group=group), key=lambda e: e.name):
        dist = getattr(ep, "dist", None)
        name = ep.name.lower()
        found.setdefault(
            name, RegistryEntry(name, group, ep.value, dist.name if dist is not None else None)
        )
    return found


@cache
def load_group(group: str) -> tuple[dict[str, type], tuple[LoadFailure, ...]]:
    """Import every plugin of ``group``: loaded classes by name, plus the failures.

    Importing is what makes a plugin's classes resolvable by jsonargparse and visible in
    ``--help``; a broken plugin is recorded with its error instead of aborting discovery.
    """
    loaded: dict[str, type] = {}
    failures: list[LoadFailure] = []
    base = base_class(group)
    for name, entry in entries(group).items():
        try:
            obj = entry.load()
        except Exception as exc:  # any import-time error of foreign code must not break us
            failures.append(LoadFailure(entry, f"{type(exc).__name__}: {exc}"))
            continue
        if not (inspect.isclass(obj) and issubclass(obj, base)):
            reason = f"{entry.target} is a {_kind_of(obj)}, not a subclass of {base.__name__}"
            failures.append(LoadFailure(entry, reason, invalid=True))
            continue
        loaded[name] = obj
    return loaded, tuple(failures)


def failure_for(kind: str, name: str) -> LoadFailure | None:
    """Why the registered short name ``name`` cannot be used, or None if it can."""
    for failure in load_group(GROUPS[kind])[1]:
        if failure.entry.name == name.lower():
            return failure
    return None


def resolve(kind: str, name: str) -> RegistryEntry:
    """Registry entry for a short name (case-insensitive), or a helpful UnknownNameError."""
    group = GROUPS[kind]
    known = entries(group)
    entry = known.get(name.lower())
    if entry is not None:
        return entry
    raise UnknownNameError(unknown_name_message(kind, name, sorted(known)))


def unknown_name_message(kind: str, name: str, known: list[str]) -> str:
    """The one-paragraph error a user sees for an unknown ``--method``/``--data`` value."""
    close = difflib.get_close_matches(name.lower(), known, n=1, cutoff=0.5)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    listing = ", ".join(known) if known else "(none installed)"
    return (
        f"unknown --{kind} '{name}'.{hint} Known {kind} names: {listing}. "
        "A full class path (package.module.Class) or a YAML file also works; "
        "`mlr-bench list` shows descriptions."
    )


def name_for_class(kind: str, cls: type) -> str:
    """The registered short name of ``cls`` if it has one, else its lower-cased class name."""
    path = f"{cls.__module__}.{cls.__qualname__}"
    for name, entry in entries(GROUPS[kind]).items():
        if entry.class_path == path:
            return name
    return cls.__name__.lower()


def describe(obj: object) -> str:
    """First line of a class docstring: the one-line description shown by ``mlr-bench list``."""
    doc = inspect.getdoc(obj) or ""
    return doc.strip().splitlines()[0] if doc.strip() else "(no description)"
