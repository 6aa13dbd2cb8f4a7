"""Fingerprints of what changes frozen features: the backbone's weights and the preprocessing."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from typing import Any

import torch

from mlr_bench.clip import CLIPBackbone


def weights_hash(module: torch.nn.Module) -> str:
    """Hash of the actual weights (names, shapes, dtypes, bytes), however they were loaded.

    Hashing the tensors rather than a file path means a re-downloaded, converted or moved
    checkpoint with the same numbers keeps its caches, and any changed number invalidates them.
    """
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:20]


def backbone_key(backbone: CLIPBackbone) -> dict[str, Any]:
    """Backbone part of a cache key; the weights hash is computed once per backbone object and
    recomputed if its dtypes change (``.half()`` after the first key would otherwise keep the
    float32 hash)."""
    dtypes = sorted({str(t.dtype) for t in backbone.clip.state_dict().values()})
    cached = getattr(backbone, "_weights_hash", None)
    if cached is None or getattr(backbone, "_weights_hash_dtypes", None) != dtypes:
        cached = weights_hash(backbone.clip)
        backbone._weights_hash = cached
        backbone._weights_hash_dtypes = dtypes
    return {"model": backbone.model_name, "weights": cached}


def transform_key(transform: Any) -> str:
    """Preprocessing part of a cache key: torchvision transforms print all their parameters.

    Two kinds print too little or too much: ``Lambda()`` hides its function (two different
    lambdas would share a cache), and an object with the default ``<... at 0x7f...>`` repr
    would change the key in every process (a cache never reused, folders piling up). Both
    are described by what they are instead.
    """
    text = repr(transform)
    if "Lambda()" in text or " at 0x" in text:
        text = _describe(transform)
    return " ".join(text.split())


def _qualname(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', type(obj).__name__)}"


def _describe(transform: Any) -> str:
    inner = getattr(transform, "transforms", None)
    if isinstance(inner, (list, tuple)):
        return f"{type(transform).__name__}({', '.join(_describe(t) for t in inner)})"
    function = getattr(transform, "lambd", None)
    if function is not None:  # torchvision.transforms.Lambda
        return f"{type(transform).__name__}({_function_key(function)})"
    if callable(transform) and hasattr(transform, "__code__"):
        return _function_key(transform)
    text = repr(transform)
    if " at 0x" not in text:
        return text
    try:
        state = {k: v for k, v in sorted(vars(transform).items()) if not k.startswith("_")}
    except TypeError:  # no __dict__: the class is all we can name
        state = {}
    fields = ", ".join(f"{k}={_describe(v)}" for k, v in state.items())
    return f"{_qualname(type(transform))}({fields})"


def _function_key(function: Any) -> str:
    """A function by name, plus a hash of its code when it is anonymous (``<lambda>``)."""
    name = _qualname(function)
    code = getattr(function, "__code__", None)
    if "<lambda>" in name and code is not None:
        body = code.co_code + repr(code.co_consts).encode()
        name += f"#{hashlib.sha256(body).hexdigest()[:12]}"
    return name


def files_fingerprint(
    paths: Iterable[str | os.PathLike], relative_to: str | os.PathLike | None = None
) -> str:
    """Hash of every file's path, size and mtime (nanoseconds): what changes when an image is
    replaced, restored, truncated or re-encoded, at the cost of one ``stat`` per file (about
    1.3 s per 100,000 files on this project's 2-core VM, warm; content hashes would read every
    byte). A missing file counts as such, so it appearing later changes the fingerprint too.
    With ``relative_to``, names are hashed relative to it, so a moved folder keeps its key."""
    h = hashlib.sha256()
    stat = os.stat
    prefix = os.path.join(os.fspath(relative_to), "") if relative_to is not None else ""
    for path in paths:
        name = os.fspath(path)
        shown = name[len(prefix) :] if prefix and name.startswith(prefix) else name
        try:
            st = stat(name)
            h.update(f"{shown}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{shown}\0-\n".encode())
    return h.hexdigest()[:20]
