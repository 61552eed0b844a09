"""normalize=False: the loaders yield uint8 clips that `Normalize` turns into exactly the float
batches of the default path, and the fine-tuning loader hands over the erase boxes instead of
erasing, so the step erases the same pixels after normalising."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TINY

from dali_pipelines import EvalLoader, FinetuneLoader, PretrainLoader
from dali_pipelines.normalize import Normalize, erase_

SMALL = dict(num_frames=8, sampling_rate=2, input_size=32, reader_workers=0)
NORMALIZE = Normalize("cpu")


def first(loader) -> dict:
    batch = next(iter(loader))
    loader.close()
    return batch


LOADERS = {  # (class, batch size, keywords)
    "pretrain-teacher48": (PretrainLoader, 4, {**TINY, "teacher_input_size": 48, "seed": 3}),
    "finetune-2views": (FinetuneLoader, 3, {**SMALL, "repeated_aug": 2, "erase_prob": 0.0, "seed": 3}),
    "eval-3crops": (EvalLoader, 6, {**SMALL, "num_clips": 2, "num_crops": 3}),
}


@pytest.mark.parametrize("kind", LOADERS)
def test_uint8_clips_normalise_to_the_float_batches(kind, synth_shards):
    cls, batch_size, kw = LOADERS[kind]
    floats = first(cls(synth_shards, batch_size, device="cpu", **kw))
    raw = first(cls(synth_shards, batch_size, device="cpu", normalize=False, **kw))
    assert raw["key"] == floats["key"]
    for name in ("video", "teacher_video"):
        if name not in floats:
            continue
        assert raw[name].dtype == torch.uint8 and raw[name].shape == floats[name].shape
        assert raw[name].is_contiguous()
        # DALI's normalisation and the fused one differ by float rounding only
        assert (NORMALIZE(raw[name]) - floats[name]).abs().max() < 1e-5
    for name in ("label", "index", "valid", "clip", "crop"):
        if name in floats:
            assert torch.equal(raw[name], floats[name]), name


def test_uint8_teacher_is_the_student_tensor_when_sizes_match(synth_shards):
    batch = first(PretrainLoader(synth_shards, 2, device="cpu", normalize=False, **TINY))
    assert batch["teacher_video"] is batch["video"] and batch["video"].dtype == torch.uint8


def test_uint8_finetune_hands_over_the_erase_boxes_the_float_path_erases(synth_shards):
    kw = dict(device="cpu", seed=4, repeated_aug=2, erase_prob=1.0, **SMALL)
    erased = first(FinetuneLoader(synth_shards, 4, **kw))
    raw = first(FinetuneLoader(synth_shards, 4, normalize=False, **kw))
    boxes = raw["erase_boxes"]
    assert isinstance(boxes, np.ndarray) and boxes.shape == (8, 8, 4)  # (B * V, T, 4) on the host
    want = torch.zeros(8, 8, 32, 32, dtype=torch.bool)  # (B * V, T, H, W)
    for v, t in zip(*np.nonzero(boxes[:, :, 2])):
        top, left, h, w = boxes[v, t]
        want[v, t, top : top + h, left : left + w] = True
    assert want.any()
    video = NORMALIZE(raw["video"])
    # the float path erased exactly the boxes; the uint8 path erased nothing
    assert torch.equal((video - erased["video"]).abs().amax(1) > 1e-5, want)
    erase_(video, boxes, torch.Generator().manual_seed(0))
    assert torch.equal((video - erased["video"]).abs().amax(1) > 1e-5, want)  # other noise
    assert torch.equal((video != NORMALIZE(raw["video"])).any(1), want)  # exactly the boxes
    assert "erase_boxes" not in erased


def test_normalize_takes_uint8_only():
    with pytest.raises(TypeError, match="uint8"):
        NORMALIZE(torch.zeros(1, 3, 1, 1, 1))
