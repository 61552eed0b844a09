import hashlib
import io
import json
import tarfile
from collections import Counter

import numpy as np
import pytest
from shard_videos import count_frames

from shard_tools.synth import CLASS_GRID, PALETTE, make_synth_dataset, render_clip, synth_classes

TINY = {"num_videos": 12, "num_frames": 8, "width": 32, "height": 24, "num_classes": 4, "shard_samples": 5,
        "workers": 1}


def members(out, suffix):
    found = {}
    for tar in sorted(out.glob("shard-*.tar")):
        with tarfile.open(tar) as tf:
            for m in tf:
                if m.name.endswith(suffix):
                    found[m.name] = tf.extractfile(m).read()
    return found


def test_fixture_synth_shards_is_what_conftest_documents(synth_shards):
    m = json.loads((synth_shards / "manifest.json").read_text())
    assert (m["dataset"], m["samples"], len(m["shards"]), m["codecs"]) == ("synth", 48, 2, {"vp9": 48})
    assert m["classes"] == synth_classes(8) and len(m["classes"]) == 8
    infos = [json.loads(v) for v in members(synth_shards, ".json").values()]
    assert {(i["num_frames"], i["width"], i["height"], i["fps"]) for i in infos} == {(40, 64, 48, 12.0)}
    assert Counter(i["label"] for i in infos) == {c: 6 for c in range(8)}
    assert len(members(synth_shards, ".webm")) == 48


def test_fixture_h264_shards_holds_mp4(h264_shards):
    m = json.loads((h264_shards / "manifest.json").read_text())
    assert m["codecs"] == {"h264": 48} and m["samples"] == 48
    video = next(iter(members(h264_shards, ".mp4").values()))
    assert count_frames(io.BytesIO(video)) == 40


def test_same_arguments_give_identical_shards_whatever_the_workers(tmp_path):
    a = make_synth_dataset(tmp_path / "a", **TINY)
    b = make_synth_dataset(tmp_path / "b", **{**TINY, "workers": 2})
    assert a == b
    assert [s["samples"] for s in a["shards"]] == [5, 5, 2]


def test_seed_and_split_change_the_clips_and_the_order(tmp_path):
    base = make_synth_dataset(tmp_path / "base", **TINY)
    reseeded = make_synth_dataset(tmp_path / "seed", seed=1, **TINY)
    val = make_synth_dataset(tmp_path / "val", split="val", **TINY)
    assert {s["sha256"] for s in base["shards"]}.isdisjoint(s["sha256"] for s in reseeded["shards"])
    assert set(members(tmp_path / "base", ".webm").values()).isdisjoint(members(tmp_path / "val", ".webm").values())
    assert all(name.startswith("val_") for name in members(tmp_path / "val", ".json"))
    assert val["options"]["split"] == "val" and val["classes"] == base["classes"]


@pytest.mark.parametrize("codec, ext", [("vp8", "webm"), ("mjpeg", "avi"), ("hevc", "mp4")])
def test_other_codecs(tmp_path, codec, ext):
    m = make_synth_dataset(tmp_path, codec=codec, **{**TINY, "num_videos": 4})
    assert m["codecs"] == {codec: 4} and len(members(tmp_path, f".{ext}")) == 4


def test_classes_need_both_shape_and_direction():
    for n, (shapes, dirs) in CLASS_GRID.items():
        names = synth_classes(n)
        assert len(names) == n and shapes >= 2 and dirs >= 2
        assert len({s.split("-")[0] for s in names}) == shapes and len({s.split("-")[1] for s in names}) == dirs
    with pytest.raises(ValueError, match="num_classes"):
        synth_classes(5)


def test_the_shape_moves_the_way_its_class_says():
    for direction, axis, sign in (("right", 1, 1), ("left", 1, -1), ("down", 0, 1), ("up", 0, -1)):
        clip = render_clip("square", direction, np.random.default_rng(0), 10, 64, 48).astype(float)
        # the object is where a frame differs most from the pixel-wise median (the background)
        background = np.median(clip, axis=0)
        diff = np.abs(clip - background).sum(-1)
        centres = [np.argwhere(d > 60).mean(0)[axis] for d in diff]
        assert sign * (centres[-1] - centres[0]) > 5, direction


def test_bad_sizes_are_refused(tmp_path):
    with pytest.raises(ValueError, match="even"):
        make_synth_dataset(tmp_path, codec="h264", **{**TINY, "width": 33})
    with pytest.raises(ValueError, match=">= 16"):
        make_synth_dataset(tmp_path, **{**TINY, "width": 8})


def test_default_clips_are_still_the_shape_clips():
    # sha256 of this clip as rendered before spatial_cue existed: the default draws are unchanged
    clip = render_clip("circle", "left", np.random.default_rng([3, 7]), 6, 32, 24)
    assert hashlib.sha256(clip.tobytes()).hexdigest() == \
        "5cf55fa5bec1bb8bac707cc7f17c2250b813d7c11ac81d0eaeb96cb5560d322e"
    assert synth_classes(4) == ["square-right", "square-left", "circle-right", "circle-left"]


def test_colour_classes_paint_the_moving_object_in_their_palette_colour():
    palette = {name: np.array(rgb, float) for name, rgb in PALETTE.items()}
    assert synth_classes(8, "colour") == [f"{c}-{d}" for c in palette for d in ("right", "left")]
    for seed, (colour, rgb) in enumerate(palette.items()):
        for direction, axis, sign in (("right", 1, 1), ("up", 0, -1)):
            clip = render_clip(colour, direction, np.random.default_rng(seed), 8, 64, 48, "colour").astype(float)
            obj = (clip == rgb).all(-1)  # the object is drawn in the exact palette colour
            assert obj.sum(axis=(1, 2)).min() > 30
            # nothing else comes near any palette colour: the background never takes the object's
            near = np.stack([np.linalg.norm(clip - c, axis=-1) < 40 for c in palette.values()])
            assert not (near.any(0) & ~obj).any(), (colour, direction)
            centres = [np.argwhere(o).mean(0)[axis] for o in obj]
            assert sign * (centres[-1] - centres[0]) > 5, (colour, direction)
    with pytest.raises(ValueError, match="spatial_cue"):
        synth_classes(8, "texture")


def test_the_cli_spatial_cue_is_recorded_in_the_manifest(tmp_path):
    from shard_tools.cli import main

    assert main(["synth", "--out", str(tmp_path), "--num-videos", "4", "--num-frames", "4", "--width", "32",
                 "--height", "16", "--num-classes", "4", "--workers", "1", "--spatial-cue", "colour",
                 "--no-progress"]) == 0
    m = json.loads((tmp_path / "manifest.json").read_text())
    assert m["options"]["spatial_cue"] == "colour" and m["classes"] == synth_classes(4, "colour")


def test_label_by_relabels_the_same_videos_by_one_factor(tmp_path):
    grid = {"num_classes": 16, "num_videos": 16, "shard_samples": 16}
    joint = make_synth_dataset(tmp_path / "both", **{**TINY, **grid})
    assert "label_by" not in joint["options"] and "label_by" not in joint["class_list"]
    videos = members(tmp_path / "both", ".webm")
    pairs = {name.split(".")[0]: json.loads(info)["label_name"].split("-")
             for name, info in members(tmp_path / "both", ".json").items()}
    for label_by, factor in (("cue", 0), ("direction", 1)):
        m = make_synth_dataset(tmp_path / label_by, label_by=label_by, **{**TINY, **grid})
        assert m["classes"] == synth_classes(16, label_by=label_by)
        assert set(m["classes"]) == {p[factor] for p in pairs.values()} and len(m["classes"]) == 4
        assert m["options"]["label_by"] == m["class_list"]["label_by"] == label_by
        assert members(tmp_path / label_by, ".webm") == videos  # byte for byte the same clips
        for name, info in members(tmp_path / label_by, ".json").items():
            pair = pairs[name.split(".")[0]]
            info = json.loads(info)
            assert info["label_name"] == m["classes"][info["label"]] == pair[factor]
    with pytest.raises(ValueError, match="label_by"):
        synth_classes(16, label_by="speed")


def _object_colour_and_direction(clip: np.ndarray) -> tuple[str, str]:
    """What the pixels show, measured without the recipe: the palette colour the object is
    painted in, and the axis and sign of its centroid's travel."""
    rgb = {name: np.array(c, float) for name, c in PALETTE.items()}
    counts = {name: int((clip == c).all(-1).sum()) for name, c in rgb.items()}
    colour = max(counts, key=counts.get)
    centres = [np.argwhere(o).mean(0) for o in (clip == rgb[colour]).all(-1)]
    dy, dx = centres[-1] - centres[0]
    if abs(dx) > abs(dy):
        return colour, "right" if dx > 0 else "left"
    return colour, "down" if dy > 0 else "up"


@pytest.mark.parametrize("label_by", ["cue", "direction"])
def test_each_task_label_depends_only_on_its_factor(tmp_path, label_by):
    # colour objects on a background kept off the palette: both factors can be read off the pixels
    from shard_tools.synth import synth_sources

    sources = synth_sources(tmp_path, num_videos=64, num_frames=8, width=48, height=48, num_classes=16,
                            fps=12.0, codec="vp9", gop=16, seed=5, split="train", spatial_cue="colour",
                            label_by=label_by)
    seen = Counter()
    for rec in sources.records:
        clip = rec.prepare
        colour, direction = _object_colour_and_direction(
            render_clip(clip.cue, clip.direction, clip.rng(), 8, 48, 48, "colour"))
        label_factor, other = (colour, direction) if label_by == "cue" else (direction, colour)
        assert sources.classes[rec.label] == rec.label_name == label_factor
        seen[rec.label_name, other] += 1
    # every label sees every value of the other factor equally often: it carries no class information
    assert len(seen) == 16 and set(seen.values()) == {4}


def _stripe_orientation(frame: np.ndarray, obj: np.ndarray) -> str:
    """The orientation of the stripes inside `obj`, measured without the recipe: the structure
    tensor of the frame's brightness over the object's inner pixels (its dominant gradient is
    across the stripes)."""
    grey = frame.astype(float).mean(-1)
    gy, gx = np.gradient(grey)
    inner = obj & np.roll(obj, 1, 0) & np.roll(obj, -1, 0) & np.roll(obj, 1, 1) & np.roll(obj, -1, 1)
    jxx, jyy, jxy = (gx * gx)[inner].sum(), (gy * gy)[inner].sum(), (gx * gy)[inner].sum()
    across = 0.5 * np.degrees(np.arctan2(2 * jxy, jxx - jyy)) % 180  # the gradient's axis, image y down
    along = (across + 90) % 180
    names = {0: "horizontal", 90: "vertical", 45: "falling", 135: "rising"}  # y down: 45 deg falls
    return names[min(names, key=lambda a: min(abs(along - a), 180 - abs(along - a)))]


def test_stripe_classes_fill_the_moving_object_with_their_orientation():
    from shard_tools.synth import ORIENTATIONS

    assert synth_classes(16, "stripes", "cue") == list(ORIENTATIONS)
    for seed in range(3):
        for orientation in ORIENTATIONS:
            for direction in ("right", "up"):
                rng = np.random.default_rng([seed, len(orientation), len(direction)])
                clip = render_clip(orientation, direction, rng, 8, 64, 64, "stripes")
                # the object: the pixels that differ from the first frame's background somewhere in the
                # clip, i.e. where the moving object passes; measured on the frame where it sits
                for t in (0, 7):
                    other = clip[7 - t].astype(float)
                    obj = np.abs(clip[t].astype(float) - other).sum(-1) > 60
                    assert obj.sum() > 40
                    assert _stripe_orientation(clip[t], obj) == orientation, (seed, orientation, direction, t)


def test_shading_classes_light_the_half_of_the_object_they_name():
    from shard_tools.synth import LIT_SIDES

    assert synth_classes(16, "shading", "cue") == list(LIT_SIDES)
    # the lit side draws nothing from the generator: two sides with one seed give the same clip but
    # inside the object, and there each is brighter on its own side, split through the centre
    for seed in range(4):
        for lit, unlit, axis in (("lit-top", "lit-bottom", 0), ("lit-left", "lit-right", 1)):
            a, b = (render_clip(side, "down", np.random.default_rng(seed), 8, 64, 64, "shading").astype(float)
                    for side in (lit, unlit))
            for t in (0, 7):
                obj = np.abs(a[t] - b[t]).sum(-1) > 0
                brighter = (a[t] - b[t]).min(-1) >= 127  # every channel, by the recipe's margin
                assert obj.sum() > 100 and brighter.any() and (obj & ~brighter).any()
                assert (brighter | ((b[t] - a[t]).min(-1) >= 127) | ~obj).all()  # each object pixel: one or other
                first, second = (np.argwhere(m).mean(0) for m in (brighter, obj & ~brighter))
                # a's lit half is above (axis 0: rows) or left of (axis 1: columns) the other, level on the other axis
                assert second[axis] - first[axis] > 4, (seed, lit, t)
                assert abs(second[1 - axis] - first[1 - axis]) < 1.5, (seed, lit, t)
