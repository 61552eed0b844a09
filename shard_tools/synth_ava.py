"""A synthetic AVA-like detection set, written in the real AVA v2.2 file formats.

Each movie shows 1-3 "persons" (rectangles in saturated colours, striped so that their inside
moves too) over a static grey texture. Every second each person draws a new motion, kept inside
the frame: horizontal (left, right or none), vertical (up, down or none) and scale (growing,
shrinking or none). Its actions at keyframe ``ts`` are the motion of the second centred on it
(frames ``(ts - 0.5) * fps .. (ts + 0.5) * fps``), multi-label: e.g. ``move right`` + ``grow``;
``stand still`` when none. Colours, sizes and speeds are random and carry no action information,
so motion is what must be learnt (like the paper's temporal tasks).

:func:`make_synth_ava` writes what a user of AVA holds:

- ``movies/<video_id>.webm`` (VP9, a key frame every second), ``video_id`` 11 characters of
  ``[A-Za-z0-9_-]`` like a YouTube id;
- ``ava_<split>_v2.2.csv``: ``video_id,%04d timestamp,x1,y1,x2,y2,action_id,person_id``, one row
  per (box, action), keyframes at seconds ``1 .. seconds - 1``;
- ``ava_action_list_v2.2.pbtxt`` (:data:`ACTIONS`, ids 1..7) and
  ``ava_action_list_v2.2_for_activitynet_2019.pbtxt`` (the evaluated subset, without ``move down``);
- ``ava_<split>_excluded_timestamps_v2.2.csv``: one keyframe of every other movie (its rows are
  in the ground truth too, so a reader must skip them);
- ``proposals_<split>.csv``: ``video_id,%04d,x1,y1,x2,y2,score``: each ground-truth box jittered
  with a score in [0.8, 1], plus 0-2 false positives with scores in [0.05, 0.5].

Movie ``i`` is drawn from ``numpy.random.default_rng([seed, crc32(split), i])`` (as
:mod:`shard_tools.synth`): the same arguments give the same files, another split a disjoint draw.
:func:`make_synth_ava_shards` writes the files and shards them with :func:`shard_tools.ava.shard_ava`.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shard_tools.ava import shard_ava
from shard_tools.ava_clips import ClipOptions
from shard_tools.encode import VideoWriter

ACTIONS = ("move left", "move right", "move up", "move down", "grow", "shrink", "stand still")  # ids 1..7
EVAL_ACTIONS = tuple(a for a in ACTIONS if a != "move down")  # the evaluated subset (ids not contiguous)
PERSON_COLOURS = ((230, 40, 40), (40, 200, 60), (50, 80, 240), (235, 210, 40), (220, 50, 220), (40, 210, 220))
_ID_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"
_STRIPE = 0.7  # brightness of every fourth row of a person (so motion shows inside it)
_SPEED = (0.2, 0.35)  # of the frame's width (height) per second
_GROWTH = (1.3, 1.6)  # size factor per second when growing (its inverse when shrinking)
_HEIGHT = (0.25, 0.7)  # a person's height, of the frame's height
_ASPECT = (1.2, 2.0)  # height / width


def action_id(name: str) -> int:
    return ACTIONS.index(name) + 1


def motion_actions(dx: int, dy: int, dz: int) -> tuple[int, ...]:
    """Action ids of one second's motion: ``dx``/``dy`` in {-1, 0, 1} (image axes), ``dz`` grow (+1)
    or shrink (-1)."""
    names = [n for n, on in (("move left", dx < 0), ("move right", dx > 0), ("move up", dy < 0),
                             ("move down", dy > 0), ("grow", dz > 0), ("shrink", dz < 0)) if on]
    return tuple(action_id(n) for n in names or ["stand still"])


@dataclass(frozen=True)
class PersonTrack:
    """One person over a movie: pixel boxes per frame and the actions of each second."""

    colour: tuple[int, int, int]
    boxes: np.ndarray  # (F, 4) int x1, y1, x2, y2 in pixels, x2/y2 exclusive
    actions: list[tuple[int, ...]]  # per second j (frames around j * fps), action ids


def _segment_frames(j: int, fps: float, num_frames: int) -> range:
    """Frames of second ``j``: those whose time is within half a second of ``j``."""
    start = max(0, int(np.ceil((j - 0.5) * fps)))
    stop = min(num_frames, int(np.ceil((j + 0.5) * fps)))
    return range(start, stop)


def _pixel_box(cx: float, cy: float, h: float, aspect: float) -> tuple[int, int, int, int]:
    w = h / aspect
    return round(cx - w / 2), round(cy - h / 2), round(cx + w / 2), round(cy + h / 2)


def simulate_person(rng: np.random.Generator, num_frames: int, fps: float, width: int, height: int,
                    colour: tuple[int, int, int]) -> PersonTrack:
    """A person's track: each second draws a motion (per axis: none with probability 1/2, else
    either way) until the whole second keeps the box inside the frame and its height in range."""
    aspect = rng.uniform(*_ASPECT)
    h = rng.uniform(_HEIGHT[0], 0.5 * (_HEIGHT[0] + _HEIGHT[1])) * height
    w = h / aspect
    cx, cy = rng.uniform(w / 2 + 1, width - w / 2 - 1), rng.uniform(h / 2 + 1, height - h / 2 - 1)
    boxes = np.zeros((num_frames, 4), np.int64)
    actions = []
    for j in range(int(np.floor((num_frames - 1) / fps + 0.5)) + 1):  # seconds with frames
        frames = _segment_frames(j, fps, num_frames)
        speed = rng.uniform(*_SPEED) * np.array([width, height]) / fps  # pixels per frame
        growth = rng.uniform(*_GROWTH) ** (1 / fps)  # factor per frame
        for _ in range(20):  # draw until the whole second stays inside the frame
            dx, dy, dz = rng.choice([-1, 0, 1], 3, p=[0.25, 0.5, 0.25])
            path = [(cx + dx * speed[0] * n, cy + dy * speed[1] * n, h * growth ** (dz * n))
                    for n in range(1, len(frames) + 1)]
            if all(_inside(_pixel_box(x, y, s, aspect), width, height) and
                   _HEIGHT[0] * height <= s <= _HEIGHT[1] * height for x, y, s in path):
                break
        else:
            dx = dy = dz = 0
            path = [(cx, cy, h)] * len(frames)
        for n, (x, y, s) in zip(frames, [(cx, cy, h)] + path[:-1]):
            boxes[n] = _pixel_box(x, y, s, aspect)
        if path:
            cx, cy, h = path[-1]
        actions.append(motion_actions(dx, dy, dz))
    return PersonTrack(colour, boxes, actions)


def _inside(box: tuple[int, int, int, int], width: int, height: int) -> bool:
    x1, y1, x2, y2 = box
    return x1 >= 1 and y1 >= 1 and x2 <= width - 1 and y2 <= height - 1 and x2 - x1 >= 3


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A static grey texture (coarse blobs plus fine grain), far from every person colour."""
    coarse = rng.normal(0, 1, (height // 8 + 2, width // 8 + 2))
    coarse = np.kron(coarse, np.ones((8, 8)))[:height, :width]
    grey = 125 + 28 * coarse + rng.normal(0, 6, (height, width))
    tint = rng.uniform(-8, 8, 3)  # a little colour, staying far less saturated than a person
    return np.clip(grey[..., None] + tint, 40, 210)


@dataclass(frozen=True)
class SynthMovie:
    """One movie: its id, persons and frames, drawn from ``(seed, split, index)``."""

    video_id: str
    persons: list[PersonTrack]
    excluded: list[int]  # excluded keyframe timestamps
    background: np.ndarray  # (H, W, 3) float
    num_frames: int
    noise_seed: list[int]  # the per-frame grain's generator

    def frames(self):
        """(H, W, 3) uint8 RGB frames in order."""
        rng = np.random.default_rng(self.noise_seed)
        ys = np.arange(self.background.shape[0])[:, None]
        for n in range(self.num_frames):
            frame = self.background + rng.normal(0, 3, self.background.shape)
            for person in self.persons:
                x1, y1, x2, y2 = person.boxes[n]
                rows = np.where((ys[y1:y2] - y1) % 4 == 3, _STRIPE, 1.0)
                frame[y1:y2, x1:x2] = np.asarray(person.colour, np.float64) * rows[..., None]
            yield np.clip(frame, 0, 255).astype(np.uint8)


def synth_movie(index: int, *, seconds: int, fps: float, width: int, height: int, seed: int,
                split: str) -> SynthMovie:
    seeds = [seed, zlib.crc32(split.encode()), index]
    rng = np.random.default_rng(seeds)
    video_id = "".join(rng.choice(list(_ID_CHARS), 11))
    num_frames = round(seconds * fps)
    colours = [PERSON_COLOURS[c] for c in rng.permutation(len(PERSON_COLOURS))[:rng.integers(1, 4)]]
    persons = [simulate_person(rng, num_frames, fps, width, height, c) for c in colours]
    excluded = [int(rng.integers(1, seconds))] if index % 2 == 0 else []
    background = _background(rng, width, height)
    return SynthMovie(video_id, persons, excluded, background, num_frames, seeds + [2])


@dataclass(frozen=True)
class SynthAvaFiles:
    """The files :func:`make_synth_ava` wrote (the arguments of ``mvd-shard ava``)."""

    root: Path
    videos: Path
    annotations: Path
    labels: Path
    eval_labels: Path
    excluded: Path
    proposals: Path
    video_ids: list[str]


def _label_map_text(names) -> str:
    return "".join(f'item {{\n  name: "{name}"\n  id: {ACTIONS.index(name) + 1}\n  label_type: PERSON_MOVEMENT\n}}\n'
                   for name in names)


def _csv_box(box: np.ndarray, width: int, height: int) -> str:
    x1, y1, x2, y2 = box
    return f"{x1 / width:.3f},{y1 / height:.3f},{x2 / width:.3f},{y2 / height:.3f}"


def _proposal_rows(rng: np.random.Generator, video_id: str, ts: int, gt: list[np.ndarray], width: int,
                   height: int) -> list[str]:
    size = np.array([width, height, width, height], np.float64)
    rows = []
    for box in gt:
        extent = np.array([box[2] - box[0], box[3] - box[1]] * 2, np.float64)
        jittered = np.clip((box + rng.uniform(-0.08, 0.08, 4) * extent) / size, 0, 1)
        rows.append((jittered, rng.uniform(0.8, 1.0)))
    for _ in range(rng.integers(0, 3)):
        w, h = rng.uniform(0.1, 0.4, 2)
        x1, y1 = rng.uniform(0, 1 - w), rng.uniform(0, 1 - h)
        rows.append((np.array([x1, y1, x1 + w, y1 + h]), rng.uniform(0.05, 0.5)))
    return [f"{video_id},{ts:04d},{','.join(f'{v:.3f}' for v in b)},{score:.3f}\n" for b, score in rows]


def make_synth_ava(root: Path, *, movies: int = 4, seconds: int = 16, fps: float = 12.0, width: int = 64,
                   height: int = 64, seed: int = 0, split: str = "val") -> SynthAvaFiles:
    """Write the synthetic set's files under ``root`` (see the module docstring); returns their paths.

    ``movies x (seconds - 1)`` keyframes, of which ``ceil(movies / 2)`` are excluded.
    """
    if movies < 1 or seconds < 2:
        raise ValueError(f"need at least one movie of 2 seconds, got {movies} movies of {seconds} s")
    if width < 32 or height < 32 or width % 2 or height % 2:
        raise ValueError(f"synthetic AVA frames must be even and at least 32x32, got {width}x{height}")
    if not split or not split.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"split must be a simple name like 'train' or 'val', got {split!r}")
    root = Path(root)
    videos = root / "movies"
    videos.mkdir(parents=True, exist_ok=True)
    gt_rows, excluded_rows, proposal_rows, video_ids = [], [], [], []
    for i in range(movies):
        movie = synth_movie(i, seconds=seconds, fps=fps, width=width, height=height, seed=seed, split=split)
        video_ids.append(movie.video_id)
        with VideoWriter(videos / f"{movie.video_id}.webm", "vp9", width, height, fps, gop=round(fps)) as writer:
            for frame in movie.frames():
                writer.write(frame)
        proposals_rng = np.random.default_rng(movie.noise_seed[:3] + [1])
        for ts in range(1, seconds):
            k = round(ts * fps)
            for person_id, person in enumerate(movie.persons):
                box = _csv_box(person.boxes[k], width, height)
                gt_rows += [f"{movie.video_id},{ts:04d},{box},{a},{person_id}\n" for a in person.actions[ts]]
            proposal_rows += _proposal_rows(proposals_rng, movie.video_id, ts, [p.boxes[k] for p in movie.persons],
                                            width, height)
        excluded_rows += [f"{movie.video_id},{ts:04d}\n" for ts in movie.excluded]
    files = SynthAvaFiles(root, videos, root / f"ava_{split}_v2.2.csv", root / "ava_action_list_v2.2.pbtxt",
                          root / "ava_action_list_v2.2_for_activitynet_2019.pbtxt",
                          root / f"ava_{split}_excluded_timestamps_v2.2.csv", root / f"proposals_{split}.csv",
                          video_ids)
    files.annotations.write_text("".join(gt_rows))
    files.labels.write_text(_label_map_text(ACTIONS))
    files.eval_labels.write_text(_label_map_text(EVAL_ACTIONS))
    files.excluded.write_text("".join(excluded_rows))
    files.proposals.write_text("".join(proposal_rows))
    return files


@dataclass(frozen=True)
class SynthAvaShards:
    out_dir: Path
    manifest: dict
    files: SynthAvaFiles


def make_synth_ava_shards(out_dir: Path, *, source_dir: Path | None = None, movies: int = 4, seconds: int = 16,
                          fps: float = 12.0, width: int = 64, height: int = 64, seed: int = 0, split: str = "val",
                          clip_frames: int = 16, codec: str = "vp9", short_side: int | None = None,
                          proposals: bool = True, shard_samples: int | None = None, workers: int | None = None,
                          progress: bool = False, overwrite: bool = False) -> SynthAvaShards:
    """Write the synthetic files to ``source_dir`` (default ``out_dir/source``) and shard them into
    ``out_dir`` as ``mvd-shard ava`` would (``clip_frames`` frames per keyframe, default 16: the
    second around the keyframe plus a few frames either side at 12 fps).

    The defaults give 60 keyframes (58 packed, 2 excluded) of 64x64 frames. ``proposals=False``
    shards without proposals (every sample's list is empty).
    """
    out_dir = Path(out_dir)
    files = make_synth_ava(source_dir or out_dir / "source", movies=movies, seconds=seconds, fps=fps,
                           width=width, height=height, seed=seed, split=split)
    manifest = shard_ava(out_dir, videos=files.videos, annotations=files.annotations, labels=files.labels,
                         eval_labels=files.eval_labels, excluded=files.excluded,
                         proposals=files.proposals if proposals else None,
                         clip=ClipOptions(clip_frames=clip_frames, short_side=short_side, codec=codec),
                         seed=seed, shard_samples=shard_samples, workers=workers, progress=progress,
                         overwrite=overwrite)
    return SynthAvaShards(out_dir, manifest, files)
