"""DetectLoader (AVA keyframes with their person boxes) on synthetic AVA shards: the keyframe
window, the training crop + flip applied to pixels and boxes alike (re-computed here from the
sample's generator), the jittered copies, resume, the eval views (every keyframe once across
ranks, scored on its proposals), and the annotation errors raised before any decoding."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_pretrain_loader import MEAN, STD, collect

from dali_pipelines import DetectLoader, load_ava, load_shard_dir, sampling
from dali_pipelines.decode import decode_frames
from dali_pipelines.manifest import ShardDirError

CLIP = dict(num_frames=8, sampling_rate=2, input_size=32, reader_workers=0)


def video_bytes(table, i: int) -> bytes:
    with open(table.shard_paths[table.shard[i]], "rb") as f:
        f.seek(int(table.offset[i]))
        return f.read(int(table.size[i]))


def json_record(table, i: int) -> dict:
    with open(table.shard_paths[table.shard[i]], "rb") as f:
        f.seek(int(table.json_offset[i]))
        return json.loads(f.read(int(table.json_size[i])))["ava"]


def window(keyframe: int, n: int, length: int = 8, rate: int = 2, shift: int = 0) -> np.ndarray:
    """The keyframe-centred window as VideoMAE's TemporalCrop computes it on a clip of n frames."""
    start = (n - length * rate) // 2 + (rate - 1) // 2 + (keyframe - n // 2) + shift
    return np.clip(np.arange(start, start + length * rate, rate), 0, n - 1)


def reference_view(table, i: int, crop, flip: bool, frames: np.ndarray, size: int = 32) -> torch.Tensor:
    """(T, H, W, 3) float 0..255: PyAV frames, cropped, flipped, resized (antialiased bilinear)."""
    x, y, w, h = crop
    clip = torch.from_numpy(decode_frames(video_bytes(table, i), frames)[:, y:y + h, x:x + w]).float()
    if flip:
        clip = clip.flip(2)
    out = F.interpolate(clip.permute(0, 3, 1, 2), size=(size, size), mode="bilinear", antialias=True,
                        align_corners=False)
    return out.permute(0, 2, 3, 1)


def redraw_train_view(seed: int, epoch: int, i: int, width: int, height: int, min_crop: float = 0.75):
    """The crop and flip re-drawn from the sample's generator: widths, heights, offsets, flip."""
    rng = sampling.sample_rng(seed, epoch, i)
    w = int(rng.integers(math.ceil(min_crop * width), width + 1))
    h = int(rng.integers(math.ceil(min_crop * height), height + 1))
    x, y = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
    return (x, y, w, h), bool(rng.random() < 0.5)


def map_boxes(boxes: np.ndarray, width: int, height: int, crop, flip: bool, min_visible=0.25):
    """Ground-truth boxes into the view, written out box by box."""
    x, y, w, h = crop
    out, kept = [], []
    for p, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
        px = [x1 * width, y1 * height, x2 * width, y2 * height]
        cx1, cx2 = max(px[0], x), min(px[2], x + w)
        cy1, cy2 = max(px[1], y), min(px[3], y + h)
        inside = max(cx2 - cx1, 0) * max(cy2 - cy1, 0)
        if inside <= 0 or inside < min_visible * (px[2] - px[0]) * (px[3] - px[1]):
            continue
        v = [(cx1 - x) / w, (cy1 - y) / h, (cx2 - x) / w, (cy2 - y) / h]
        if flip:
            v = [1 - v[2], v[1], 1 - v[0], v[3]]
        out.append(v)
        kept.append(p)
    return np.array(out, np.float64).reshape(-1, 4), kept


def test_train_boxes_are_the_ground_truth_through_the_views_crop_and_flip(ava_shards):
    """Pixels and boxes go through the same crop and flip: the view equals the crop of the
    keyframe window (not a window one frame off), each kept box is the ground truth mapped as
    re-computed here, and the person under it shows in the view's keyframe."""
    loader = DetectLoader(ava_shards.out_dir, 4, train=True, device="cpu", seed=3, normalize=False, **CLIP)
    table, ava = loader.table, load_ava(load_shard_dir(ava_shards.out_dir))
    assert len(loader) == 14 and loader.classes == list(ava_shards.manifest["classes"])
    flips = 0
    for step, batch in zip(range(4), loader):
        video = batch["video"].permute(0, 2, 3, 4, 1).float()  # (B, T, S, S, 3) 0..255
        for b, i in enumerate(batch["index"].tolist()):
            w, h = int(table.width[i]), int(table.height[i])
            crop, flip = redraw_train_view(3, 0, i, w, h)
            flips += flip
            record = json_record(table, i)
            n, k = int(table.num_frames[i]), record["keyframe"]
            assert k == n // 2
            frames = window(k, n)
            want = reference_view(table, i, crop, flip, frames)
            err = (video[b] - want).abs().mean()
            assert err < 6.0, (table.keys[i], float(err))  # DALI vs swscale YUV->RGB: a few levels
            assert (video[b] - reference_view(table, i, crop, flip, window(k, n, shift=1))).abs().mean() > err
            mine = batch["boxes"][:, 0] == b
            got, where = batch["boxes"][mine, 1:].double().numpy(), batch["box_index"][mine].tolist()
            gt, kept = map_boxes(np.asarray(record["boxes"]), w, h, crop, flip)
            assert len(got) == 2 * len(kept)  # each kept box and its jittered copy
            np.testing.assert_allclose(got[:len(kept)], gt, atol=1e-6)
            assert where == kept + kept
            labels = batch["box_labels"][mine].numpy()
            for r, p in enumerate(kept + kept):
                ids = [ava.action_ids[c] for c in np.nonzero(labels[r])[0]]
                assert sorted(ids) == sorted(record["actions"][p])
            t = int(np.nonzero(frames == k)[0][0])  # the keyframe's place in the window
            for x1, y1, x2, y2 in gt:
                cx, cy = int((x1 + x2) / 2 * 32), int((y1 + y2) / 2 * 32)
                rgb = video[b, t, cy, cx]
                assert rgb.max() - rgb.min() > 60, (table.keys[i], rgb)  # a saturated person
    assert 0 < flips < 16


def test_jittered_copies_follow_alphaction_random_aug(ava_shards):
    """The copy's corners move by U(-0.2, 0.1) x width (x1), U(-0.1, 0.05) x height (y1), U(-0.1,
    0.2) x width (x2), U(-0.05, 0.1) x height (y2), drawn from the sample's stream 1."""
    loader = DetectLoader(ava_shards.out_dir, 8, train=True, device="cpu", seed=5, normalize=False, **CLIP)
    batch = next(iter(loader))
    for b, i in enumerate(batch["index"].tolist()):
        boxes = batch["boxes"][batch["boxes"][:, 0] == b, 1:].double().numpy()
        gt, copies = np.split(boxes, 2)
        u = sampling.sample_rng(5, 0, i, stream=1).random((len(gt), 4))
        bw, bh = gt[:, 2] - gt[:, 0], gt[:, 3] - gt[:, 1]
        want = np.stack([gt[:, 0] + bw * (-0.2 + 0.3 * u[:, 0]), gt[:, 1] + bh * (-0.1 + 0.15 * u[:, 1]),
                         gt[:, 2] + bw * (-0.1 + 0.3 * u[:, 2]), gt[:, 3] + bh * (-0.05 + 0.15 * u[:, 3])], 1)
        want[:, :2] = np.clip(want[:, :2], 0, 1 - 1 / 32)
        want[:, 2:] = np.maximum(np.minimum(want[:, 2:], 1), want[:, :2] + 1 / 32)
        np.testing.assert_allclose(copies, want, atol=1e-6)
    no_copies = DetectLoader(ava_shards.out_dir, 8, train=True, device="cpu", seed=5, jitter=(),
                             normalize=False, **CLIP)
    plain = next(iter(no_copies))
    assert torch.equal(plain["video"], batch["video"]) and 2 * len(plain["boxes"]) == len(batch["boxes"])


def test_box_rules_on_numbers_worked_by_hand():
    boxes = np.array([[0.2, 0.2, 0.4, 0.6],  # pixels x 20..40, y 10..30 of 100 x 50
                      [0.49, 0.0, 0.89, 1.0],  # x 49..89: 11 of its 40 px inside the crop
                      [0.52, 0.0, 0.9, 1.0],  # x 52..90: 8 of 38 inside
                      [0.0, 0.0, 0.05, 1.0]])  # x 0..5: outside
    crop = (10, 0, 50, 50)  # x 10..60
    view, kept = sampling.boxes_into_view(boxes, 100, 50, crop, flip=False, min_visible=0.25)
    assert kept.tolist() == [0, 1]
    np.testing.assert_allclose(view, [[0.2, 0.2, 0.6, 0.6], [0.78, 0.0, 1.0, 1.0]], atol=1e-6)
    flipped, _ = sampling.boxes_into_view(boxes, 100, 50, crop, flip=True, min_visible=0.25)
    np.testing.assert_allclose(flipped, [[0.4, 0.2, 0.8, 0.6], [0.0, 0.0, 0.22, 1.0]], atol=1e-6)
    np.testing.assert_allclose(sampling.extend_boxes(np.array([[0.2, 0.2, 0.6, 0.4], [0.0, 0.5, 0.2, 1.0]]),
                                                     (0.1, 0.05)),
                               [[0.18, 0.195, 0.62, 0.405], [0.0, 0.4875, 0.21, 1.0]], atol=1e-6)
    assert sampling.keyframe_indices(64, 32, 16, 4).tolist() == list(range(1, 62, 4))  # VideoMAE's 16 x 4
    assert sampling.keyframe_indices(10, 2, 4, 2).tolist() == [0, 0, 2, 4]  # clamped at the start


def test_resume_mid_epoch_reproduces_the_remaining_batches_and_boxes(ava_shards):
    kw = dict(train=True, device="cpu", seed=2, normalize=False, **CLIP)
    reference = collect(DetectLoader(ava_shards.out_dir, 8, **kw), epochs=2)
    first = DetectLoader(ava_shards.out_dir, 8, **kw)
    it = iter(first)
    next(it), next(it), next(it)
    state = first.state_dict()
    resumed = DetectLoader(ava_shards.out_dir, 8, **kw)
    resumed.load_state_dict(state)
    rest = collect(resumed, epochs=2)
    assert len(rest) == len(reference) - 3
    for x, y in zip(reference[3:], rest):
        assert x["key"] == y["key"]
        for name in ("video", "index", "boxes", "box_labels", "box_index"):
            assert torch.equal(x[name], y[name]), name
    assert not torch.equal(reference[0]["boxes"], reference[7]["boxes"])  # epoch 1 draws anew


def test_eval_views_score_every_keyframe_once_across_two_ranks_on_its_proposals(ava_shards):
    table = load_shard_dir(ava_shards.out_dir).table
    seen, rows = [], 0
    for rank in range(2):
        loader = DetectLoader(ava_shards.out_dir, 4, train=False, device="cpu", num_shards=2, shard_id=rank,
                              proposal_min_score=0.8, **CLIP)
        assert loader.eval_boxes == "proposals" and len(loader) == 8  # ceil(58 / 8)
        for batch in loader:
            assert "box_labels" not in batch
            video = ((batch["video"] * STD + MEAN) * 255).permute(0, 2, 3, 4, 1)
            for b, (i, valid) in enumerate(zip(batch["index"].tolist(), batch["valid"].tolist())):
                if valid:
                    seen.append(i)
                record = json_record(table, i)
                props = np.asarray(record["proposals"], np.float64).reshape(-1, 5)
                keep = np.nonzero(props[:, 4] >= 0.8)[0]
                mine = batch["boxes"][:, 0] == b
                assert batch["box_index"][mine].tolist() == keep.tolist()
                p = props[keep, :4]
                pad = np.stack([(p[:, 2] - p[:, 0]) * 0.05, (p[:, 3] - p[:, 1]) * 0.025], 1)
                want = np.clip(p + np.concatenate([-pad, pad], 1), 0, 1)
                np.testing.assert_allclose(batch["boxes"][mine, 1:].numpy(), want, atol=1e-6)
                rows += len(keep)
                n, k = int(table.num_frames[i]), record["keyframe"]
                full = (0, 0, int(table.width[i]), int(table.height[i]))
                assert (video[b] - reference_view(table, i, full, False, window(k, n))).abs().mean() < 6.0
    assert sorted(seen) == list(range(58))
    assert rows >= 58  # every synthetic person has a proposal scored >= 0.8


def test_eval_boxes_fall_back_to_the_ground_truth_without_proposals(ava_no_proposals):
    loader = DetectLoader(ava_no_proposals.out_dir, 4, train=False, device="cpu", **CLIP)
    assert loader.eval_boxes == "groundtruth"
    ava = loader.ava
    batch = next(iter(loader))
    for b, i in enumerate(batch["index"].tolist()):
        mine = batch["boxes"][:, 0] == b
        assert batch["box_index"][mine].tolist() == list(range(len(ava.samples[i].boxes)))
    with pytest.raises(ValueError, match="no sample holds proposals"):
        DetectLoader(ava_no_proposals.out_dir, 4, train=False, device="cpu", eval_boxes="proposals", **CLIP)


def test_annotation_errors_name_the_sample_and_the_field(ava_shards, synth_shards, tmp_path):
    with pytest.raises(ShardDirError, match="no 'detection' section"):
        DetectLoader(synth_shards, 4, train=True, device="cpu", **CLIP)
    bad = tmp_path / "ids"
    shutil.copytree(ava_shards.out_dir, bad)
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["detection"]["action_ids"] = manifest["detection"]["action_ids"][:-1]
    (bad / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ShardDirError, match="detection.action_ids must give one distinct id per class"):
        load_ava(load_shard_dir(bad))
    # a box pushed outside the frame in one sample's json (same byte length: the tar stays valid)
    bad = tmp_path / "box"
    shutil.copytree(ava_shards.out_dir, bad)
    table = load_shard_dir(bad).table
    with open(table.shard_paths[0], "r+b") as f:
        f.seek(int(table.json_offset[3]))
        raw = f.read(int(table.json_size[3]))
        at = raw.index(b'"boxes": [[') + len(b'"boxes": [[')
        assert raw[at:at + 2] == b"0."
        f.seek(int(table.json_offset[3]) + at)
        f.write(b"7")
    with pytest.raises(ShardDirError, match=rf"{table.keys[3]}\.json: ava\.boxes\[0\] .* not a box"):
        DetectLoader(bad, 4, train=True, device="cpu", **CLIP)


@pytest.mark.cuda
def test_gpu_loader_gives_the_cpu_loaders_boxes_and_views(ava_gpu_shards):
    kw = dict(train=True, seed=4, normalize=False, **CLIP)
    cpu = collect(DetectLoader(ava_gpu_shards.out_dir, 4, device="cpu", **kw))
    gpu = collect(DetectLoader(ava_gpu_shards.out_dir, 4, device="gpu", **kw))
    assert len(cpu) == len(gpu) > 0
    for x, y in zip(cpu, gpu):
        assert x["key"] == y["key"] and y["boxes"].is_cuda
        for name in ("boxes", "box_labels", "box_index", "index"):
            assert torch.equal(x[name], y[name].cpu()), name
        assert (x["video"].float() - y["video"].cpu().float()).abs().mean() < 6.0
