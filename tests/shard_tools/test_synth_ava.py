"""The synthetic AVA-like set: real file formats, reproducible draws, actions that are the motion."""

import csv
import time

import numpy as np
import pytest

from shard_tools import ava_files
from shard_tools.synth_ava import ACTIONS, EVAL_ACTIONS, make_synth_ava, make_synth_ava_shards, synth_movie

SMALL = {"movies": 2, "seconds": 4, "fps": 12.0, "width": 32, "height": 32, "seed": 0, "split": "val"}


def test_the_files_are_in_the_ava_formats_the_readers_take(tmp_path):
    files = make_synth_ava(tmp_path, **SMALL)
    assert sorted(p.name for p in files.videos.iterdir()) == sorted(f"{v}.webm" for v in files.video_ids)
    assert [p.name for p in (files.annotations, files.excluded, files.proposals)] == [
        "ava_val_v2.2.csv", "ava_val_excluded_timestamps_v2.2.csv", "proposals_val.csv"]
    labels = ava_files.read_label_map(files.labels)
    assert labels == {i + 1: name for i, name in enumerate(ACTIONS)}
    eval_labels = ava_files.read_label_map(files.eval_labels)
    assert list(eval_labels.values()) == list(EVAL_ACTIONS) and set(eval_labels.items()) < set(labels.items())
    rows = ava_files.read_box_csv(files.annotations, scores=False)
    keyframes = {(r.video_id, r.timestamp) for r in rows}
    assert keyframes == {(v, ts) for v in files.video_ids for ts in range(1, SMALL["seconds"])}
    assert all(r.action_id in labels and r.person_id in (0, 1, 2) for r in rows)
    with open(files.annotations, newline="") as f:
        assert all(len(row) == 8 and len(row[1]) == 4 for row in csv.reader(f))  # timestamps as %04d
    excluded = ava_files.read_excluded(files.excluded)
    assert len(excluded) == 1 and excluded <= keyframes  # one keyframe of every other movie
    proposals = ava_files.read_proposals(files.proposals)
    assert set(proposals) == keyframes
    for (vid, ts), found in proposals.items():
        people = {(r.box, r.person_id) for r in rows if (r.video_id, r.timestamp) == (vid, ts)}
        assert len(found) >= len(people) and (found[:, 4] >= 0.05).all() and (found[:, 4] <= 1).all()
        assert (np.sort(found[:, 4])[::-1][:len(people)] >= 0.8).all()  # the persons score highest


def test_the_same_arguments_give_the_same_files_and_another_split_others(tmp_path):
    a, b = make_synth_ava(tmp_path / "a", **SMALL), make_synth_ava(tmp_path / "b", **SMALL)
    train = make_synth_ava(tmp_path / "t", **{**SMALL, "split": "train"})
    for name in ("annotations", "excluded", "proposals"):
        assert getattr(a, name).read_bytes() == getattr(b, name).read_bytes()
    assert [(a.videos / f"{v}.webm").read_bytes() for v in a.video_ids] == \
        [(b.videos / f"{v}.webm").read_bytes() for v in b.video_ids]
    assert set(train.video_ids).isdisjoint(a.video_ids) and train.annotations.name == "ava_train_v2.2.csv"


def test_each_keyframes_actions_are_the_motion_of_its_second():
    fps = 12.0
    counts = np.zeros(len(ACTIONS), int)
    for index in range(6):
        movie = synth_movie(index, seconds=8, fps=fps, width=64, height=64, seed=3, split="train")
        for person in movie.persons:
            for ts in range(1, 8):
                a, b = round((ts - 0.5) * fps), round((ts + 0.5) * fps) - 1  # the second's first and last frame
                x1, y1, x2, y2 = person.boxes[b].astype(float) - person.boxes[a]
                moved_x, moved_y, grew = (x1 + x2) / 2, (y1 + y2) / 2, y2 - y1
                names = {ACTIONS[i - 1] for i in person.actions[ts]}
                for name, measured, sign in (("move right", moved_x, 1), ("move left", moved_x, -1),
                                             ("move down", moved_y, 1), ("move up", moved_y, -1),
                                             ("grow", grew, 1), ("shrink", grew, -1)):
                    if name in names:
                        assert sign * measured >= 3, (index, ts, name, measured)
                # an axis without its action stays put, up to the pixel rounding
                if not names & {"move right", "move left"}:
                    assert abs(moved_x) <= 1, (index, ts, names, moved_x)
                if not names & {"move down", "move up"}:
                    assert abs(moved_y) <= 1, (index, ts, names, moved_y)
                if not names & {"grow", "shrink"}:
                    assert abs(grew) <= 1, (index, ts, names, grew)
                assert (names == {"stand still"}) == (max(abs(moved_x), abs(moved_y), abs(grew)) <= 1)
                counts[[i - 1 for i in person.actions[ts]]] += 1
    assert (counts >= 5).all(), dict(zip(ACTIONS, counts))  # every action occurs


def test_the_frames_show_each_person_in_its_box():
    movie = synth_movie(0, seconds=3, fps=12.0, width=64, height=48, seed=1, split="val")
    for n, frame in enumerate(movie.frames()):
        top = movie.persons[-1]  # drawn last, never occluded
        x1, y1, x2, y2 = top.boxes[n]
        mine = (np.abs(frame.astype(int) - top.colour).max(-1) <= 1) | \
            (np.abs(frame.astype(int) - np.array(top.colour) * 0.7).max(-1) <= 1)  # the stripes
        ys, xs = np.nonzero(mine)
        assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x1, y1, x2, y2), n
        saturation = frame.max(-1).astype(int) - frame.min(-1)
        inside = np.zeros(frame.shape[:2], bool)
        for person in movie.persons:
            px1, py1, px2, py2 = person.boxes[n]
            inside[py1:py2, px1:px2] = True
        assert saturation[~inside].max() < 40 and saturation[inside].min() > 80  # grey background, vivid persons


def test_make_synth_ava_shards_defaults_are_a_quick_demo_set(tmp_path):
    start = time.perf_counter()
    made = make_synth_ava_shards(tmp_path / "shards", workers=2)
    elapsed = time.perf_counter() - start
    m = made.manifest
    assert (m["dataset"], m["samples"], m["detection"]["keyframes"]) == ("ava", 58, 58)
    assert m["detection"]["excluded_skipped"] == 2 and m["detection"]["eval_action_ids"] == [1, 2, 3, 5, 6, 7]
    assert m["options"]["clip_frames"] == 16 and m["rejected"] == []
    assert made.files.root == tmp_path / "shards" / "source" and m["detection"]["proposals"] > m["detection"]["boxes"]
    assert elapsed < 60


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="even"):
        make_synth_ava(tmp_path, **{**SMALL, "width": 33})
    with pytest.raises(ValueError, match="2 seconds"):
        make_synth_ava(tmp_path, **{**SMALL, "seconds": 1})
    with pytest.raises(ValueError, match="split"):
        make_synth_ava(tmp_path, **{**SMALL, "split": "a/b"})
