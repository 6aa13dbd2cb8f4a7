"""The batch formats exchanged between datamodules and methods."""

from __future__ import annotations

from typing import TypedDict

from torch import Tensor


class EvalSample(TypedDict):
    """One evaluation image: ``target`` in {1, 0, -1} per class (0 = difficult/ignore)."""

    image: Tensor
    target: Tensor
    index: int


class EvalBatch(TypedDict):
    """A collated batch of :class:`EvalSample`; ``index`` identifies samples across DDP ranks."""

    image: Tensor  # [B, 3, H, W]
    target: Tensor  # [B, C] int8 in {1, 0, -1}
    index: Tensor  # [B] int64, position in the evaluation set


#: Frozen image features of an evaluation batch, read from the cache (all L2-normalised):
#: ``global`` [B, D] CLIP's pooled embedding, ``global_no_pos`` [B, D] the attention pool
#: without positional embedding (TaI-DPT/CoMC), ``dense`` [B, HW, D] per-location embeddings,
#: plus ``target`` and ``index`` as in :class:`EvalBatch`.
FeatureBatch = TypedDict(
    "FeatureBatch",
    {"global": Tensor, "global_no_pos": Tensor, "dense": Tensor, "target": Tensor, "index": Tensor},
)


#: Training data kinds a method may require and a datamodule may provide.
TEXT = "text"
GENERATED_IMAGES = "generated_images"
