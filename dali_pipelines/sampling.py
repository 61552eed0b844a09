"""The recipe's sampling rules as pure numpy functions: epoch order, rank split, frame indices and
crop boxes. One function per rule, so a test can re-compute each one independently.

Randomness: every per-sample draw comes from `sample_rng(seed, epoch, index)`, the epoch's order
from `(seed, epoch)`. A loader's state is therefore just (epoch, position): nothing is carried
from one sample to the next, which is what makes resume exact.

Crop boxes are `(x, y, w, h)` in the source frame's pixels (floats where the reference works on a
resized frame, see `eval_crop_boxes`). Person boxes (AVA detection) are `(P, 4)` float arrays of
`[x1, y1, x2, y2]` normalised to [0, 1]: of the frame in the shards, of the view in the batches.
"""

from __future__ import annotations

import math

import numpy as np

MULTISCALE_SCALES = (1.0, 0.875, 0.75, 0.66)


def sample_rng(seed: int, epoch: int, index: int, stream: int = 0) -> np.random.Generator:
    """The generator for one sample of one epoch (`stream` separates independent uses)."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, epoch, index, stream])))


def epoch_order(seed: int, epoch: int, num_samples: int, shuffle: bool = True) -> np.ndarray:
    """The epoch's global sample order, (num_samples,) int64."""
    if not shuffle:
        return np.arange(num_samples, dtype=np.int64)
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, epoch])))
    return rng.permutation(num_samples).astype(np.int64)


def steps_per_epoch(num_items: int, batch_size: int, num_shards: int, drop_last: bool) -> int:
    """Batches each rank yields per epoch (all ranks yield the same number)."""
    global_batch = batch_size * num_shards
    return num_items // global_batch if drop_last else -(-num_items // global_batch)


def rank_items(
    order: np.ndarray, *, batch_size: int, num_shards: int, shard_id: int, drop_last: bool
) -> tuple[np.ndarray, np.ndarray]:
    """This rank's items for the epoch and their `valid` flags, each (steps * batch_size,).

    The order is cut to whole global batches (drop_last) or padded to them by repeating it from
    its start, the repeats flagged invalid; rank r takes every num_shards-th entry from r, so the
    ranks' valid items are disjoint and, without drop_last, cover every item exactly once.
    """
    steps = steps_per_epoch(len(order), batch_size, num_shards, drop_last)
    total = steps * batch_size * num_shards
    padded = np.resize(order, total) if total else order[:0]
    valid = np.arange(total) < len(order)
    return padded[shard_id::num_shards], valid[shard_id::num_shards]


# ---------------------------------------------------------------------------------------------
# Temporal sampling


def dense_indices(
    num_frames: int, clip_len: int, rate: int, rng: np.random.Generator
) -> np.ndarray:
    """Training clip of `clip_len` frames, every `rate`-th, in a window at a random offset.

    The window (clip_len * rate frames) starts at a uniform offset in [0, num_frames - window],
    or at 0 when the video is shorter. Then the clip repeats the last frame of its stride grid
    that lies before the video's last frame, as the MVD release's pretraining reader
    (kinetics.py, VideoDistillation) advances one stride only while the next frame is: 0, 4, ...,
    28, 28, ... for a 30-frame video at stride 4 (frame 29 is never taken; 24 for 29 frames).
    """
    window = clip_len * rate
    start = int(rng.integers(0, num_frames - window + 1)) if num_frames > window else 0
    last = start + max(0, rate * ((num_frames - start - 2) // rate))
    return np.minimum(start + np.arange(clip_len) * rate, last).astype(np.int64)


def segment_indices(num_frames: int, num_segments: int, rng: np.random.Generator) -> np.ndarray:
    """Training clip by segments (SSv2): one random frame in each of `num_segments` equal parts.

    VideoMAE's rule, short videos included: with fewer frames than segments, sorted random frames
    (or all zeros when there are not even that many).
    """
    average = num_frames // num_segments
    if average > 0:
        idx = np.arange(num_segments) * average + rng.integers(0, average, size=num_segments)
    elif num_frames > num_segments:
        idx = np.sort(rng.integers(0, num_frames, size=num_segments))
    else:
        idx = np.zeros(num_segments)
    return idx.astype(np.int64)


def segment_test_indices(num_frames: int, num_segments: int, clip: int, num_clips: int) -> np.ndarray:
    """Test clip `clip` of `num_clips` by segments: fixed offset `clip / num_clips` of a segment.

    For two clips these are VideoMAE's SSv2 test positions (segment starts and segment middles).
    """
    tick = num_frames / float(num_segments)
    idx = [int(tick * x + tick * clip / num_clips) for x in range(num_segments)]
    return np.minimum(np.array(idx, dtype=np.int64), num_frames - 1)


def keyframe_indices(num_frames: int, keyframe: int, clip_len: int, rate: int) -> np.ndarray:
    """The clip centred on a keyframe (AVA): `clip_len` frames every `rate`-th, the window of
    clip_len * rate frames centred on `keyframe`, indices clamped to the video.

    VideoMAE / AlphAction's TemporalCrop: on the stored 64-frame clip with its keyframe at frame 32,
    16 x 4 takes frames 1, 5, ..., 61 (start = keyframe - window // 2 + (rate - 1) // 2).
    """
    start = keyframe - clip_len * rate // 2 + (rate - 1) // 2
    return np.clip(start + np.arange(clip_len) * rate, 0, num_frames - 1).astype(np.int64)


def dense_test_indices(
    num_frames: int, clip_len: int, rate: int, clip: int, num_clips: int
) -> np.ndarray:
    """Test clip `clip` of `num_clips`, evenly spaced over the video (VideoMAE's K400 test rule).

    The video is subsampled every `rate` frames (the last kept frame repeated up to clip_len);
    clip c starts at int(c * (m - clip_len) / (num_clips - 1)) in that subsampled sequence of
    m frames (0 when m <= clip_len; the middle when num_clips == 1).
    """
    m = max(-(-num_frames // rate), 1)
    if num_clips > 1:
        start = int(clip * max((m - clip_len) / (num_clips - 1), 0.0))
    else:
        start = max(m - clip_len, 0) // 2
    sub = np.minimum(start + np.arange(clip_len), m - 1)
    return (sub * rate).astype(np.int64)


# ---------------------------------------------------------------------------------------------
# Spatial crops


def multiscale_fixed_offsets(width: int, height: int, crop_w: int, crop_h: int) -> list[tuple[int, int]]:
    """The 13 fixed (x, y) offsets of GroupMultiScaleCrop(fix_crop=True, more_fix_crop=True)."""
    w_step = (width - crop_w) // 4
    h_step = (height - crop_h) // 4
    grid = [
        (0, 0), (4, 0), (0, 4), (4, 4), (2, 2),  # corners, centre
        (0, 2), (4, 2), (2, 4), (2, 0),  # centre left/right, lower/upper centre
        (1, 1), (3, 1), (1, 3), (3, 3),  # quarter points
    ]
    return [(i * w_step, j * h_step) for i, j in grid]


def multiscale_crop_pairs(
    width: int, height: int, input_size: int, scales=MULTISCALE_SCALES, max_distort: int = 1
) -> list[tuple[int, int]]:
    """The (crop_w, crop_h) pairs GroupMultiScaleCrop chooses from.

    Side = int(shorter side * scale), snapped to input_size when within 3 px of it; width and
    height scale indices differ by at most max_distort. Sides are capped at the frame's size
    (a snap can exceed a frame shorter than input_size; the reference would pad with black).
    """
    base = min(width, height)
    sizes = [int(base * s) for s in scales]
    snapped = [input_size if abs(x - input_size) < 3 else x for x in sizes]
    return [
        (min(w, width), min(h, height))
        for i, h in enumerate(snapped)
        for j, w in enumerate(snapped)
        if abs(i - j) <= max_distort
    ]


def multiscale_crop_box(
    width: int, height: int, input_size: int, rng: np.random.Generator, scales=MULTISCALE_SCALES
) -> tuple[int, int, int, int]:
    """VideoMAE's GroupMultiScaleCrop(input_size, scales, max_distort=1, fix_crop=True,
    more_fix_crop=True): a random (w, h) pair, then one of the 13 fixed offsets."""
    pairs = multiscale_crop_pairs(width, height, input_size, scales)
    crop_w, crop_h = pairs[int(rng.integers(len(pairs)))]
    offsets = multiscale_fixed_offsets(width, height, crop_w, crop_h)
    x, y = offsets[int(rng.integers(len(offsets)))]
    return x, y, crop_w, crop_h


def random_resized_crop_box(
    width: int,
    height: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    attempts: int = 10,
) -> tuple[int, int, int, int]:
    """Random-resized crop as VideoMAE's fine-tuning does it (log-uniform aspect ratio, ten
    attempts, then a centre crop clamped to the ratio range)."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(attempts):
        target = rng.uniform(*scale) * area
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            y = int(rng.integers(0, height - h + 1))
            x = int(rng.integers(0, width - w + 1))
            return x, y, w, h
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def eval_crop_layout(
    width: int, height: int, input_size: int, num_crops: int, short_side_size: int | None = None
) -> tuple[tuple[int, int], list[tuple[int, int]]]:
    """Test crops (VideoMAE's test views) on the resized frame: the short side resized to
    short_side_size (default input_size), `num_crops` squares of input_size evenly spaced along
    the long side (the middle one when num_crops == 1), centred along the short side.

    Returns ((resized width, resized height), [(x, y) of each crop on the resized frame]).
    """
    side = short_side_size or input_size
    short, long_ = min(width, height), max(width, height)
    long_resized = int(side * long_ / short)
    if num_crops > 1:
        step = (long_resized - input_size) / (num_crops - 1)
        starts = [int(k * step) for k in range(num_crops)]
    else:
        starts = [(long_resized - input_size) // 2]
    across = (side - input_size) // 2
    if width >= height:
        return (long_resized, side), [(s, across) for s in starts]
    return (side, long_resized), [(across, s) for s in starts]


def eval_crop_boxes(
    width: int, height: int, input_size: int, num_crops: int, short_side_size: int | None = None
) -> list[tuple[float, float, float, float]]:
    """The crops of `eval_crop_layout` in source pixels: the reference's integer offsets on the
    resized frame, mapped back by the resize factor."""
    side = short_side_size or input_size
    factor = min(width, height) / side
    _, offsets = eval_crop_layout(width, height, input_size, num_crops, short_side_size)
    crop = input_size * factor
    return [(x * factor, y * factor, crop, crop) for x, y in offsets]


def detect_crop_box(width: int, height: int, rng: np.random.Generator,
                    min_crop: float = 0.75) -> tuple[int, int, int, int]:
    """The AVA training crop: each side a uniform whole number of pixels in
    [ceil(min_crop * side), side], at a uniform whole-pixel offset (the view is this crop resized
    to input_size x input_size, so whole pixels keep the box mapping exact on every path)."""
    w = int(rng.integers(math.ceil(min_crop * width), width + 1))
    h = int(rng.integers(math.ceil(min_crop * height), height + 1))
    x = int(rng.integers(0, width - w + 1))
    y = int(rng.integers(0, height - h + 1))
    return x, y, w, h


def full_frame_box(width: int, height: int) -> tuple[int, int, int, int]:
    """The whole frame (AVA evaluation: the frame resized to input_size x input_size, so view
    coordinates are frame-normalised coordinates)."""
    return 0, 0, width, height


def flip_draw(rng: np.random.Generator) -> bool:
    """Horizontal flip with probability 0.5."""
    return bool(rng.random() < 0.5)


def erasing_boxes(
    num_frames: int,
    height: int,
    width: int,
    rng: np.random.Generator,
    probability: float = 0.25,
    area: tuple[float, float] = (0.02, 1 / 3),
    min_aspect: float = 0.3,
    attempts: int = 10,
) -> np.ndarray:
    """timm RandomErasing boxes as VideoMAE applies it: each frame independently, with
    `probability`, one box; (num_frames, 4) int32 rows (top, left, h, w), h == 0 for none."""
    boxes = np.zeros((num_frames, 4), dtype=np.int32)
    log_aspect = (math.log(min_aspect), math.log(1 / min_aspect))
    for t in range(num_frames):
        if rng.random() >= probability:
            continue
        for _ in range(attempts):
            target = rng.uniform(*area) * height * width
            aspect = math.exp(rng.uniform(*log_aspect))
            h = int(round(math.sqrt(target * aspect)))
            w = int(round(math.sqrt(target / aspect)))
            if w < width and h < height:
                top = int(rng.integers(0, height - h + 1))
                left = int(rng.integers(0, width - w + 1))
                boxes[t] = (top, left, h, w)
                break
    return boxes


# ---------------------------------------------------------------------------------------------
# Person boxes (AVA detection)


def boxes_into_view(boxes: np.ndarray, width: int, height: int, crop: tuple, flip: bool,
                    min_visible: float = 0.25) -> tuple[np.ndarray, np.ndarray]:
    """Frame-normalised boxes (P, 4) -> (view boxes (P', 4) float32, kept positions (P',) int64).

    The view is the `crop` (x, y, w, h) of the width x height frame, flipped horizontally when
    `flip`; boxes are clipped to it and a box keeps its place only if at least `min_visible` of
    its area (in frame pixels) stays inside (and some of it does).
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    frame = np.array([width, height, width, height], np.float64)
    x, y, w, h = (float(c) for c in crop)
    px = boxes * frame  # frame pixels
    view = (px - np.array([x, y, x, y])) / np.array([w, h, w, h])
    clipped = np.clip(view, 0.0, 1.0)
    area = (px[:, 2] - px[:, 0]) * (px[:, 3] - px[:, 1])
    inside = (clipped[:, 2] - clipped[:, 0]) * w * (clipped[:, 3] - clipped[:, 1]) * h
    kept = np.nonzero((inside > 0) & (inside >= min_visible * area))[0]
    out = clipped[kept]
    if flip:
        out = np.stack([1.0 - out[:, 2], out[:, 1], 1.0 - out[:, 0], out[:, 3]], axis=1)
    return out.astype(np.float32).reshape(-1, 4), kept.astype(np.int64)


def jitter_boxes(boxes: np.ndarray, rng: np.random.Generator, jitter: tuple[float, float, float, float],
                 min_size: float) -> np.ndarray:
    """A jittered copy of view boxes (P, 4): AlphAction's BoxList.random_aug(x_out, x_in, y_out,
    y_in) as VideoMAE's AVA training applies it, in view coordinates. Each corner moves by a
    uniform share of the box's width (height): x1 by U(-x_out, x_in), x2 by U(-x_in, x_out),
    likewise y; clipped to the view, at least `min_size` wide and high (a view pixel). One (4,)
    draw per box, in box order."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    x_out, x_in, y_out, y_in = jitter
    lo = np.array([-x_out, -y_out, -x_in, -y_in])
    hi = np.array([x_in, y_in, x_out, y_out])
    u = rng.random((len(boxes), 4))
    size = np.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]] * 2, axis=1)
    out = boxes + size * (lo + (hi - lo) * u)
    x1 = np.clip(out[:, 0], 0.0, 1.0 - min_size)
    y1 = np.clip(out[:, 1], 0.0, 1.0 - min_size)
    x2 = np.maximum(np.minimum(out[:, 2], 1.0), x1 + min_size)
    y2 = np.maximum(np.minimum(out[:, 3], 1.0), y1 + min_size)
    return np.stack([x1, y1, x2, y2], axis=1).astype(np.float32).reshape(-1, 4)


def extend_boxes(boxes: np.ndarray, extend: tuple[float, float]) -> np.ndarray:
    """Boxes (Q, 4) grown by extend = (ex, ey) of their width / height in all (half each side),
    clipped to [0, 1]: the test-time box extension of VideoMAE's AVA model (`test_ext`)."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    pad_x = extend[0] * (boxes[:, 2] - boxes[:, 0]) / 2
    pad_y = extend[1] * (boxes[:, 3] - boxes[:, 1]) / 2
    out = boxes + np.stack([-pad_x, -pad_y, pad_x, pad_y], axis=1)
    return np.clip(out, 0.0, 1.0).astype(np.float32).reshape(-1, 4)
