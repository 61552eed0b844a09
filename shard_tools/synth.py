"""A synthetic labelled video dataset whose classes need both a spatial and a temporal cue.

Each clip shows one object moving in a straight line in one direction (right, left, down, up)
over a noisy two-colour gradient background. The class is the (spatial cue, direction) pair, so
no single frame tells the class (direction needs motion) and motion alone does not either. The
spatial cue is, by ``spatial_cue``:

- ``"shape"`` (default): the object's shape (square, circle, triangle, cross); its colour is
  random and carries no class information;
- ``"colour"``: the object's colour from a palette of well-separated colours (red, green, blue,
  yellow); its shape is random, and the background never comes near any palette colour;
- ``"stripes"``: the orientation of the stripes that fill the object (horizontal, vertical,
  rising and falling diagonals, period ``STRIPE_PERIOD`` of the clip's short side); its shape and
  its two stripe colours are random. Unlike the outline of a shape, which a coarse token grid cuts
  into pieces that depend on where the object sits, every patch the object covers shows its
  stripes' orientation;
- ``"shading"``: which half of the object is lit (top, bottom, left or right): split through
  the object's centre, one half is its colour taken halfway to white, the other 0.4 of it, so the
  lit half is brighter in every channel; its shape and colour are random. Where stripes of
  random phase need a squared (energy) response to tell apart, the sign of one brightness edge
  across the object is linear in the pixels.

Size, start position, speed and background are random per clip with every cue.

``label_by`` says which factor the label names, over the same clips: ``"both"`` (default) the
(cue, direction) pair above; ``"cue"`` the spatial cue alone (a spatial task: motion carries no
class information); ``"direction"`` the direction alone (a temporal task: the cue carries none).
Clip ``i`` is the same video whatever ``label_by`` says: it shows pair ``i % num_classes`` of the
``num_classes`` grid, so every label of one factor sees every value of the other equally often.

Clips are drawn from ``numpy.random.default_rng([seed, crc32(split), index])``: the same
arguments give the same clips, and another ``split`` name (or seed) gives a disjoint draw of the
same task, e.g. ``split="train"`` to train on and ``split="val"`` to evaluate.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shard_tools.build import BuildOptions, build_shards, work_dir
from shard_tools.parts import Part
from shard_tools.encode import VideoWriter, codec_by_name
from shard_tools.sources import SourceRecord, SourceSet

SHAPES = ("square", "circle", "triangle", "cross")
DIRECTIONS = ("right", "left", "down", "up")
PALETTE = {"red": (230, 30, 30), "green": (30, 200, 50), "blue": (30, 60, 235), "yellow": (235, 215, 30)}
_STEP = {"right": (1, 0), "left": (-1, 0), "down": (0, 1), "up": (0, -1)}
# spatial_cue -> the values it takes, in class order
ORIENTATIONS = ("horizontal", "vertical", "rising", "falling")
LIT_SIDES = ("lit-top", "lit-bottom", "lit-left", "lit-right")
SPATIAL_CUES = {"shape": SHAPES, "colour": tuple(PALETTE), "stripes": ORIENTATIONS, "shading": LIT_SIDES}
# shading: lit side -> the (x, y) direction from the object's centre into its lit half (image y down)
_LIT_TOWARDS = {"lit-top": (0, -1), "lit-bottom": (0, 1), "lit-left": (-1, 0), "lit-right": (1, 0)}
# stripes: one light and one dark band per period, as a fraction of the clip's short side
STRIPE_PERIOD = 0.1
# orientation -> the (x, y) weights whose sum is constant along a stripe
_STRIPE_AXIS = {"horizontal": (0.0, 1.0), "vertical": (1.0, 0.0), "rising": (0.7071, 0.7071),
                "falling": (0.7071, -0.7071)}
# num_classes -> (number of spatial cue values, number of directions); both at least 2
CLASS_GRID = {4: (2, 2), 6: (3, 2), 8: (4, 2), 9: (3, 3), 12: (3, 4), 16: (4, 4)}
# label_by -> what a class names
LABEL_BY = ("both", "cue", "direction")
# the gradient background keeps at least this RGB distance from every palette colour
_PALETTE_CLEARANCE = 110.0


def synth_grid(num_classes: int, spatial_cue: str = "shape") -> list[tuple[str, str]]:
    """The (cue, direction) pairs of ``num_classes`` in index order (cue-major)."""
    if num_classes not in CLASS_GRID:
        raise ValueError(f"synthetic num_classes must be one of {sorted(CLASS_GRID)}, got {num_classes}")
    if spatial_cue not in SPATIAL_CUES:
        raise ValueError(f"synthetic spatial_cue must be one of {sorted(SPATIAL_CUES)}, got {spatial_cue!r}")
    n_cues, n_dirs = CLASS_GRID[num_classes]
    return [(s, d) for s in SPATIAL_CUES[spatial_cue][:n_cues] for d in DIRECTIONS[:n_dirs]]


def synth_classes(num_classes: int, spatial_cue: str = "shape", label_by: str = "both") -> list[str]:
    """Class names in index order: ``"<cue>-<direction>"`` (cue-major, e.g. ``"circle-left"``),
    or with ``label_by`` the values of one factor of the ``num_classes`` grid (e.g. ``"circle"``)."""
    grid = synth_grid(num_classes, spatial_cue)
    if label_by == "both":
        return [f"{s}-{d}" for s, d in grid]
    if label_by == "cue":
        return list(dict.fromkeys(s for s, _ in grid))
    if label_by == "direction":
        return list(dict.fromkeys(d for _, d in grid))
    raise ValueError(f"synthetic label_by must be one of {LABEL_BY}, got {label_by!r}")


def _shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    if shape == "square":
        return np.maximum(abs(dx), abs(dy)) <= 0.85 * r
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "triangle":  # apex up, base down
        return (dy >= -r) & (dy <= r) & (abs(dx) <= (dy + r) / 2)
    if shape == "cross":
        return ((abs(dx) <= r / 3) & (abs(dy) <= r)) | ((abs(dy) <= r / 3) & (abs(dx) <= r))
    raise ValueError(f"unknown shape {shape!r}")


def _segment_distance(point: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """RGB distance from ``point`` to the nearest colour of the gradient from ``a`` to ``b``."""
    ab = b - a
    t = np.clip(np.dot(point - a, ab) / max(float(np.dot(ab, ab)), 1e-9), 0.0, 1.0)
    return float(np.linalg.norm(point - (a + t * ab)))


def _gradient_colours(rng: np.random.Generator, avoid: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The background gradient's two end colours, kept away from every colour in ``avoid``."""
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    for _ in range(200):
        if all(_segment_distance(c, c0, c1) > _PALETTE_CLEARANCE for c in avoid):
            return c0, c1
        c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    grey = np.full(3, 128.0)  # far from every palette colour
    return grey, grey


def render_clip(cue: str, direction: str, rng: np.random.Generator, num_frames: int,
                width: int, height: int, spatial_cue: str = "shape") -> np.ndarray:
    """One clip as (T, H, W, 3) uint8 RGB; ``cue`` is one of ``SPATIAL_CUES[spatial_cue]``."""
    if spatial_cue not in SPATIAL_CUES or cue not in SPATIAL_CUES[spatial_cue]:
        raise ValueError(f"unknown {spatial_cue} {cue!r}; spatial_cue {spatial_cue!r} takes "
                         f"{SPATIAL_CUES.get(spatial_cue, sorted(SPATIAL_CUES))}")
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    # background: gradient between two random colours along a random axis, plus fixed texture
    if spatial_cue == "colour":
        shape = SHAPES[rng.integers(len(SHAPES))]
        c0, c1 = _gradient_colours(rng, [np.array(c, np.float64) for c in PALETTE.values()])
    else:
        shape = cue if spatial_cue == "shape" else SHAPES[rng.integers(len(SHAPES))]  # random but for "shape"
        c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    angle = rng.uniform(0, 2 * np.pi)
    t = (np.cos(angle) * xs / width + np.sin(angle) * ys / height + 1) / 2
    background = c0 * (1 - t[..., None]) + c1 * t[..., None] + rng.normal(0, 8, (height, width, 3))
    if spatial_cue == "colour":
        color = np.array(PALETTE[cue], np.float64)
    else:  # a random colour far enough from the background's mean colour to stay visible
        mean_bg = (c0 + c1) / 2
        color = rng.uniform(0, 255, 3)
        for _ in range(20):
            if np.abs(color - mean_bg).sum() > 160:
                break
            color = rng.uniform(0, 255, 3)
    if spatial_cue == "stripes":  # the object's colour and a second one far from it, alternating
        dark = np.where(color > 127, color - 150, color + 150).clip(0, 255)
        ax, ay = _STRIPE_AXIS[cue]
        phase = rng.uniform(0, 1)
    r = rng.uniform(0.16, 0.24) * min(width, height)
    sx, sy = _STEP[direction]
    margin = r + 1
    extent = width if sx else height
    travel = rng.uniform(0.45, 0.9) * (extent - 2 * margin)
    start = rng.uniform(margin, extent - margin - travel)
    if (sx or sy) < 0:
        start = extent - start
    across = rng.uniform(margin, (height if sx else width) - margin)
    frames = np.empty((num_frames, height, width, 3), np.uint8)
    for i in range(num_frames):
        along = start + (sx or sy) * travel * i / max(1, num_frames - 1)
        cx, cy = (along, across) if sx else (across, along)
        mask = _shape_mask(shape, xs - cx, ys - cy, r)
        frame = background + rng.normal(0, 4, (height, width, 3))
        if spatial_cue == "stripes":  # the stripes move with the object
            band = ((ax * (xs - cx) + ay * (ys - cy)) / (STRIPE_PERIOD * min(width, height)) + phase) % 1 < 0.5
            frame[mask & band] = color
            frame[mask & ~band] = dark
        elif spatial_cue == "shading":  # every channel at least 127 brighter in the lit half
            lx, ly = _LIT_TOWARDS[cue]
            lit = lx * (xs - cx) + ly * (ys - cy) >= 0
            frame[mask & lit] = 255 - 0.5 * (255 - color)
            frame[mask & ~lit] = 0.4 * color
        else:
            frame[mask] = color
        frames[i] = np.clip(frame, 0, 255).astype(np.uint8)
    return frames


@dataclass(frozen=True)
class SynthClip:
    """Picklable recipe for one clip: calling it with a path writes the video file."""

    index: int
    label: int
    cue: str  # a shape or a palette colour, by spatial_cue
    direction: str
    spatial_cue: str
    seed: int
    split: str
    num_frames: int
    width: int
    height: int
    fps: float
    codec: str
    gop: int

    def rng(self) -> np.random.Generator:
        return np.random.default_rng([self.seed, zlib.crc32(self.split.encode()), self.index])

    def __call__(self, path: Path) -> None:
        frames = render_clip(self.cue, self.direction, self.rng(), self.num_frames, self.width, self.height,
                             self.spatial_cue)
        with VideoWriter(path, self.codec, self.width, self.height, self.fps, gop=self.gop) as writer:
            for frame in frames:
                writer.write(frame)


def synth_sources(clip_dir: Path, *, num_videos: int, num_frames: int, width: int, height: int,
                  num_classes: int, fps: float, codec: str, gop: int, seed: int, split: str,
                  spatial_cue: str = "shape", label_by: str = "both") -> SourceSet:
    """Balanced classes (clip ``i`` shows pair ``i % num_classes`` of the grid and is labelled by
    its pair, or by the factor ``label_by`` names); files are made on demand."""
    if num_videos < 1 or num_frames < 1:
        raise ValueError(f"need at least one video and one frame, got {num_videos} videos of {num_frames} frames")
    if width < 16 or height < 16:
        raise ValueError(f"synthetic clips need width and height >= 16, got {width}x{height}")
    if not split or not split.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"split must be a simple name like 'train' or 'val', got {split!r}")
    grid = synth_grid(num_classes, spatial_cue)
    classes = synth_classes(num_classes, spatial_cue, label_by)
    ext = codec_by_name(codec).ext
    records = []
    for i in range(num_videos):
        cue, direction = grid[i % num_classes]
        label = classes.index({"both": f"{cue}-{direction}", "cue": cue, "direction": direction}[label_by])
        name = f"{split}_{i:06d}.{ext}"
        clip = SynthClip(i, label, cue, direction, spatial_cue, seed, split, num_frames, width, height, fps,
                         codec, gop)
        records.append(SourceRecord(Path(clip_dir) / name, label, classes[label], name, prepare=clip))
    class_list = {"source": "synth", "spatial_cue": spatial_cue}
    if label_by != "both":  # the default's manifest stays as it was before label_by existed
        class_list["label_by"] = label_by
    return SourceSet("synth", classes, records, class_list=class_list)


def make_synth_dataset(out_dir: Path, *, num_videos: int = 400, num_frames: int = 40, width: int = 96,
                       height: int = 64, num_classes: int = 8, fps: float = 12.0, codec: str = "vp9",
                       gop: int = 16, seed: int = 0, split: str = "train", spatial_cue: str = "shape",
                       label_by: str = "both", shard_size_mb: float = 1024.0,
                       shard_samples: int | None = None, workers: int | None = None,
                       progress: bool = False, overwrite: bool = False, part: Part | None = None) -> dict:
    """Write a sharded synthetic dataset to ``out_dir``; returns the manifest.

    The defaults make a quick CPU demo set (400 clips of 40 frames at 96x64, 12 fps, VP9 in
    .webm, 8 classes = 4 shapes x 2 directions). Use another ``split`` for held-out data, and
    ``spatial_cue="colour"`` for 4 colours x 2 directions instead. ``label_by="cue"`` or
    ``"direction"`` labels the same clips by one factor (``num_classes`` still sets the grid the
    clips are drawn from: 16 gives 4 cues x 4 directions, labelled as 4 classes).
    """
    synth_options = {"num_videos": num_videos, "num_frames": num_frames, "width": width, "height": height,
                     "num_classes": num_classes, "fps": fps, "codec": codec, "gop": gop, "split": split,
                     "spatial_cue": spatial_cue}
    if label_by != "both":  # recorded only when set: the default's manifest is unchanged
        synth_options["label_by"] = label_by
    sources = synth_sources(work_dir(out_dir), seed=seed, **synth_options)
    options = BuildOptions(seed=seed, shard_size_mb=shard_size_mb, shard_samples=shard_samples, workers=workers,
                           part=part)
    return build_shards(sources, out_dir, options, command=synth_options, progress=progress, overwrite=overwrite)
