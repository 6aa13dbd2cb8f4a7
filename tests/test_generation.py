"""Text-to-image generation: folders, manifest, resume after a kill, sharding, CLI.

The diffusers path runs a tiny random Stable Diffusion pipeline saved to a temporary folder and
loaded back from it (the local-directory path users take offline).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mlr_bench.cli import run_cli
from mlr_bench.generation import (
    CaptionItem,
    DiffusersTextToImage,
    GenerationError,
    ManifestError,
    ModelNotFoundError,
    WorldRenderer,
    detect_rank,
    generate_images,
    image_seed,
    output_folder,
    read_manifest,
    runner,
)
from mlr_bench.generation.tiny import save_tiny_pipeline

LONG = " ".join(["a red square next to a small blue circle on a table"] * 12)  # > 77 tokens
CAPTIONS = [
    CaptionItem("0000003", "a red circle and a blue star", ("circle", "star")),
    CaptionItem("0000007", "two keys on a door", ("key",)),
    CaptionItem("0000012", "a bell, a key and a little house", ("bell", "key", "house")),
    CaptionItem("0000020", LONG, ("square", "circle")),
    CaptionItem("0000031", "a tree", ("tree",)),
]


class Killed(Exception):
    """Stands in for SIGKILL: nothing after the raise point runs."""


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_pipeline(tmp_path_factory.mktemp("models") / "tiny-sd")


@pytest.fixture(scope="module")
def sd(tiny_model: Path) -> DiffusersTextToImage:
    """One loaded pipeline for the module (64 px, 2 steps, CPU fp32)."""
    return DiffusersTextToImage(str(tiny_model), height=64, width=64, steps=2, device="cpu")


def snapshot(folder: Path) -> list[tuple]:
    """Everything a consumer sees: manifest fields (paths relative) and image bytes."""
    return [
        (im.caption_id, im.k, im.text, im.labels, im.seed, im.generator,
         im.path.relative_to(folder).as_posix(), im.path.read_bytes())
        for im in read_manifest(folder)
    ]  # fmt: skip


def kill_after(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    """Make the n+1-th image write die, as a kill between two images would."""
    real = runner.write_image
    count = [0]

    def write(*args, **kwargs):
        if count[0] == n:
            raise Killed
        count[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "write_image", write)


def simulate_torn_state(folder: Path) -> None:
    """What a kill in the middle of an append and of an image write leaves behind."""
    with (folder / "manifest.jsonl").open("ab") as f:
        f.write(b'{"caption_id": "0000012", "k": 1, "te')
    (folder / "images" / ".0000012_1.png.r0.tmp").write_bytes(b"\x89PNG half")


def check_resume(generator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kill_at: int) -> None:
    kwargs = {"images_per_caption": 2, "batch_size": 4, "progress": False}
    clean = generate_images(generator, CAPTIONS, tmp_path / "clean", **kwargs)
    with monkeypatch.context() as m:
        kill_after(m, kill_at)
        with pytest.raises(Killed):
            generate_images(generator, CAPTIONS, tmp_path / "killed", **kwargs)
    folder = output_folder(generator, tmp_path / "killed", 2)
    assert len(read_manifest(folder)) == kill_at
    simulate_torn_state(folder)
    assert len(read_manifest(folder)) == kill_at  # an unterminated line is not an entry yet
    resumed = generate_images(generator, CAPTIONS, tmp_path / "killed", **kwargs)
    assert resumed == folder
    assert snapshot(resumed) == snapshot(clean)
    assert len(snapshot(clean)) == 10
    assert (resumed / "manifest.jsonl").read_bytes() == (clean / "manifest.jsonl").read_bytes()
    assert not list(resumed.rglob("*.tmp"))
    # Running again finds everything done and changes nothing.
    before = (resumed / "manifest.jsonl").read_bytes()
    generate_images(generator, CAPTIONS, tmp_path / "killed", **kwargs)
    assert (resumed / "manifest.jsonl").read_bytes() == before


def test_world_resume_after_kill_matches_uninterrupted(tmp_path, monkeypatch):
    check_resume(WorldRenderer(image_size=48), tmp_path, monkeypatch, kill_at=5)


def test_diffusers_resume_after_kill_matches_uninterrupted(sd, tmp_path, monkeypatch):
    check_resume(sd, tmp_path, monkeypatch, kill_at=6)  # dies inside the second batch


def test_folder_layout_and_manifest_contract(sd, tmp_path):
    folder = generate_images(sd, CAPTIONS[:2], tmp_path, images_per_caption=2, progress=False)
    assert folder.parent == tmp_path and folder.name.startswith("diffusers-tiny-sd-")
    settings = json.loads((folder / "settings.json").read_text())
    assert settings["generator"] == sd.id and settings["images_per_caption"] == 2
    assert settings["settings"]["steps"] == 2 and settings["settings"]["dtype"] == "float32"
    lines = (folder / "manifest.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    assert first == {
        "caption_id": "0000003", "k": 0, "text": CAPTIONS[0].text, "labels": ["circle", "star"],
        "seed": image_seed("0000003", 0), "file": "images/0000003_0.png", "generator": sd.id,
    }  # fmt: skip
    with Image.open(folder / first["file"]) as im:
        assert im.size == (64, 64) and im.mode == "RGB"
    assert [(im.caption_id, im.k) for im in read_manifest(folder)] == [
        ("0000003", 0), ("0000003", 1), ("0000007", 0), ("0000007", 1)
    ]  # fmt: skip


def assert_close_images(a: list[tuple], b: list[tuple], max_fraction: float = 0.01) -> None:
    """Same manifest fields; pixels at most 1 grey level apart, at most ``max_fraction`` of them.

    Batched CPU kernels (GEMV for one prompt, GEMM blockings for several) are not bit-identical
    across batch compositions, on one machine or between machines: diffusers guarantees the
    starting noise per seed, not the bytes. Resume and sharding keep each batch's composition
    (see ``generation.runner``), so only a changed ``--batch-size`` shows this difference.
    """
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x[:7] == y[:7]
        px, py = (np.asarray(Image.open(io.BytesIO(s[7])), dtype=int) for s in (x, y))
        diff = np.abs(px - py)
        assert diff.max() <= 1, f"{x[0]} k={x[1]}: {diff.max()} grey levels apart"
        assert (diff > 0).mean() <= max_fraction, f"{x[0]} k={x[1]}: {(diff > 0).mean():.2%}"


def test_batch_size_does_not_change_images(sd, tmp_path):
    world = WorldRenderer(image_size=40)  # numpy, one image at a time: identical by design
    one = generate_images(world, CAPTIONS, tmp_path / "w1", batch_size=1, progress=False)
    four = generate_images(world, CAPTIONS, tmp_path / "w4", batch_size=4, progress=False)
    assert snapshot(one) == snapshot(four)

    runs = {
        b: snapshot(generate_images(sd, CAPTIONS, tmp_path / f"sd{b}", 2, b, progress=False))
        for b in (1, 2, 4)
    }
    # Same seeds, same starting noise; the pixels agree within the kernels' rounding.
    assert_close_images(runs[1], runs[2])
    assert_close_images(runs[1], runs[4])
    assert_close_images(runs[2], runs[4])


def test_two_shards_cover_every_image_once(sd, tmp_path):
    for generator in (WorldRenderer(image_size=40), sd):
        single = generate_images(generator, CAPTIONS, tmp_path / "one", 2, 3, progress=False)
        for rank in (0, 1):
            sharded = generate_images(
                generator, CAPTIONS, tmp_path / "two", 2, 3, rank=rank, world_size=2,
                progress=False,
            )  # fmt: skip
            if rank == 0:  # rank 1 has not run yet: half the images, no merged manifest
                assert not (sharded / "manifest.jsonl").exists()
        keys = [
            [(e["caption_id"], e["k"]) for e in map(json.loads, p.read_text().splitlines())]
            for p in (sharded / "manifest.rank0.jsonl", sharded / "manifest.rank1.jsonl")
        ]
        assert not set(keys[0]) & set(keys[1])
        assert len(keys[0]) + len(keys[1]) == 10
        assert snapshot(sharded) == snapshot(single)  # same batches, so the same bytes
        merged = (sharded / "manifest.jsonl").read_bytes()
        assert merged == (single / "manifest.jsonl").read_bytes()


def test_changed_settings_go_to_another_folder(tiny_model, tmp_path):
    def folder(ipc: int = 1, **kwargs) -> Path:
        options = {"height": 64, "width": 64, "steps": 2, "device": "cpu", **kwargs}
        return output_folder(DiffusersTextToImage(str(tiny_model), **options), tmp_path, ipc)

    base = folder()
    assert folder() == base
    changed = [
        folder(2), folder(steps=3), folder(height=72), folder(guidance_scale=5.0),
        folder(image_format="jpeg"), folder(dtype="bfloat16"),
    ]  # fmt: skip
    assert len({base, *changed}) == 7
    world = [output_folder(WorldRenderer(s), tmp_path, 1) for s in (48, 48, 64)]
    assert world[0] == world[1] != world[2]
    assert world[0].name.startswith("world-renderer-")


def test_settings_and_caption_mismatch_are_refused(tmp_path):
    world = WorldRenderer(image_size=32)
    folder = generate_images(world, CAPTIONS[:2], tmp_path, progress=False)
    other = [CaptionItem("0000003", "a different text", ("circle",))]
    with pytest.raises(ManifestError, match="another caption list"):
        generate_images(world, other, tmp_path, progress=False)
    (folder / "settings.json").write_text('{"generator": "something else"}')
    with pytest.raises(GenerationError, match="other settings"):
        generate_images(world, CAPTIONS[:2], tmp_path, progress=False)
    with pytest.raises(GenerationError, match="duplicate caption id"):
        generate_images(world, [CAPTIONS[0], CAPTIONS[0]], tmp_path / "x", progress=False)
    with pytest.raises(GenerationError, match="cannot name a file"):
        generate_images(world, [CaptionItem("../x", "t", ())], tmp_path / "y", progress=False)


def test_malformed_manifest_names_file_and_line(tmp_path):
    folder = generate_images(WorldRenderer(32), CAPTIONS[:3], tmp_path, progress=False)
    manifest = folder / "manifest.jsonl"
    lines = manifest.read_text().splitlines()
    manifest.write_text("\n".join([lines[0], lines[1], '{"caption_id": 3}', lines[2]]) + "\n")
    with pytest.raises(ManifestError, match=r"manifest\.jsonl, line 3: missing or bad"):
        read_manifest(folder)
    manifest.write_text("\n".join(lines) + "\n")
    (folder / "images" / "0000007_0.png").unlink()
    with pytest.raises(ManifestError, match=r"line 2: lists .*0000007_0\.png, which does not"):
        read_manifest(folder)
    generate_images(WorldRenderer(32), CAPTIONS[:3], tmp_path, progress=False)  # re-made
    assert len(read_manifest(folder)) == 3
    with pytest.raises(ManifestError, match="no such folder"):
        read_manifest(tmp_path / "missing")


def test_seeds_and_rank_detection(monkeypatch):
    assert image_seed("0000003", 0) == image_seed("0000003", 0)
    assert len({image_seed(c, k) for c in ("a", "b", "ab") for k in range(3)}) == 9
    assert 0 <= image_seed("x", 1) < 2**63
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert detect_rank() == (1, 3)


def test_missing_model_says_how_to_provide_one(tmp_path):
    with pytest.raises(ModelNotFoundError, match="local diffusers folder"):
        DiffusersTextToImage(str(tmp_path / "nope"))
    with pytest.raises(ModelNotFoundError, match="not in the Hugging Face cache"):
        DiffusersTextToImage("someone/not-cached-model")
    with pytest.raises(ModelNotFoundError, match=r"no model_index\.json"):
        DiffusersTextToImage(str(tmp_path))


def test_cli_generate_world_end_to_end(tmp_path, capsys):
    out = tmp_path / "gen"
    args = ["generate", "--generator", "world", "--data", "world", "--num-captions", "40",
            "--limit", "5", "--out", str(out), "--size", "32", "--no-progress"]  # fmt: skip
    run_cli(args)
    folder = Path(capsys.readouterr().out.strip().splitlines()[-1])
    images = read_manifest(folder)
    assert len(images) == 5 and all(im.labels for im in images)
    assert folder.parent == out and images[0].generator == "world-renderer"

    captions = tmp_path / "captions.jsonl"
    captions.write_text('{"id": 1, "text": "a red star", "labels": ["star"]}\n\n'
                        '{"id": "b", "text": "two keys", "labels": ["key"]}\n')  # fmt: skip
    run_cli(["generate", "--generator", "world", "--captions", str(captions), "--out",
             str(out), "--size", "32", "--no-progress", "--images-per-caption", "2"])  # fmt: skip
    folder = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert [(im.caption_id, im.k) for im in read_manifest(folder)] == [
        ("1", 0), ("1", 1), ("b", 0), ("b", 1)
    ]  # fmt: skip

    captions.write_text('{"id": 1, "text": "a red star", "labels": ["star"]}\n{"id": 2}\n')
    with pytest.raises(SystemExit) as exc:
        run_cli(
            ["generate", "--generator", "world", "--captions", str(captions), "--out", str(out)]
        )
    assert exc.value.code == 2
    assert "captions.jsonl, line 2" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        run_cli(["generate", "--generator", "diffusers", "--model", str(tmp_path / "none"),
                 "--captions", str(captions), "--out", str(out)])  # fmt: skip
    assert exc.value.code == 2
    assert "local diffusers folder" in capsys.readouterr().err


def test_cli_generate_from_coco_captions(tmp_path, capsys):
    coco = tmp_path / "captions_train2017.json"
    annotations = [
        {"id": 5, "image_id": 1, "caption": "A dog asleep on a sofa."},
        {"id": 2, "image_id": 1, "caption": "A cat."},
        {"id": 9, "image_id": 2, "caption": "Blue sky."},
    ]
    coco.write_text(json.dumps({"annotations": annotations}))
    base = ["generate", "--generator", "world", "--captions", str(coco), "--out", str(tmp_path)]
    run_cli([*base, "--data", "voc2007", "--size", "32", "--no-progress"])
    folder = Path(capsys.readouterr().out.strip().splitlines()[-1])
    images = read_manifest(folder)
    found = [(im.caption_id, im.labels) for im in images]
    assert found == [("2", ("cat",)), ("5", ("dog", "sofa"))]
    with pytest.raises(SystemExit) as exc:
        run_cli(base)
    assert exc.value.code == 2 and "needs --data" in capsys.readouterr().err


def test_cli_generate_for_coco_drops_test_image_captions_under_the_clean_protocol(tmp_path, capsys):
    """captions_train2017 describes COCO's val2014 test images under their image ids: the
    clean protocol drops them (and needs the test annotations to know which), the reference
    protocol keeps them; each folder says which in settings.json, and COCO training under the
    clean protocol refuses a folder generated from test-image captions."""
    from test_real_datamodules import write_coco

    from mlr_bench.datamodules.coco2014 import COCO2014
    from mlr_bench.generated_data import GeneratedDataError

    root = write_coco(tmp_path)  # test image ids 1000..1022
    coco = tmp_path / "captions_train2017.json"
    annotations = [
        {"id": 1, "image_id": 1000, "caption": "A dog by a cat."},  # a test image
        {"id": 2, "image_id": 5000, "caption": "A cat on a mat."},  # a training image
    ]
    coco.write_text(json.dumps({"annotations": annotations}))
    base = ["generate", "--generator", "world", "--captions", str(coco), "--data", "coco2014"]
    base += ["--out", str(tmp_path / "gen"), "--size", "32", "--no-progress"]
    with pytest.raises(SystemExit) as exc:
        run_cli(base)
    assert exc.value.code == 2 and "--test-annotations" in capsys.readouterr().err
    test_json = root / "annotations" / "instances_val2014.json"
    run_cli([*base, "--test-annotations", str(test_json)])
    captured = capsys.readouterr()
    clean = Path(captured.out.strip().splitlines()[-1])
    assert "captions of the 23 test images dropped" in captured.err
    assert [im.caption_id for im in read_manifest(clean)] == ["2"]
    run_cli([*base, "--protocol", "reference"])
    kept = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert kept != clean and [im.caption_id for im in read_manifest(kept)] == ["1", "2"]
    settings = json.loads((kept / "settings.json").read_text())
    assert settings["captions"]["test_captions"] == "kept"

    assert COCO2014(str(root), generated_dir=str(clean)).generated_folder() == clean
    with pytest.raises(GeneratedDataError, match="captions that include those of test images"):
        COCO2014(str(root), generated_dir=str(kept)).generated_folder()
    assert COCO2014(str(root), generated_dir=str(kept), protocol="reference").generated_folder()
