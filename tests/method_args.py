"""Short settings that make each built-in method's checks run in seconds on the small world."""

from __future__ import annotations

#: PVP: two short stage-1 epochs, small template augmentation, labelled sentences.
PVP_ARGS = [
    "--method.pretrain_epochs",
    "2",
    "--method.pretrain_template_copies",
    "2",
    "--method.template_copies",
    "2",
    "--method.pretrain_text_source",
    "parsed_sentences",
    "--method.text_source",
    "parsed_sentences",
]

#: Per built-in method: extra CLI arguments for the conformance checks (default: none).
FAST_ARGS: dict[str, list[str]] = {"pvp": PVP_ARGS}
