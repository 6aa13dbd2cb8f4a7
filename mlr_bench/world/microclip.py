"""Probes of the world micro-CLIP shared by its benchmark script and its tests."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mlr_bench.clip.backbone import CLIPBackbone, ImageFeatures
from mlr_bench.world.pretrain import normalise_images
from mlr_bench.world.raster import render_scene
from mlr_bench.world.scenes import Scene


def world_mean_ap(scores: Tensor, labels: np.ndarray) -> float:
    """mAP (%) of scores ``[N, C]`` against the world's 0/1 labels, by the shared metrics."""
    from mlr_bench.eval.metrics import compute_metrics

    targets = np.where(labels > 0, 1, -1).astype(np.int8)
    return compute_metrics(scores.double().numpy(), targets).mAP


@torch.no_grad()
def encode_world_images(
    backbone: CLIPBackbone, images: np.ndarray, batch: int = 250
) -> ImageFeatures:
    """Global + dense features of uint8 ``[N, H, W, 3]`` world images, in batches."""
    parts = [
        backbone.encode_image_dense(normalise_images(torch.from_numpy(images[i : i + batch])))
        for i in range(0, len(images), batch)
    ]
    return ImageFeatures(
        torch.cat([p.global_ for p in parts]), torch.cat([p.dense for p in parts]), parts[0].grid
    )


def dense_localisation(
    feats: ImageFeatures,
    class_emb: Tensor,
    scenes: Sequence[Scene],
    image_size: int,
    min_cover: float = 0.25,
) -> np.ndarray:
    """Per (image, present class): mean cosine on the cells its object covers minus elsewhere.

    A cell counts as covered when at least ``min_cover`` of its pixels belong to the object.
    Positive values mean the dense features localise the class.
    """
    h, w = feats.grid
    diffs = []
    for i, scene in enumerate(scenes):
        _, masks = render_scene(scene, image_size=image_size, return_masks=True)
        cover = F.adaptive_avg_pool2d(torch.from_numpy(masks).float()[None], (h, w))[0]
        sims = (feats.dense[i] @ class_emb.T).T.reshape(-1, h, w)
        for c in np.flatnonzero(masks.reshape(len(masks), -1).any(1)):
            inside = cover[c] >= min_cover
            if inside.any() and (~inside).any():
                diffs.append(float(sims[c][inside].mean() - sims[c][~inside].mean()))
    return np.array(diffs)
