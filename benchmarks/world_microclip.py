"""Figures of the bundled world micro-CLIP: does the world leave room for text-only methods?

Prints, on 2,000 held-out world test images:
- zero-shot mAP with "a photo of a {class}." (and the random-ranking baseline);
- the modality gap (distance between the image and text embedding means);
- text-only linear classifiers trained on caption embeddings (labels from the labeler),
  applied to image embeddings (3 seeds), next to zero-shot;
- whether dense features are meaningful: a class's text embedding against the locations an
  object of that class covers vs the other locations.

    python benchmarks/world_microclip.py [--model world|world-vit] [--weights PATH]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
import torch.nn.functional as F

from mlr_bench.clip import CLIPBackbone
from mlr_bench.text import SynonymLabeler
from mlr_bench.world import CLASS_NAMES, SYNONYMS, generate, generate_captions
from mlr_bench.world.microclip import dense_localisation, encode_world_images, world_mean_ap

TEST_SEED = 1_000_003
CAPTION_SEED = 2_000_003


def linear_text_classifier(text_emb, text_labels, seed: int, noise: float, epochs: int = 30):
    """Bias-free linear classifier trained on text embeddings only (BCE, Adam)."""
    torch.manual_seed(seed)
    weight = torch.nn.Parameter(torch.randn(len(CLASS_NAMES), text_emb.shape[1]) * 0.01)
    opt = torch.optim.Adam([weight], lr=1e-2)
    y = torch.as_tensor(text_labels, dtype=torch.float32)
    for _ in range(epochs):
        for idx in torch.randperm(len(text_emb)).split(256):
            x = text_emb[idx]
            if noise:
                x = F.normalize(x + noise * torch.randn_like(x), dim=-1)
            loss = F.binary_cross_entropy_with_logits(20 * x @ weight.T, y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return weight.detach()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="world", help="bundled config: world or world-vit")
    parser.add_argument("--weights", default="bundled", help="weights file or 'bundled'")
    parser.add_argument("--test-images", type=int, default=2000)
    parser.add_argument("--captions", type=int, default=10_000)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    torch.set_num_threads(2)
    started = time.time()
    backbone = CLIPBackbone(args.model, args.weights)
    size = backbone.image_size
    test = generate(args.test_images, seed=TEST_SEED, image_size=size)
    feats = encode_world_images(backbone, test.images)
    img_global = feats.global_
    class_emb = backbone.encode_text([f"a photo of a {c}." for c in CLASS_NAMES])
    labels = test.labels

    rng = np.random.default_rng(0)
    random_map = np.mean(
        [world_mean_ap(torch.from_numpy(rng.random(labels.shape)), labels) for _ in range(5)]
    )
    zero_shot = world_mean_ap(img_global @ class_emb.T, labels)

    captions, caption_truth = generate_captions(args.captions, seed=CAPTION_SEED)
    caption_labels = SynonymLabeler(CLASS_NAMES, SYNONYMS)(captions)
    with torch.no_grad():
        text_emb = backbone.encode_text(captions)
        test_caption_emb = backbone.encode_text(test.captions)
    mu_img, mu_txt = img_global.mean(0), test_caption_emb.mean(0)
    gap = {
        "l2_between_means": float((mu_img - mu_txt).norm()),
        "cosine_between_means": float(F.cosine_similarity(mu_img, mu_txt, dim=0)),
        "paired_cosine": float((img_global * test_caption_emb).sum(1).mean()),
    }
    text_only = {}
    for noise in (0.0, 0.1):
        maps = [
            world_mean_ap(
                img_global @ linear_text_classifier(text_emb, caption_labels, s, noise).T, labels
            )
            for s in (1, 2, 3)
        ]
        text_only[f"linear_noise{noise}"] = {
            "mean": float(np.mean(maps)),
            "std": float(np.std(maps)),
        }
    dense = dense_localisation(feats, class_emb, test.scenes, size)
    figures = {
        "test_images": args.test_images,
        "random_ranking_mAP": round(float(random_map), 2),
        "zero_shot_mAP": round(zero_shot, 2),
        "text_only_linear_mAP": text_only,
        "modality_gap": gap,
        "dense_inside_minus_outside": {
            "mean": float(dense.mean()),
            "fraction_positive": float((dense > 0).mean()),
            "pairs": len(dense),
        },
        "caption_label_disagreement": float((caption_labels != caption_truth).mean()),
        "seconds": round(time.time() - started, 1),
    }
    print(json.dumps(figures, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)


if __name__ == "__main__":
    main()
