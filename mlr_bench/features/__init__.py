"""On-disk caches of frozen CLIP features, keyed by everything that changes them."""

from mlr_bench.features.image import ImageFeatureDataset, image_features
from mlr_bench.features.store import FeatureCache, FeatureStore, default_cache_root
from mlr_bench.features.text import TextFeatureDataset, text_features

__all__ = [
    "FeatureCache",
    "FeatureStore",
    "ImageFeatureDataset",
    "TextFeatureDataset",
    "default_cache_root",
    "image_features",
    "text_features",
]
