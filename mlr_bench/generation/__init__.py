"""Text-to-image generation for methods that train on generated images (T2I-PAL).

``generate_images(generator, captions, out_root)`` writes ``<out_root>/<slug>-<hash>/`` with
``settings.json`` (generator id, settings, images per caption), ``images/<caption_id>_<k>.<ext>``
and ``manifest.jsonl`` (one JSON line per image). The hash covers the generator id, its settings
and the images per caption, so a changed set-up never reuses a folder. Every image's seed is a
hash of (caption id, k); runs are resumable after a kill and shard over ranks without overlap.
``read_manifest(folder)`` lists the images. Generators: :class:`DiffusersTextToImage` (Stable
Diffusion from a local folder or the hub cache) and :class:`WorldRenderer` (the synthetic
world's stand-in). ``mlr-bench generate`` is the command line.
"""

from mlr_bench.generation.base import (
    CaptionItem,
    GeneratedImage,
    GenerationError,
    TextToImage,
    image_seed,
    output_folder,
)
from mlr_bench.generation.manifest import ManifestError, read_manifest
from mlr_bench.generation.runner import detect_rank, generate_images
from mlr_bench.generation.stable_diffusion import DiffusersTextToImage, ModelNotFoundError
from mlr_bench.generation.world import WorldRenderer

__all__ = [
    "CaptionItem",
    "DiffusersTextToImage",
    "GeneratedImage",
    "GenerationError",
    "ManifestError",
    "ModelNotFoundError",
    "TextToImage",
    "WorldRenderer",
    "detect_rank",
    "generate_images",
    "image_seed",
    "output_folder",
    "read_manifest",
]
