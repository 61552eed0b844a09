"""The recipe's sampling rules against direct re-computations written here from the reference
(VideoMAE's GroupMultiScaleCrop, temporal sampling and test views)."""

from __future__ import annotations

import numpy as np
import pytest

from dali_pipelines import sampling


def reference_multiscale_candidates(image_w, image_h, input_size, scales=(1, 0.875, 0.75, 0.66)):
    """VideoMAE GroupMultiScaleCrop(max_distort=1, fix_crop=True, more_fix_crop=True): every
    (x, y, w, h) it can return."""
    base_size = min(image_w, image_h)
    crop_sizes = [int(base_size * x) for x in scales]
    crop_h = [input_size if abs(x - input_size) < 3 else x for x in crop_sizes]
    crop_w = [input_size if abs(x - input_size) < 3 else x for x in crop_sizes]
    pairs = [(w, h) for i, h in enumerate(crop_h) for j, w in enumerate(crop_w) if abs(i - j) <= 1]
    boxes = set()
    for w, h in pairs:
        w_step, h_step = (image_w - w) // 4, (image_h - h) // 4
        offsets = [
            (0, 0), (4 * w_step, 0), (0, 4 * h_step), (4 * w_step, 4 * h_step),
            (2 * w_step, 2 * h_step), (0, 2 * h_step), (4 * w_step, 2 * h_step),
            (2 * w_step, 4 * h_step), (2 * w_step, 0), (w_step, h_step), (3 * w_step, h_step),
            (w_step, 3 * h_step), (3 * w_step, 3 * h_step),
        ]
        boxes.update((x, y, w, h) for x, y in offsets)
    return boxes


@pytest.mark.parametrize("size", [(320, 240), (64, 48), (240, 320), (230, 226)])
def test_multiscale_crop_draws_exactly_the_reference_candidates(size):
    w, h = size
    input_size = 224 if min(size) > 200 else 32
    expected = reference_multiscale_candidates(w, h, input_size)
    drawn = {
        sampling.multiscale_crop_box(w, h, input_size, np.random.default_rng(i)) for i in range(3000)
    }
    assert drawn == expected


def test_multiscale_crop_sizes_snap_and_pairs_differ_by_one_scale():
    # 320x240 at 224: sides int(240 * s) = 240, 210, 180, 158; none within 3 px of 224
    pairs = sampling.multiscale_crop_pairs(320, 240, 224)
    sides = [240, 210, 180, 158]
    assert sorted(pairs) == sorted(
        (sides[j], sides[i]) for i in range(4) for j in range(4) if abs(i - j) <= 1
    )
    # a 226 px short side: int(226 * 1) = 226 is within 3 px of 224 and snaps to it
    assert (224, 224) in sampling.multiscale_crop_pairs(300, 226, 224)
    assert len(sampling.multiscale_fixed_offsets(320, 240, 180, 180)) == 13


def release_dense_frames(n: int, start: int, clip_len: int, rate: int) -> list[int]:
    """The MVD release's pretraining reader (kinetics.py VideoDistillation), re-stated: a 1-based
    offset from the window's start, one stride further only while offset + rate < n."""
    offset, frames = start + 1, []
    for _ in range(clip_len):
        frames.append(offset - 1)
        if offset + rate < n:
            offset += rate
    return frames


def test_dense_indices_match_window_rule():
    for n in (1, 2, 5, 29, 30, 31, 63, 64, 65, 300):
        for seed in range(20):
            got = sampling.dense_indices(n, 16, 4, np.random.default_rng(seed))
            rng = np.random.default_rng(seed)
            start = int(rng.integers(0, n - 64 + 1)) if n > 64 else 0
            assert got.tolist() == release_dense_frames(n, start, 16, 4), (n, seed)
            assert got.min() >= 0 and got.max() <= n - 1


def test_short_video_repeats_the_releases_last_frame():
    """A 30-frame video at stride 4 ends on frame 28 (the release's reader), not 29."""
    got = sampling.dense_indices(30, 16, 4, np.random.default_rng(0)).tolist()
    assert got == [0, 4, 8, 12, 16, 20, 24] + [28] * 9


def test_segment_indices_one_random_frame_per_segment():
    got = sampling.segment_indices(160, 16, np.random.default_rng(0))
    assert all(10 * k <= i < 10 * (k + 1) for k, i in enumerate(got))
    short = sampling.segment_indices(20, 16, np.random.default_rng(1))  # fewer than 2 per segment
    assert list(short) == sorted(short) and short.max() < 20
    assert sampling.segment_indices(10, 16, np.random.default_rng(2)).tolist() == [0] * 16


def test_segment_test_indices_are_videomae_ssv2_positions():
    n, t = 50, 16
    tick = n / t
    # VideoMAE: sorted [int(tick/2 + tick*x)] + [int(tick*x)], clip c takes every second from c
    union = sorted([int(tick / 2.0 + tick * x) for x in range(t)] + [int(tick * x) for x in range(t)])
    for clip in range(2):
        assert sampling.segment_test_indices(n, t, clip, 2).tolist() == union[clip::2]


def test_dense_test_indices_are_evenly_spaced_clips():
    n, clip_len, rate, clips = 300, 16, 4, 5
    sub = list(range(0, n, rate))  # 75 frames
    step = (len(sub) - clip_len) / (clips - 1)
    for c in range(clips):
        start = int(c * step)
        assert sampling.dense_test_indices(n, clip_len, rate, c, clips).tolist() == sub[start : start + clip_len]
    short = sampling.dense_test_indices(20, clip_len, rate, 3, clips)  # 5 subsampled frames
    assert short.tolist() == [0, 4, 8, 12, 16] + [16] * 11


def test_eval_crop_boxes_slide_along_the_long_side():
    # 320x240 -> short side 224: 298x224; three 224 crops at 0, 37, 74 on the resized frame
    boxes = sampling.eval_crop_boxes(320, 240, 224, 3)
    factor = 240 / 224
    assert [b[0] for b in boxes] == pytest.approx([0, 37 * factor, 74 * factor])
    assert all(b[1] == 0 and b[2] == b[3] == 240 for b in boxes)
    tall = sampling.eval_crop_boxes(240, 320, 224, 3)
    assert [b[1] for b in tall] == pytest.approx([0, 37 * factor, 74 * factor])


def test_random_resized_crop_inside_frame_with_bounded_area():
    for seed in range(200):
        x, y, w, h = sampling.random_resized_crop_box(64, 48, np.random.default_rng(seed))
        assert 0 <= x and x + w <= 64 and 0 <= y and y + h <= 48
        assert w * h >= 0.08 * 64 * 48 * 0.8  # rounding of w, h


@pytest.mark.parametrize("drop_last", [True, False])
def test_ranks_get_disjoint_items_covering_the_epoch(drop_last):
    order = sampling.epoch_order(3, 1, 23)
    parts = [
        sampling.rank_items(order, batch_size=4, num_shards=2, shard_id=r, drop_last=drop_last)
        for r in range(2)
    ]
    assert len(parts[0][0]) == len(parts[1][0])
    valid = np.concatenate([items[ok] for items, ok in parts])
    assert len(set(valid.tolist())) == len(valid)  # disjoint, no duplicates
    if drop_last:
        assert len(valid) == 16
    else:
        assert sorted(valid.tolist()) == list(range(23))


def test_sample_rng_depends_on_seed_epoch_and_index():
    draw = lambda *a: sampling.sample_rng(*a).integers(1 << 30)  # noqa: E731
    assert draw(0, 0, 5) == draw(0, 0, 5)
    assert len({draw(0, 0, 5), draw(1, 0, 5), draw(0, 1, 5), draw(0, 0, 6)}) == 4
