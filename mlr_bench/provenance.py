"""Where a run's CLIP weights came from, recorded beside every number the run produces.

``--method.pretrained none`` builds the real architecture (RN50, ViT-B-16, ...) with seeded
random weights: useful to rehearse a benchmark or time it, meaningless as a score. Results
files, benchmark tables, W&B runs and the CLI all ask this module, so they label such runs the
same way and a random-weight mAP is never read as a real one.
"""

from __future__ import annotations

from typing import Any, Literal

Weights = Literal["random", "pretrained", "unknown"]

RANDOM: Weights = "random"
PRETRAINED: Weights = "pretrained"
#: A method that exposes neither ``backbone.pretrained`` nor a ``pretrained`` hyperparameter.
UNKNOWN: Weights = "unknown"
#: How ``pretrained`` is spelt for a random initialisation (``create_clip`` accepts these).
NO_WEIGHTS = (None, "", "none", "random")
#: W&B tag of a run with random weights (dashboards filter on it).
RANDOM_TAG = "random-weights"


def _pretrained_setting(method: Any) -> tuple[bool, Any]:
    """``(known, pretrained)``: the backbone's own setting first (what was built), else the
    method's hyperparameter (a plugin that keeps its CLIP elsewhere)."""
    backbone = getattr(method, "backbone", None)
    if backbone is not None and hasattr(backbone, "pretrained"):
        return True, backbone.pretrained
    hparams = getattr(method, "hparams", None) or {}
    if "pretrained" in hparams:
        return True, hparams["pretrained"]
    return False, None


def weights_provenance(method: Any) -> Weights:
    """``random`` for a random initialisation, ``pretrained`` for any weights (an open_clip
    tag, a local file, the bundled world micro-CLIP), ``unknown`` when the method hides it."""
    known, pretrained = _pretrained_setting(method)
    if not known:
        return UNKNOWN
    return RANDOM if pretrained in NO_WEIGHTS else PRETRAINED


def weights_record(method: Any) -> dict[str, Any]:
    """What a results file records: the provenance and the tag or file the weights came from
    (None for random weights)."""
    known, pretrained = _pretrained_setting(method)
    weights = weights_provenance(method)
    source = str(pretrained) if known and weights == PRETRAINED else None
    return {"weights": weights, "pretrained": source}


def random_weights_warning(method: Any) -> str | None:
    """The CLI's one line for a run with random weights; None for any other run. It is a
    ``note``, so a run refused later still prints exactly one ``mlr-bench`` error line."""
    if weights_provenance(method) != RANDOM:
        return None
    model = getattr(getattr(method, "backbone", None), "model_name", None)
    model = model or (getattr(method, "hparams", None) or {}).get("backbone", "?")
    return (
        f"mlr-bench: warning: CLIP '{model}' has random weights (--method.pretrained none): "
        "for rehearsal and throughput only; its mAP means nothing"
    )
