"""FinetuneLoader (RandAugment, random erasing, repeated augmentation) and EvalLoader (the test
views, each seen once across ranks)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import frame_numbers
from test_pretrain_loader import MEAN, STD, collect, pixels

from dali_pipelines import EvalLoader, FinetuneLoader, load_shard_dir
from dali_pipelines import sampling
from dali_pipelines.decode import decode_frames

SMALL = dict(num_frames=8, sampling_rate=2, input_size=32, reader_workers=0)


def test_finetune_repeated_views_with_rand_augment_and_erasing(synth_shards):
    loader = FinetuneLoader(synth_shards, 3, device="cpu", seed=1, repeated_aug=2, **SMALL)
    batches = collect(loader)
    assert len(batches) == 16
    batch = batches[0]
    assert batch["video"].shape == (6, 3, 8, 32, 32) and batch["video"].dtype == torch.float32
    assert batch["key"][0::2] == batch["key"][1::2]  # views of one video are adjacent
    assert torch.equal(batch["label"][0::2], batch["label"][1::2])
    assert not torch.equal(batch["video"][0], batch["video"][1])  # two different augmentations
    assert torch.isfinite(batch["video"]).all()
    table = load_shard_dir(synth_shards).table
    assert batch["label"].tolist() == [int(table.label[i]) for i in batch["index"].tolist()]
    again = collect(FinetuneLoader(synth_shards, 3, device="cpu", seed=1, repeated_aug=2, **SMALL))
    for x, y in zip(batches, again):
        assert x["key"] == y["key"] and torch.equal(x["video"], y["video"])  # bit for bit


def test_erasing_replaces_exactly_the_drawn_boxes(synth_shards):
    kw = dict(device="cpu", seed=4, repeated_aug=1, rand_augment=(), flip=False, **SMALL)
    plain = next(iter(FinetuneLoader(synth_shards, 4, erase_prob=0.0, **kw)))
    erased = next(iter(FinetuneLoader(synth_shards, 4, erase_prob=1.0, **kw)))
    table = load_shard_dir(synth_shards).table
    for b, index in enumerate(erased["index"].tolist()):
        rng = sampling.sample_rng(4, 0, index)
        sampling.dense_indices(int(table.num_frames[index]), 8, 2, rng)
        sampling.random_resized_crop_box(int(table.width[index]), int(table.height[index]), rng)
        boxes = sampling.erasing_boxes(8, 32, 32, rng, probability=1.0)
        want = torch.zeros(8, 32, 32, dtype=torch.bool)
        for t, (top, left, h, w) in enumerate(boxes):
            want[t, top : top + h, left : left + w] = True
        changed = (plain["video"][b] != erased["video"][b]).any(dim=0)  # (T, H, W)
        assert torch.equal(changed, want)


def test_rand_augment_changes_pixels_of_the_same_crop(synth_shards):
    kw = dict(device="cpu", seed=4, repeated_aug=1, flip=False, erase_prob=0.0, **SMALL)
    plain = next(iter(FinetuneLoader(synth_shards, 8, rand_augment=(), **kw)))
    augmented = next(iter(FinetuneLoader(synth_shards, 8, rand_augment=(4, 9.0, 0.5), **kw)))
    assert plain["key"] == augmented["key"]
    changed = [not torch.equal(p, a) for p, a in zip(plain["video"], augmented["video"])]
    assert sum(changed) >= 4  # a clip is left alone only when all 4 layers skip (1/16)


def test_split_merge_select_matches_dali_conditional_select():
    """pipeline.select re-implements auto_aug's select without autograph: same pixels."""
    from nvidia.dali import fn, pipeline_def, types
    from nvidia.dali.auto_aug.core import select as dali_select
    from nvidia.dali.auto_aug.core import signed_bin

    from dali_pipelines.graph import rand_augment_suite, select

    suite = rand_augment_suite()
    batch = len(suite)
    video = np.random.default_rng(0).integers(0, 256, (2, 24, 32, 3)).astype(np.uint8)

    def source(info):
        j = info.idx_in_batch  # sample j takes op j: every op of the suite is exercised
        return video, np.array(j, np.int32), np.array(15, np.int32), np.array(j % 2, np.int32)

    def build(conditionals: bool):
        @pipeline_def(batch_size=batch, num_threads=1, device_id=None, enable_conditionals=conditionals)
        def pipe():
            data, op, mag, sign = fn.external_source(source=source, num_outputs=4, batch=False,
                                                     layout=["FHWC", "", "", ""])
            shape = data.shape(dtype=types.FLOAT)[1:3]
            signed = signed_bin(mag, random_sign=sign)
            if conditionals:
                return dali_select(suite, op, data=data, magnitude_bin=signed,
                                   num_magnitude_bins=21, shape=shape, fill_value=128)
            params = [aug._get_param(signed, 21, "cpu") for aug in suite]
            return select(suite, op, params, data=data, shape=shape, fill_value=128)

        p = pipe()
        p.build()
        out, = p.run()
        return [np.array(out[j]) for j in range(batch)]

    mine, theirs = build(False), build(True)
    for j in range(batch):
        assert np.array_equal(mine[j], theirs[j]), suite[j].name


def test_eval_views_are_each_seen_once_across_ranks(synth_shards):
    views = []
    for rank in range(2):
        loader = EvalLoader(synth_shards, 6, device="cpu", num_clips=2, num_crops=3, num_shards=2,
                            shard_id=rank, **SMALL)
        for batch in loader:
            assert batch["video"].shape == (6, 3, 8, 32, 32)
            rows = torch.stack([batch["index"], batch["clip"], batch["crop"]], 1)[batch["valid"]]
            views += [tuple(r) for r in rows.tolist()]
    assert len(views) == 48 * 2 * 3 and len(set(views)) == len(views)
    per_video = np.bincount([v[0] for v in views])
    assert (per_video == 6).all()


def test_eval_clips_and_crops_are_the_reference_test_views(counter_shards, synth_shards):
    table = load_shard_dir(counter_shards).table
    for batch in EvalLoader(counter_shards, 3, device="cpu", num_clips=3, num_crops=1,
                            **{**SMALL, "sampling_rate": 4}):
        got = frame_numbers(pixels(batch["video"]))
        for b, (index, clip) in enumerate(zip(batch["index"].tolist(), batch["clip"].tolist())):
            n = int(table.num_frames[index])
            assert got[b].tolist() == sampling.dense_test_indices(n, 8, 4, clip, 3).tolist()

    # spatial: VideoMAE resizes the short side to 32 (64x48 -> 42x32) and slices 0, 5, 10
    table = load_shard_dir(synth_shards).table
    batch = next(iter(EvalLoader(synth_shards, 3, device="cpu", num_clips=1, num_crops=3, **SMALL)))
    index = batch["index"].tolist()[0]
    with open(table.shard_paths[table.shard[index]], "rb") as f:
        f.seek(int(table.offset[index]))
        data = f.read(int(table.size[index]))
    frames = sampling.dense_test_indices(int(table.num_frames[index]), 8, 2, 0, 1)
    clip = torch.from_numpy(decode_frames(data, frames)).float().permute(0, 3, 1, 2) / 255
    resized = F.interpolate(clip, size=(32, 42), mode="bilinear", antialias=True, align_corners=False)
    for crop, start in enumerate((0, 5, 10)):
        want = (resized[..., start : start + 32].permute(1, 0, 2, 3)[None] - MEAN) / STD
        assert (batch["video"][crop : crop + 1] - want).abs().mean() < 0.06, crop


def test_eval_loader_is_deterministic_and_counts_views(synth_shards):
    loader = EvalLoader(synth_shards, 6, device="cpu", num_clips=2, num_crops=3, **SMALL)
    assert loader.num_views == 48 * 2 * 3 and len(loader) == 48
    with pytest.raises(ValueError, match="multiple of num_crops"):
        EvalLoader(synth_shards, 4, device="cpu", num_crops=3, **SMALL)
    first = collect(EvalLoader(synth_shards, 30, device="cpu", num_clips=2, num_crops=3, **SMALL))
    second = collect(EvalLoader(synth_shards, 30, device="cpu", num_clips=2, num_crops=3, **SMALL))
    for x, y in zip(first, second):
        assert torch.equal(x["video"], y["video"]) and x["key"] == y["key"]
