"""The CLIP layer shared by all methods."""

from mlr_bench.clip.backbone import BackboneLoadError, CLIPBackbone, create_clip

__all__ = ["BackboneLoadError", "CLIPBackbone", "create_clip"]
