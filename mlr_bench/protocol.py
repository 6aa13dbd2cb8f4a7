"""Evaluation protocols: one switch that sets every data-side choice a number depends on.

Two protocols exist because the reference code of these methods (TaI-DPT, CoMC, PVP) makes
choices a fair comparison should not, and reproducing a published number needs them anyway:

``clean`` (the default)
    validation is a seeded subset of the *training* side (checkpoints are never selected on test
    images), captions that describe test images are dropped from the training text, class names
    and synonym tables are this project's.
``reference``
    what the reference code does: validation carved from the test set (checkpoint selection on
    test images: optimistic), test-image captions kept (COCO: human descriptions of 35,504 of the
    40,504 test images are training text), the reference's class names in prompts (COCO
    "motor bike", "aeroplane") and its synonym quirks (VOC chair <- "bench", NUS road <- "way").

Each choice remains a datamodule argument of its own; one given explicitly overrides the
protocol and is recorded as an override, so that a results file always says both the protocol
and how the run departed from it. Method-side recipes (learning-rate schedule, PVP's stage-1
hand-off, which text each dataset trains on) are the reference's under both protocols: they are
training budgets and inputs, not leaks, and live in ``configs/``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mlr_bench.errors import MLRBenchError

CLEAN = "clean"
REFERENCE = "reference"
PROTOCOLS = (CLEAN, REFERENCE)

#: Datamodule arguments a protocol sets, as (clean value, reference value).
SETTINGS: dict[str, tuple[bool, bool]] = {
    "legacy_val": (False, True),
    "drop_test_captions": (True, False),
    "reference_synonyms": (False, True),
    "reference_class_names": (False, True),
}

#: Prompt names the reference code uses where they differ from the dataset's own names
#: (TaI-DPT ``datasets/data_helpers.py`` ``coco_classname_synonyms``, first entry of each row;
#: PVP and CoMC reuse that list). VOC2007 and NUS-WIDE use the dataset's names unchanged.
REFERENCE_PROMPT_NAMES: dict[str, dict[str, str]] = {
    "coco2014": {"motorcycle": "motor bike", "airplane": "aeroplane"},
}


class ProtocolError(MLRBenchError, ValueError):
    """An unknown protocol, or one this dataset cannot follow."""


def check_protocol(protocol: str, supported: tuple[str, ...], owner: str) -> str:
    """``protocol`` when ``owner`` (a datamodule class name) supports it; a clear error if not."""
    if protocol not in PROTOCOLS:
        raise ProtocolError(
            f"unknown protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)}"
        )
    if protocol not in supported:
        raise ProtocolError(
            f"{owner} supports only the {' / '.join(supported)} protocol, not {protocol!r}: it has "
            "no reference code whose choices the reference protocol would reproduce"
        )
    return protocol


def resolve(protocol: str, explicit: Mapping[str, bool | None]) -> tuple[dict[str, bool], dict]:
    """The value of every setting in ``explicit`` (None: the protocol's) and the overrides
    (settings given explicitly with a value other than the protocol's)."""
    index = PROTOCOLS.index(protocol)
    values, overrides = {}, {}
    for name, given in explicit.items():
        default = SETTINGS[name][index]
        values[name] = default if given is None else bool(given)
        if values[name] != default:
            overrides[name] = values[name]
    return values, overrides


def protocol_record(protocol: str, values: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict:
    """What results files, the benchmark and W&B record: name, label, settings, overrides."""
    return {
        "name": protocol,
        "label": protocol_label(protocol, overrides),
        "settings": dict(values),
        "overrides": dict(overrides),
    }


def protocol_label(protocol: str, overrides: Mapping[str, Any]) -> str:
    """``clean``, or ``clean (legacy_val=true)`` when a run departed from its protocol: a
    leaderboard groups columns by this label, so two protocols never share one."""
    if not overrides:
        return protocol
    parts = ", ".join(f"{k}={str(v).lower()}" for k, v in sorted(overrides.items()))
    return f"{protocol} ({parts})"


def prompt_names(dataset: str, class_names: list[str], reference: bool) -> list[str]:
    """The names a method puts in its prompts: the reference's for ``reference``, else the
    dataset's (results and displays always use the dataset's)."""
    if not reference:
        return list(class_names)
    table = REFERENCE_PROMPT_NAMES.get(dataset, {})
    return [table.get(name, name) for name in class_names]
