"""The built-in synthetic world: seeded multi-label scenes, their captions, and a text-to-image
stand-in, so that every method can be trained and compared offline in minutes.

18 categories of shapes and icons (``CLASS_NAMES``, ``SYNONYMS``) appear 1–4 at a time on
textured, noisy backgrounds, grouped by scene themes so that classes co-occur as in real data.
``generate`` renders a split (images, ground-truth labels, captions, scenes),
``generate_captions`` makes a caption corpus without rendering, ``template_sentences`` stands in
for LLM-written sentences and ``render_caption`` for Stable Diffusion.
"""

from mlr_bench.world.captions import caption_scene, template_sentences
from mlr_bench.world.categories import (
    CATEGORIES,
    CLASS_NAMES,
    NUM_CLASSES,
    SYNONYMS,
    THEMES,
    Category,
    plural,
)
from mlr_bench.world.dataset import WorldSplit, generate, generate_captions
from mlr_bench.world.mentions import Mention, find_mentions, mentioned_classes
from mlr_bench.world.palette import COLORS
from mlr_bench.world.raster import STYLES, render_scene
from mlr_bench.world.render import render_caption, scene_from_caption
from mlr_bench.world.scenes import Background, Scene, SceneObject, sample_scene

__all__ = [
    "CATEGORIES",
    "CLASS_NAMES",
    "COLORS",
    "NUM_CLASSES",
    "STYLES",
    "SYNONYMS",
    "THEMES",
    "Background",
    "Category",
    "Mention",
    "Scene",
    "SceneObject",
    "WorldSplit",
    "caption_scene",
    "find_mentions",
    "generate",
    "generate_captions",
    "mentioned_classes",
    "plural",
    "render_caption",
    "render_scene",
    "sample_scene",
    "scene_from_caption",
    "template_sentences",
]
