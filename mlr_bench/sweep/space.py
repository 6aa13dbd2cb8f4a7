"""Search spaces: what a method lets ``mlr-bench sweep`` tune, centred on its reference values.

A method declares ``search_space``, a class attribute mapping ``__init__`` argument names to
ranges. Ranges are relative to the *reference value* (what the recipe of that dataset sets,
else the ``__init__`` default), so one declaration fits every dataset's recipe: a learning
rate that is 1e-3 on one dataset and 1e-4 on another is searched around each. Nothing that
changes the training budget may be declared (epochs, corpus sizes, batch size, template
copies): tuning is equal-budget, the budget being the recipe's (``docs/budgets.md``).
"""

from __future__ import annotations

import inspect
import itertools
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: Argument names that change what training spends, never searched (``docs/sweep.md``).
BUDGET_PATTERN = re.compile(
    r"(^|_)(epochs?|steps|num|batch|copies|samples|size)(_|$)|^max_|_epoch$|^n_"
)


@dataclass(frozen=True)
class LogScale:
    """Log-uniform over ``[ref / factor, ref * factor]`` (learning rates, noise, scales)."""

    factor: float = 10.0


@dataclass(frozen=True)
class Interval:
    """Uniform over ``[low, high]`` (mixing weights in [0, 1]); widened to hold the reference."""

    low: float
    high: float


@dataclass(frozen=True)
class Choice:
    """One of ``options`` (categorical)."""

    options: tuple[Any, ...]


Spec = LogScale | Interval | Choice


@dataclass(frozen=True)
class Dimension:
    """One searched argument with its resolved range and reference value."""

    name: str
    kind: str  # "log", "uniform" or "choice"
    reference: Any
    low: float | None = None
    high: float | None = None
    options: tuple[Any, ...] = ()

    def describe(self) -> str:
        """``log-uniform [1e-04, 1e-02]``, ``uniform [0, 1]`` or ``one of single, ensemble``."""
        if self.kind == "choice":
            return "one of " + ", ".join(str(o) for o in self.options)
        name = "log-uniform" if self.kind == "log" else "uniform"
        return f"{name} [{self.low:.3g}, {self.high:.3g}]"

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "reference": self.reference,
            "low": self.low,
            "high": self.high,
            "options": list(self.options),
        }


class SearchSpaceError(ValueError):
    """A declared search space that cannot be used (raised for method authors, not users)."""


def declared_space(method_class: type) -> Mapping[str, Spec]:
    """The method's ``search_space``; an empty mapping means "nothing to tune"."""
    space = getattr(method_class, "search_space", None)
    if space is None:
        raise SearchSpaceError(
            f"{method_class.__name__} declares no search_space (a class attribute mapping "
            "__init__ arguments to LogScale/Interval/Choice ranges, see docs/sweep.md)"
        )
    return space


def init_defaults(method_class: type) -> dict[str, Any]:
    """``__init__`` argument -> default (arguments without a default are left out)."""
    params = inspect.signature(method_class.__init__).parameters
    return {n: p.default for n, p in params.items() if p.default is not inspect.Parameter.empty}


def check_space(method_class: type, space: Mapping[str, Spec]) -> None:
    """Every searched name is an ``__init__`` argument and none changes the budget."""
    defaults = init_defaults(method_class)
    for name, spec in space.items():
        if name not in defaults:
            raise SearchSpaceError(
                f"{method_class.__name__}.search_space: {name!r} is not an __init__ argument "
                "with a default"
            )
        if BUDGET_PATTERN.search(name):
            raise SearchSpaceError(
                f"{method_class.__name__}.search_space: {name!r} looks like a training-budget "
                "setting; sweeps are equal-budget and never search it"
            )
        if not isinstance(spec, LogScale | Interval | Choice):
            raise SearchSpaceError(
                f"{method_class.__name__}.search_space[{name!r}]: expected LogScale, Interval "
                f"or Choice, got {type(spec).__name__}"
            )


def resolve(
    method_class: type, space: Mapping[str, Spec], references: Mapping[str, Any]
) -> list[Dimension]:
    """Concrete dimensions around ``references`` (recipe values, else ``__init__`` defaults)."""
    check_space(method_class, space)
    defaults = init_defaults(method_class)
    dims = []
    for name, spec in space.items():
        ref = references.get(name, defaults[name])
        if isinstance(spec, Choice):
            options = tuple(spec.options)
            if ref not in options:
                options = (ref, *options)
            dims.append(Dimension(name, "choice", ref, options=options))
            continue
        if isinstance(ref, bool) or not isinstance(ref, int | float):
            raise SearchSpaceError(
                f"{method_class.__name__}.{name}: reference value {ref!r} is not a number"
            )
        if isinstance(spec, LogScale):
            if ref <= 0 or spec.factor <= 1:
                raise SearchSpaceError(
                    f"{method_class.__name__}.{name}: LogScale needs a positive reference and "
                    f"a factor > 1 (reference {ref!r}, factor {spec.factor})"
                )
            dims.append(Dimension(name, "log", ref, low=ref / spec.factor, high=ref * spec.factor))
        else:
            low, high = min(spec.low, ref), max(spec.high, ref)
            dims.append(Dimension(name, "uniform", ref, low=float(low), high=float(high)))
    return dims


def grid(dims: Sequence[Dimension]) -> list[dict[str, Any]] | None:
    """Every combination of an all-categorical space, reference first (None: not finite)."""
    if any(d.kind != "choice" for d in dims):
        return None
    names = [d.name for d in dims]
    points = itertools.product(*[d.options for d in dims])
    combos = [dict(zip(names, point, strict=True)) for point in points]
    reference = reference_params(dims)
    return [reference, *[c for c in combos if c != reference]]


def reference_params(dims: Sequence[Dimension]) -> dict[str, Any]:
    return {d.name: d.reference for d in dims}


def cli_value(value: Any) -> str:
    """A value as a ``--model.X`` command-line word (floats round-trip exactly)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)
    return str(value)


def override_args(params: Mapping[str, Any]) -> list[str]:
    """``{"lr": 0.001}`` -> ``["--model.lr", "0.001"]``, in the space's order."""
    args: list[str] = []
    for name, value in params.items():
        args += [f"--model.{name}", cli_value(value)]
    return args
