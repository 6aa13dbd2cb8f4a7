"""Image preprocessing shared by datamodules when no backbone-specific transform is given."""

from __future__ import annotations

from PIL import Image
from torchvision import transforms as T

#: OpenAI CLIP's normalisation constants (open_clip's OPENAI_DATASET_MEAN/STD).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def to_rgb(image: Image.Image) -> Image.Image:
    """Grey-scale, palette and RGBA images all become 3-channel RGB (a module-level function so
    DataLoader workers can pickle the transform)."""
    return image.convert("RGB")


def clip_eval_transform(
    size: int, mean: tuple[float, ...] = CLIP_MEAN, std: tuple[float, ...] = CLIP_STD
) -> T.Compose:
    """Resize the shorter side to ``size`` (bicubic), centre-crop, normalise: CLIP's test recipe."""
    return T.Compose(
        [
            T.Resize(size, interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(size),
            T.Lambda(to_rgb),
            T.ToTensor(),
            T.Normalize(mean, std),
        ]
    )
