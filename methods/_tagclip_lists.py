"""Word lists of the TagCLIP reference code (linyq2117/TagCLIP, ``clip_text.py`` and
``clip/clip.py``): its class spellings, the background words it adds as extra classes, and its
prompt templates. Data, not code: kept apart so the method reads as the algorithm."""

from __future__ import annotations

from open_clip import OPENAI_IMAGENET_TEMPLATES

from mlr_bench.datamodules.voc2007 import CLASS_NAMES as VOC_CLASS_NAMES

#: ``clip_text.py`` ``class_names_voc``: VOC's raw spellings, which the VOC datamodule uses too.
VOC_NAMES = list(VOC_CLASS_NAMES)

#: ``clip_text.py`` ``class_names_coco``: COCO's 80 classes in category-id order, VOC-style
#: spellings for the classes the two datasets share.
COCO_NAMES = [
    "person",
    "bicycle",
    "car",
    "motorbike",
    "aeroplane",
    "bus",
    "train",
    "truck",
    "boat",
    "traffic light",
    "fire hydrant",
    "stop sign",
    "parking meter",
    "bench",
    "bird",
    "cat",
    "dog",
    "horse",
    "sheep",
    "cow",
    "elephant",
    "bear",
    "zebra",
    "giraffe",
    "backpack",
    "umbrella",
    "handbag",
    "tie",
    "suitcase",
    "frisbee",
    "skis",
    "snowboard",
    "sports ball",
    "kite",
    "baseball bat",
    "baseball glove",
    "skateboard",
    "surfboard",
    "tennis racket",
    "bottle",
    "wine glass",
    "cup",
    "fork",
    "knife",
    "spoon",
    "bowl",
    "banana",
    "apple",
    "sandwich",
    "orange",
    "broccoli",
    "carrot",
    "hot dog",
    "pizza",
    "donut",
    "cake",
    "chair",
    "sofa",
    "pottedplant",
    "bed",
    "diningtable",
    "toilet",
    "tvmonitor",
    "laptop",
    "mouse",
    "remote",
    "keyboard",
    "cell phone",
    "microwave",
    "oven",
    "toaster",
    "sink",
    "refrigerator",
    "book",
    "clock",
    "vase",
    "scissors",
    "teddy bear",
    "hair drier",
    "toothbrush",
]

_BACKGROUND_COMMON = [
    "ground",
    "land",
    "grass",
    "tree",
    "building",
    "wall",
    "sky",
    "lake",
    "water",
    "river",
    "sea",
    "railway",
    "railroad",
]
_BACKGROUND_TAIL = [
    "cloud",
    "house",
    "mountain",
    "ocean",
    "road",
    "rock",
    "street",
    "valley",
    "bridge",
]
#: ``clip_text.py`` ``BACKGROUND_CATEGORY_VOC``: scored as extra classes, never reported.
VOC_BACKGROUND = [*_BACKGROUND_COMMON, "keyboard", "helmet", *_BACKGROUND_TAIL, "sign"]
#: ``clip_text.py`` ``BACKGROUND_CATEGORY_COCO`` (VOC's list without "keyboard" and "sign").
COCO_BACKGROUND = [*_BACKGROUND_COMMON, "helmet", *_BACKGROUND_TAIL]

#: ``clip/clip.py`` ``encode_text_with_prompt_ensemble``: CLIP's 80 ImageNet templates plus
#: five scene templates (the reference lists the 80 in another order; the average is the same
#: up to float rounding).
TAGCLIP_TEMPLATES = [t("{}") for t in OPENAI_IMAGENET_TEMPLATES] + [
    "there is a {} in the scene.",
    "there is the {} in the scene.",
    "this is a {} in the scene.",
    "this is the {} in the scene.",
    "this is one {} in the scene.",
]


def _key(name: str) -> str:
    return name.lower().replace(" ", "").replace("_", "").replace("-", "")


def detect_reference_dataset(class_names: list[str], min_overlap: float = 0.75) -> str | None:
    """ "voc" or "coco" when ``class_names`` are that dataset's classes in its order (at least
    ``min_overlap`` of them spelled alike position by position), else None."""
    keys = [_key(n) for n in class_names]
    for name, table in (("voc", VOC_NAMES), ("coco", COCO_NAMES)):
        if len(keys) == len(table):
            same = sum(k == _key(t) for k, t in zip(keys, table, strict=True))
            if same >= min_overlap * len(table):
                return name
    return None


def reference_names(dataset: str) -> list[str]:
    """The reference's class spellings for "voc" or "coco"."""
    return list({"voc": VOC_NAMES, "coco": COCO_NAMES}[dataset])
