"""TagCLIP on the world, stage by stage: what each step adds and what it costs.

Prints, on held-out world test images with the bundled ViT micro-CLIP (or ``--backbone``):
test mAP of the score after each step (coarse patch max, attention-propagated max, box-refined
local max, final with crops) next to zero-shot CLIP on the same images; seconds per image of
the encoder pass (steps 1-3) and of the crop pass (step 5); crops per image; and the dense
localisation of the patch tokens TagCLIP classifies (a class's cosine on the cells its object
covers minus elsewhere).

    python benchmarks/tagclip_world.py [--test-images 2000] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F
from PIL import Image

from mlr_bench.clip.backbone import ImageFeatures
from mlr_bench.clip.vit_attention import vit_pass
from mlr_bench.datamodules.world import World
from mlr_bench.methods.tagclip import TagCLIP
from mlr_bench.world import CLASS_NAMES
from mlr_bench.world.microclip import dense_localisation, world_mean_ap


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="world-vit")
    parser.add_argument("--pretrained", default="bundled")
    parser.add_argument("--test-images", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    torch.set_num_threads(2)
    method = TagCLIP(list(CLASS_NAMES), backbone=args.backbone, pretrained=args.pretrained).eval()
    data = World(num_test=args.test_images).split("test")
    transform = method.eval_transform()
    images = [transform(Image.fromarray(image)) for image in data.images]
    stages: dict[str, list[torch.Tensor]] = {k: [] for k in ("coarse", "propagated", "local")}
    finals, zero_shot, tokens = [], [], []
    encode_s = crop_s = 0.0
    crops = 0
    with torch.no_grad():
        text = method.text_embeddings()
        names = text[: method.num_classes]
        for start in range(0, len(images), args.batch):
            batch = torch.stack(images[start : start + args.batch])
            began = time.perf_counter()
            scores = method.patch_scores(batch, text)
            encode_s += time.perf_counter() - began
            for key in ("coarse", "propagated"):
                stages[key] += [getattr(s, key).max(0).values[: method.num_classes] for s in scores]
            local = torch.stack([method.local_scores(s) for s in scores])
            stages["local"] += list(local)
            boxes = [method.crop_boxes(s, loc) for s, loc in zip(scores, local, strict=True)]
            crops += sum(len(b) for b in boxes)
            began = time.perf_counter()
            finals.append(method.reidentify(list(batch), boxes, local, text))
            crop_s += time.perf_counter() - began
            plain = vit_pass(method.backbone.clip.visual, batch, keep_attention=False)
            zero_shot.append(F.normalize(plain.tokens[:, 0].float(), dim=-1) @ names.T)
            last = (method.layers - 1,)
            own = vit_pass(method.backbone.clip.visual, batch, self_only_layers=last)
            tokens.append(F.normalize(own.tokens[:, 1:].float(), dim=-1))
    n = len(images)
    labels = data.labels
    feats = ImageFeatures(torch.cat(zero_shot), torch.cat(tokens), scores[0].grid)
    dense = dense_localisation(feats, names, data.scenes, int(images[0].shape[-1]))
    figures = {
        "backbone": args.backbone,
        "test_images": n,
        "zero_shot_mAP (class token, TagCLIP's templates)": round(
            world_mean_ap(torch.cat(zero_shot), labels), 2
        ),
        **{
            f"{name}_mAP": round(world_mean_ap(torch.stack(stages[key]), labels), 2)
            for name, key in (
                ("step1_coarse_max", "coarse"),
                ("step2_propagated_max", "propagated"),
                ("step4_local", "local"),
            )
        },
        "step5_final_mAP": round(world_mean_ap(torch.cat(finals), labels), 2),
        "crops_per_image": round(crops / n, 2),
        "encoder_pass_ms_per_image": round(1000 * encode_s / n, 2),
        "crop_pass_ms_per_image": round(1000 * crop_s / n, 2),
        "tagclip_tokens_inside_minus_outside": {
            "mean": round(float(dense.mean()), 4),
            "fraction_positive": round(float((dense > 0).mean()), 3),
            "pairs": len(dense),
        },
    }
    print(json.dumps(figures, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)


if __name__ == "__main__":
    main()
