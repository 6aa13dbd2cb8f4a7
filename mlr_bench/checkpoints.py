"""Checkpoints a user hands to a run: read them safely, and refuse ones that do not fit the run.

LightningCLI re-applies the hyperparameters saved in ``--ckpt_path`` over the parsed config,
class path included, so a checkpoint of another method would otherwise silently replace the
requested one. Everything here runs before a run folder exists, and every problem is an
:class:`~mlr_bench.errors.MLRBenchError` naming the file, what was requested and what the
checkpoint holds. Checkpoints are written atomically (temporary file in the same folder, then
rename), so a full disk or a crash never leaves a truncated ``.ckpt`` behind.
"""

from __future__ import annotations

import importlib
import io
import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from mlr_bench import registry
from mlr_bench.errors import MLRBenchError
from mlr_bench.runs import atomic_write_bytes

#: ``ckpt_path`` values Lightning resolves itself; every mlr-bench run has a fresh folder, so
#: "best"/"last" would find nothing (fit then silently starts from scratch).
SPECIAL_CKPT_PATHS = ("best", "last", "hpc", "registry")
UNSAFE_HINT = (
    "it holds pickled Python objects other than tensors and plain data, and loading such a "
    "file can run arbitrary code; only checkpoints written by mlr-bench/Lightning are accepted"
)


class CheckpointError(MLRBenchError):
    """A checkpoint is missing, unreadable, unsafe, or was made for a different run."""


def _is_remote(path: str) -> bool:
    return "://" in path


def load_weights_file(path: str | Path, what: str = "checkpoint") -> Any:
    """``torch.load`` a user-given file with ``weights_only=True``: a crafted pickle cannot run
    code. Every failure becomes one message naming the file and what was expected."""
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"{what} '{path}' does not exist")
    if path.is_dir():
        found = sorted(str(p) for p in path.rglob("*.ckpt"))[:3]
        hint = f" (it holds e.g. {', '.join(found)})" if found else ""
        raise CheckpointError(f"{what} '{path}' is a directory; expected a .ckpt file{hint}")
    if not os.access(path, os.R_OK):
        raise CheckpointError(f"{what} '{path}' is not readable (permission denied)")
    try:
        with path.open("rb") as f:
            head = f.read(4)
    except OSError as exc:
        raise CheckpointError(f"{what} '{path}' is not readable: {exc.strerror}") from None
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):  # torch.save: zip/pickle
        raise CheckpointError(_not_a_checkpoint(path, what, None))
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Unsupported global" in str(exc):  # the weights-only unpickler refused an import
            raise CheckpointError(f"{what} '{path}' refused: {UNSAFE_HINT}") from None
        raise CheckpointError(_not_a_checkpoint(path, what, exc)) from None
    except Exception as exc:  # torch's unpickler fails on junk in many ways (KeyError, ...)
        raise CheckpointError(_not_a_checkpoint(path, what, exc)) from None


def _not_a_checkpoint(path: Path, what: str, exc: BaseException | None) -> str:
    if exc is None:
        detail = "its content is not in torch.save's format"
    else:
        detail = f"torch.load failed: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
    return (
        f"{what} '{path}' is not a PyTorch checkpoint (expected a .ckpt file saved by "
        f"mlr-bench/Lightning; {detail})"
    )


def read_checkpoint(ckpt_path: str | Path, option: str = "--ckpt_path") -> dict[str, Any] | None:
    """The checkpoint dict behind a user's ``--ckpt_path`` (None for a remote URL, which
    Lightning reads itself), or a :class:`CheckpointError` saying what is wrong with it."""
    text = str(ckpt_path)
    if text in SPECIAL_CKPT_PATHS:
        raise CheckpointError(
            f"{option} {text}: every mlr-bench run writes to a new folder, so there is no "
            f"'{text}' checkpoint to use yet; pass the path of a .ckpt file (e.g. "
            "runs/<method>/<data>/version_N/checkpoints/last.ckpt)"
        )
    if _is_remote(text):
        return None
    ckpt = load_weights_file(text, what=f"{option} file")
    if not isinstance(ckpt, Mapping) or "state_dict" not in ckpt:
        raise CheckpointError(
            f"{option} file '{text}' is not a Lightning checkpoint (no 'state_dict'); expected "
            "a .ckpt file written by mlr-bench fit/train"
        )
    return dict(ckpt)


# ---- does the checkpoint fit the requested run? ----------------------------------------------
def _class_label(class_path: str) -> str:
    """``TaIDPT (taidpt)`` for a registered method, else the class path."""
    name = class_path.rsplit(".", 1)[-1]
    for short, entry in registry.entries(registry.GROUPS["method"]).items():
        if entry.class_path == class_path:
            return f"{name} ({short})"
    return class_path


def _import_class(class_path: str) -> type | None:
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None


def _identity(cls: type | None, hparams: Mapping[str, Any]) -> dict[str, Any]:
    ident = getattr(cls, "checkpoint_identity", None)
    if ident is None:
        from mlr_bench.method import MLRMethod

        ident = MLRMethod.checkpoint_identity
    return dict(ident(hparams))


def check_method_matches(
    ckpt_path: str, hparams: Mapping[str, Any], class_path: str | None, init_args: Mapping
) -> None:
    """Refuse a checkpoint saved by another method class or for another backbone (or another
    identity-defining setting, e.g. PVP's stage) than the run asks for."""
    saved_class = hparams.get("_class_path")
    if saved_class and class_path and saved_class != class_path:
        raise CheckpointError(
            f"--ckpt_path '{ckpt_path}' is a checkpoint of {_class_label(saved_class)}, but this "
            f"run asks for {_class_label(class_path)}: pass --method "
            f"{_class_label(saved_class).split('(')[-1].rstrip(')')} to use this checkpoint, or "
            "a checkpoint of the requested method"
        )
    cls = _import_class(class_path) if class_path else None
    requested, saved = _identity(cls, init_args), _identity(cls, hparams)
    for key in requested:
        if key in saved and requested[key] != saved[key]:
            raise CheckpointError(
                f"--ckpt_path '{ckpt_path}' was trained with {key}={saved[key]!r}, but this run "
                f"asks for {key}={requested[key]!r}: pass --method.{key} {saved[key]} (or the "
                "run's own config.yaml with --config), or a checkpoint made for this setting"
            )


def check_classes_match(ckpt_path: str, hparams: Mapping[str, Any], class_names: list[str]) -> None:
    """Refuse a checkpoint trained on other class names (or another order of them): its
    outputs would be scored against the wrong labels, or not load at all."""
    saved = hparams.get("class_names")
    if saved is None or list(saved) == list(class_names):
        return
    saved = list(saved)
    if len(saved) != len(class_names):
        what = f"{len(saved)} classes, the dataset has {len(class_names)}"
    elif set(saved) == set(class_names):
        what = "the same classes in another order"
    else:
        other = sorted(set(saved) ^ set(class_names))[:5]
        what = f"different classes (differing: {', '.join(map(str, other))})"
    raise CheckpointError(
        f"--ckpt_path '{ckpt_path}' was trained on {what}: checkpoint classes "
        f"{_short_list(saved)} vs dataset classes {_short_list(class_names)}; use a checkpoint "
        "trained on this dataset's classes"
    )


def check_state_matches(ckpt_path: str, state: Mapping[str, Any], model: torch.nn.Module) -> None:
    """Refuse a checkpoint whose learned tensors do not fit the model (missing, extra, or
    differently shaped): loading is not strict (frozen weights are left out), so missing ones
    would otherwise silently keep their untrained values."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    saved = {k: tuple(v.shape) for k, v in state.items() if hasattr(v, "shape")}
    missing = sorted(set(expected) - set(saved))
    extra = sorted(set(saved) - set(expected))
    shapes = [
        f"{k} {saved[k]} vs {expected[k]}"
        for k in expected
        if k in saved and saved[k] != expected[k]
    ]
    if not (missing or extra or shapes):
        return
    parts = []
    if shapes:
        parts.append(f"shapes differ (checkpoint vs model): {'; '.join(shapes[:3])}")
    if missing:
        parts.append(f"missing {', '.join(missing[:3])}")
    if extra:
        parts.append(f"unexpected {', '.join(extra[:3])}")
    raise CheckpointError(
        f"--ckpt_path '{ckpt_path}' does not fit {type(model).__name__} as configured: "
        f"{'; '.join(parts)}"
    )


def _short_list(names: list[str]) -> str:
    shown = ", ".join(map(str, names[:6]))
    return f"[{shown}{', ...' if len(names) > 6 else ''}] ({len(names)})"


# ---- writing ---------------------------------------------------------------------------------
class AtomicCheckpointIO(TorchCheckpointIO):
    """Save each checkpoint to a temporary file next to its target, flushed to disk, then rename.

    Lightning's own local save writes into the system temp folder and moves the file across,
    which is a copy when that is another disk: a full disk or a crash then leaves a truncated
    ``.ckpt`` (and results written later would point at it). Remote paths keep Lightning's way.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None or _is_remote(str(path)):
            return super().save_checkpoint(checkpoint, path, storage_options)
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)  # serialise first: a failure here writes nothing
        atomic_write_bytes(Path(path), lambda f: f.write(buffer.getbuffer()))
        return None
