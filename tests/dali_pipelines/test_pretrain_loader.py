"""PretrainLoader on CPU: batch contract, mask, views, frame indices, determinism, ranks, resume,
the H.264 fallback and the errors raised before any decoding."""

from __future__ import annotations

import io

import av
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY, counter_value, frame_numbers

from dali_pipelines import EvalLoader, PretrainLoader, load_shard_dir
from dali_pipelines import sampling
from dali_pipelines.decode import decode_frames

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1, 1)


def pixels(video: torch.Tensor) -> np.ndarray:
    """(B, 3, T, H, W) normalised -> (B, T, H, W, 3) values on the 0..255 scale."""
    return ((video * STD + MEAN) * 255).permute(0, 2, 3, 4, 1).numpy()


def test_batch_contract_shapes_dtypes_and_range(synth_shards):
    loader = PretrainLoader(synth_shards, 4, device="cpu", **{**TINY, "teacher_input_size": 48})
    assert len(loader) == 12 and loader.num_classes == 8 and len(loader.classes) == 8
    batch = next(iter(loader))
    assert batch["video"].shape == (4, 3, 8, 32, 32) and batch["video"].dtype == torch.float32
    assert batch["teacher_video"].shape == (4, 3, 8, 48, 48)
    assert batch["mask"].shape == (4, 4 * 2 * 2) and batch["mask"].dtype == torch.bool
    assert batch["label"].dtype == torch.int64 and batch["index"].dtype == torch.int64
    assert batch["valid"].dtype == torch.bool and bool(batch["valid"].all())
    table = load_shard_dir(synth_shards).table
    assert batch["key"] == [table.keys[i] for i in batch["index"].tolist()]
    assert batch["label"].tolist() == [int(table.label[i]) for i in batch["index"].tolist()]
    lo, hi = (0 - MEAN) / STD, (1 - MEAN) / STD  # the normalised range of each channel
    for video in (batch["video"], batch["teacher_video"]):
        assert bool((video >= lo - 1e-5).all()) and bool((video <= hi + 1e-5).all())
        assert video.std() > 0.1  # not a constant


def test_tube_mask_has_exact_count_and_repeats_over_time(synth_shards):
    loader = PretrainLoader(synth_shards, 4, device="cpu", **{**TINY, "input_size": 64, "teacher_input_size": 64})
    mask = next(iter(loader))["mask"]  # 4 temporal x 4 x 4 tokens
    assert mask.shape == (4, 64)
    per_frame = mask.view(4, 4, 16)
    assert (per_frame.sum(-1) == 14).all()  # floor(0.9 * 16)
    assert (per_frame == per_frame[:, :1]).all()  # tubes: the same positions in every slice
    assert not (per_frame[0, 0] == per_frame[1, 0]).all() or not (per_frame[0, 0] == per_frame[2, 0]).all()
    loader = PretrainLoader(synth_shards, 4, device="cpu", mask_type="random", **{**TINY, "input_size": 64, "teacher_input_size": 64})
    mask = next(iter(loader))["mask"]
    assert (mask.sum(-1) == 57).all()  # floor(0.9 * 64)
    assert not (mask.view(4, 4, 16) == mask.view(4, 4, 16)[:, :1]).all()


def reference_views(data_dir, index: int, seed: int, epoch: int, sizes, box_shift=0):
    """A clip computed here without the loader: the sample's frame indices and multi-scale box
    re-drawn from its generator, PyAV decode, crop, antialiased bilinear resize, normalise."""
    table = load_shard_dir(data_dir).table
    rng = sampling.sample_rng(seed, epoch, index)
    frames = sampling.dense_indices(int(table.num_frames[index]), 8, 2, rng)
    x, y, w, h = sampling.multiscale_crop_box(int(table.width[index]), int(table.height[index]), 32, rng)
    x = min(x + box_shift, int(table.width[index]) - w)
    with open(table.shard_paths[table.shard[index]], "rb") as f:
        f.seek(int(table.offset[index]))
        data = f.read(int(table.size[index]))
    clip = torch.from_numpy(decode_frames(data, frames)[:, y : y + h, x : x + w]).float() / 255
    clip = clip.permute(0, 3, 1, 2)  # (T, 3, h, w)
    views = []
    for size in sizes:
        resized = F.interpolate(clip, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        views.append((resized.permute(1, 0, 2, 3)[None] - MEAN) / STD)  # (1, 3, T, S, S)
    return views


@pytest.mark.parametrize("shards,tolerance", [("synth_shards", 0.05), ("h264_shards", 0.01)])
def test_student_and_teacher_views_are_the_crop_resized(shards, tolerance, request):
    data_dir = request.getfixturevalue(shards)
    loader = PretrainLoader(data_dir, 4, device="cpu", seed=3, **{**TINY, "teacher_input_size": 48})
    batch = next(iter(loader))
    for b, index in enumerate(batch["index"].tolist()):
        student, teacher = reference_views(data_dir, index, 3, 0, (32, 48))
        # mean abs difference in normalised units; on VP9 DALI's YUV->RGB conversion differs
        # from swscale's by a few levels at colour edges, H.264 goes through PyAV in both
        assert (batch["video"][b : b + 1] - student).abs().mean() < tolerance
        assert (batch["teacher_video"][b : b + 1] - teacher).abs().mean() < tolerance
        # and the check tells the right crop from one 6 px to the side
        shifted, = reference_views(data_dir, index, 3, 0, (32,), box_shift=6)
        if not torch.equal(shifted, student):
            assert (batch["video"][b : b + 1] - shifted).abs().mean() > 2 * tolerance


def test_teacher_is_the_same_tensor_when_sizes_match(synth_shards):
    batch = next(iter(PretrainLoader(synth_shards, 2, device="cpu", **TINY)))
    assert batch["teacher_video"] is batch["video"]


def test_counter_videos_decode_with_pyav_to_their_frame_numbers(counter_shards):
    table = load_shard_dir(counter_shards).table
    with open(table.shard_paths[0], "rb") as f:
        f.seek(int(table.offset[0]))
        data = f.read(int(table.size[0]))
    with av.open(io.BytesIO(data)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == table.num_frames[0]
    assert frame_numbers(np.stack(frames)).tolist() == list(range(len(frames)))
    assert [counter_value(i) for i in (0, 1)] == [16, 19]


@pytest.mark.parametrize("shards,sampling_mode", [
    ("counter_shards", "dense"), ("counter_shards", "segment"), ("counter_h264_shards", "dense"),
])
def test_decoded_frames_are_the_sampled_indices(shards, sampling_mode, request):
    data_dir = request.getfixturevalue(shards)
    table = load_shard_dir(data_dir).table
    loader = PretrainLoader(data_dir, 3, device="cpu", seed=11, sampling=sampling_mode,
                            **{**TINY, "sampling_rate": 4})
    for epoch in range(2):
        for batch in loader:
            got = frame_numbers(pixels(batch["video"]))  # (B, T)
            for b, index in enumerate(batch["index"].tolist()):
                rng = sampling.sample_rng(11, epoch, index)
                n = int(table.num_frames[index])
                if sampling_mode == "dense":
                    want = sampling.dense_indices(n, 8, 4, rng)
                else:
                    want = sampling.segment_indices(n, 8, rng)
                assert got[b].tolist() == want.tolist(), (table.keys[index], epoch)


def collect(loader, epochs=1):
    out = []
    for _ in range(epochs):
        out += [{k: v.clone() if torch.is_tensor(v) else v for k, v in b.items()} for b in loader]
    return out


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x["key"] == y["key"]
        for name in ("video", "teacher_video", "mask", "label", "index", "valid"):
            assert torch.equal(x[name], y[name]), name


def test_same_seed_gives_the_same_batches_bit_for_bit(synth_shards):
    kw = {**TINY, "teacher_input_size": 48}
    a = collect(PretrainLoader(synth_shards, 8, device="cpu", seed=5, **kw))
    b = collect(PretrainLoader(synth_shards, 8, device="cpu", seed=5, **{**kw, "reader_workers": 2}))
    assert_same_batches(a, b)  # in-process and parallel readers alike
    c = next(iter(PretrainLoader(synth_shards, 8, device="cpu", seed=6, **kw)))
    assert c["key"] != a[0]["key"]


def test_two_ranks_see_every_sample_once_per_epoch(synth_shards):
    seen = []
    for rank in range(2):
        loader = PretrainLoader(synth_shards, 5, device="cpu", num_shards=2, shard_id=rank,
                                drop_last=False, **TINY)
        assert len(loader) == 5  # ceil(48 / 10)
        for batch in loader:
            assert batch["video"].shape[0] == 5
            seen += batch["index"][batch["valid"]].tolist()
    assert sorted(seen) == list(range(48))


def test_resume_mid_epoch_reproduces_the_remaining_batches(synth_shards):
    kw = dict(device="cpu", seed=2, **TINY)
    reference = collect(PretrainLoader(synth_shards, 8, **kw), epochs=2)
    first = PretrainLoader(synth_shards, 8, **kw)
    it = iter(first)
    next(it), next(it)
    state = first.state_dict()
    assert (state["epoch"], state["step"]) == (0, 2)
    resumed = PretrainLoader(synth_shards, 8, **kw)
    resumed.load_state_dict(state)
    assert_same_batches(reference[2:], collect(resumed, epochs=2))
    with pytest.raises(ValueError, match="seed"):
        PretrainLoader(synth_shards, 8, **{**kw, "seed": 3}).load_state_dict(state)


def test_next_epoch_continues_the_same_pipeline(synth_shards):
    loader = PretrainLoader(synth_shards, 16, device="cpu", **TINY)
    list(loader)
    pipe = loader._pipe
    assert (loader.epoch, loader.step) == (1, 0)
    list(loader)  # epoch 1 streams on from the pipeline's prefetch: no rebuild
    assert loader._pipe is pipe and loader.epoch == 2


def test_h264_shards_decode_through_the_pyav_fallback(h264_shards):
    loader = PretrainLoader(h264_shards, 4, device="cpu", **{**TINY, "reader_workers": 2})
    assert loader.decoder == "pyav"
    batch = next(iter(loader))
    assert batch["video"].shape == (4, 3, 8, 32, 32)
    with pytest.raises(ValueError, match=r"\['h264'\] cannot be decoded by DALI on cpu"):
        PretrainLoader(h264_shards, 4, device="cpu", decoder="dali", **TINY)


def test_impossible_sizes_fail_before_decoding(synth_shards):
    with pytest.raises(ValueError, match="not divisible by tubelet_size"):
        PretrainLoader(synth_shards, 4, device="cpu", **{**TINY, "num_frames": 7})
    with pytest.raises(ValueError, match="not divisible by patch_size"):
        PretrainLoader(synth_shards, 4, device="cpu", **{**TINY, "input_size": 40})
    with pytest.raises(ValueError, match="no full batch"):
        PretrainLoader(synth_shards, 64, device="cpu", **TINY)
    with pytest.raises(ValueError, match="larger than the frames"):
        EvalLoader(synth_shards, 3, device="cpu", input_size=64, short_side_size=48)
