"""The synthetic world: determinism, label statistics, masks, captions and text-to-image."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from PIL import Image, ImageDraw

from mlr_bench.text import SynonymLabeler, plural_forms
from mlr_bench.world import (
    CATEGORIES,
    CLASS_NAMES,
    NUM_CLASSES,
    SYNONYMS,
    THEMES,
    generate,
    generate_captions,
    mentioned_classes,
    plural,
    render_caption,
    render_scene,
    sample_scene,
    scene_from_caption,
    template_sentences,
)
from mlr_bench.world.preview import save_preview
from mlr_bench.world.scenes import SIZE_RANGE


@pytest.fixture(scope="module")
def corpus() -> tuple[list[str], np.ndarray]:
    return generate_captions(2000, seed=11)


@pytest.fixture(scope="module")
def masked_split():
    return generate(60, seed=5, image_size=64, with_masks=True)


# --- vocabulary and shapes ---------------------------------------------------------------------


def test_vocabulary_is_a_clean_dataset_vocabulary():
    assert len(CLASS_NAMES) == NUM_CLASSES == 18 and len(set(CLASS_NAMES)) == 18
    owner: dict[str, str] = {}
    for name in CLASS_NAMES:
        words = SYNONYMS[name]
        assert words[0] == name and 3 <= len(words) <= 5  # the name plus 2–4 synonyms
        for word in words:
            assert word == word.lower() and "-" not in word  # the labeler splits on hyphens
            assert owner.setdefault(word, name) == name, f"{word!r} names two classes"
    assert set().union(*THEMES.values()) == set(CLASS_NAMES)  # every class has a theme


def test_plurals_are_what_the_labeler_recognises():
    assert plural("box") == "boxes" and plural("fish") == "fish"
    assert plural("pine tree") == "pine trees" and plural("lightning bolt") == "lightning bolts"
    for words in SYNONYMS.values():
        for word in words:
            last = word.rpartition(" ")[2]
            assert plural(word).rpartition(" ")[2] in plural_forms(last)


def test_categories_draw_distinct_localised_shapes():
    masks = []
    for category in CATEGORIES:
        image = Image.new("L", (64, 64), 0)
        category.draw(ImageDraw.Draw(image), 32, 32, 40, 0, 255)
        mask = np.asarray(image) > 0
        masks.append(mask)
        assert 0.03 < mask.mean() < 0.4, category.name
        ys, xs = np.nonzero(mask)
        assert xs.min() >= 8 and xs.max() <= 56 and ys.min() >= 8 and ys.max() <= 56
    for (a, ma), (b, mb) in itertools.combinations(zip(CLASS_NAMES, masks, strict=True), 2):
        iou = (ma & mb).sum() / (ma | mb).sum()
        # Filled convex shapes overlap a lot (circle/hexagon ~0.92, a deliberately hard pair),
        # but no two categories may draw the same silhouette.
        assert iou < 0.95, f"{a} and {b} look alike (IoU {iou:.2f})"


# --- determinism -------------------------------------------------------------------------------


def test_same_seed_same_data_other_seed_other_data():
    a, b = generate(12, seed=3), generate(12, seed=3)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.captions == b.captions and a.scenes == b.scenes
    c = generate(12, seed=4)
    assert not np.array_equal(a.images, c.images) and a.captions != c.captions
    assert a.images.shape == (12, 64, 64, 3) and a.images.dtype == np.uint8
    assert a.labels.shape == (12, 18) and a.labels.dtype == np.int8


def test_item_does_not_depend_on_split_size():
    small, large = generate(4, seed=9), generate(10, seed=9)
    np.testing.assert_array_equal(small.images, large.images[:4])
    assert small.captions == large.captions[:4]


def test_caption_corpus_matches_rendered_split():
    split = generate(8, seed=2, captions_per_image=3)
    assert len(split.captions) == 24 and split.captions_per_image == 3
    captions, labels = generate_captions(8, seed=2)
    assert captions == split.captions[::3]  # the first caption of each image
    np.testing.assert_array_equal(labels, split.labels)
    varied = [len(set(split.captions[3 * i : 3 * i + 3])) > 1 for i in range(8)]
    assert sum(varied) >= 6  # an image's captions are different descriptions of it


def test_render_is_deterministic_and_scales():
    scene = sample_scene(np.random.default_rng(1), image_size=64)
    np.testing.assert_array_equal(render_scene(scene), render_scene(scene))
    big, masks = render_scene(scene, image_size=96, return_masks=True)
    assert big.shape == (96, 96, 3) and masks.shape == (18, 96, 96)
    with pytest.raises(ValueError, match="style"):
        render_scene(scene, style="oil painting")


# --- labels ------------------------------------------------------------------------------------


def test_label_statistics():
    scenes = [sample_scene(np.random.default_rng([21, i])) for i in range(3000)]
    counts = np.array([len(s.objects) for s in scenes])
    assert counts.min() == 1 and counts.max() == 4
    assert np.allclose(np.bincount(counts)[1:] / len(counts), [0.3, 0.3, 0.25, 0.15], atol=0.04)
    labels = np.stack([s.labels() for s in scenes])
    assert (labels.sum(0) > 50).all()  # every class appears, none is rare
    duplicates = np.mean([len(s.objects) > len(s.categories) for s in scenes])
    assert 0.02 < duplicates < 0.15
    # Co-occurrence follows the themes: some pairs are far likelier than independence says.
    p = labels.mean(0)
    joint = (labels.T.astype(float) @ labels) / len(labels)
    lift = joint / np.outer(p, p)
    off = lift[~np.eye(18, dtype=bool)]
    assert off.max() > 2.0 and off.min() < 0.6


def test_objects_stay_localised():
    for i in range(500):
        scene = sample_scene(np.random.default_rng([22, i]), image_size=64)
        for obj in scene.objects:
            lo, hi = SIZE_RANGE
            assert lo * 64 - 1e-9 <= obj.size <= hi * 64 + 1e-9 and hi < 0.5  # never fills it
            assert -30 <= obj.rotation <= 30
            assert 0 <= obj.x <= 64 and 0 <= obj.y <= 64


def test_masks_cover_each_labelled_object_and_nothing_else(masked_split):
    masks, labels = masked_split.masks, masked_split.labels
    assert masks.shape == (60, 18, 64, 64) and masks.dtype == bool
    present = masks.any(axis=(2, 3))
    np.testing.assert_array_equal(present, labels.astype(bool))
    area = masks.mean(axis=(2, 3))[labels.astype(bool)]
    assert area.mean() < 0.15 and area.max() < 0.5


def test_masks_mark_where_the_object_is_painted(masked_split):
    # Object pixels differ from the background far more than background pixels do among
    # themselves: the mask really is where the shape is.
    contrasts = []
    split = masked_split
    for image, scene, mask in zip(split.images, split.scenes, split.masks, strict=True):
        for obj in scene.objects:
            inside = image[mask[obj.category]].astype(float).mean(0)
            contrasts.append(np.abs(inside - np.asarray(obj.rgb)).mean())
    assert np.median(contrasts) < 30


# --- captions ----------------------------------------------------------------------------------


def test_captions_mention_present_classes_with_rare_noise(corpus):
    captions, labels = corpus
    mentions = np.zeros_like(labels)
    for i, caption in enumerate(captions):
        mentions[i, list(mentioned_classes(caption))] = 1
    hits = (mentions & labels).sum(1) > 0
    assert hits.mean() > 0.97
    noisy = ((mentions == 1) & (labels == 0)).any(1).mean()
    assert 0.01 < noisy < 0.1
    recall = (mentions & labels).sum() / labels.sum()
    assert 0.65 < recall < 0.9  # present objects go unmentioned now and then
    assert len(set(captions[:500])) > 250


def test_benchmark_labeler_reads_captions_like_the_world_does(corpus):
    captions, _ = corpus
    labeler = SynonymLabeler(CLASS_NAMES, SYNONYMS)
    ours = np.zeros((len(captions), 18), np.int8)
    for i, caption in enumerate(captions):
        ours[i, list(mentioned_classes(caption))] = 1
    np.testing.assert_array_equal(labeler(captions), ours)


def test_captions_use_synonyms_plurals_attributes_and_relations(corpus):
    text = " ".join(corpus[0]).lower()
    for word in ("disc", "boxes", "crescent", "two", "red", "small", "left", "next to", "above"):
        assert f" {word}" in text, word
    lengths = [len(c.split()) for c in corpus[0]]
    # Short enough for the micro-CLIP's 40-token context, long enough to say something.
    assert max(lengths) <= 34 and np.percentile(lengths, 99) <= 26 and np.mean(lengths) > 5


def test_template_sentences_name_exactly_the_given_classes():
    rng = np.random.default_rng(0)
    sentences = set()
    for _ in range(300):
        k = int(rng.integers(1, 4))
        chosen = [CLASS_NAMES[c] for c in rng.choice(18, k, replace=False)]
        sentence = template_sentences(chosen, rng)
        assert mentioned_classes(sentence) == {CLASS_NAMES.index(c) for c in chosen}, sentence
        assert sentence[0].isupper() and sentence.endswith(".")
        sentences.add(sentence)
    assert len(sentences) > 250
    with pytest.raises(ValueError):
        template_sentences(["unicorn"], rng)
    with pytest.raises(ValueError):
        template_sentences([], rng)


# --- text-to-image -----------------------------------------------------------------------------


def test_render_caption_draws_what_the_caption_names(corpus):
    for i, caption in enumerate(corpus[0][:200]):
        scene = scene_from_caption(caption, np.random.default_rng(i))
        assert scene.categories == mentioned_classes(caption), caption
    scene = scene_from_caption("Two stars and a red heart.", np.random.default_rng(0))
    assert [o.name for o in scene.objects] == ["star", "star", "heart"]
    assert scene.objects[2].color == "red"
    assert scene_from_caption("a small blue droplet", np.random.default_rng(0)).objects[0].size < (
        0.25 * 64
    )
    assert scene_from_caption("nothing to see", np.random.default_rng(0)).objects == ()


def test_render_caption_is_deterministic():
    a = render_caption("a pine next to a house", np.random.default_rng(4), image_size=48)
    b = render_caption("a pine next to a house", np.random.default_rng(4), image_size=48)
    assert a.shape == (48, 48, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)


def _high_frequency(images: np.ndarray) -> float:
    grey = images.astype(float).mean(-1)
    lap = 4 * grey[:, 1:-1, 1:-1] - grey[:, :-2, 1:-1] - grey[:, 2:, 1:-1]
    lap -= grey[:, 1:-1, :-2] + grey[:, 1:-1, 2:]
    return float(np.abs(lap).mean())


def test_generated_style_differs_from_photos(corpus):
    photos = generate(40, seed=8).images
    generated = np.stack(
        [render_caption(c, np.random.default_rng(i)) for i, c in enumerate(corpus[0][:40])]
    )
    assert _high_frequency(generated) < 0.3 * _high_frequency(photos)
    # Same scene, two styles: the generated one is more saturated.
    scene = sample_scene(np.random.default_rng(3))
    photo = render_scene(scene, style="photo").astype(float)
    clean = render_scene(scene, style="generated").astype(float)
    assert clean.std(-1).mean() > photo.std(-1).mean()


def test_preview_writes_a_png(tmp_path):
    path = save_preview(tmp_path / "preview.png", n=5, seed=1)
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > 4 * 64 * 3 and image.height > 2 * 64 * 3
