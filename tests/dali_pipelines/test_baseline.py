"""The PyTorch baseline loader yields the DALI loader's batches: same samples, same crops, the
same pixels up to resampling (PIL bilinear against DALI's antialiased linear resize)."""

from __future__ import annotations

import torch
from conftest import TINY

from dali_pipelines import PretrainLoader
from dali_pipelines.baseline import BaselinePretrainLoader


def test_baseline_batches_match_the_dali_loader(h264_shards):
    kw = {**TINY, "teacher_input_size": 48}
    kw.pop("reader_workers")
    dali = list(PretrainLoader(h264_shards, 8, device="cpu", seed=7, reader_workers=0, **kw))
    base = list(BaselinePretrainLoader(h264_shards, 8, seed=7, num_workers=1, **kw))
    assert len(dali) == len(base) == 6
    for d, b in zip(dali, base):
        assert d["key"] == b["key"]
        assert torch.equal(d["index"], b["index"]) and torch.equal(d["label"], b["label"])
        for name in ("video", "teacher_video", "mask"):
            assert d[name].shape == b[name].shape and d[name].dtype == b[name].dtype
        assert (d["video"] - b["video"]).abs().mean() < 0.01
        assert (d["teacher_video"] - b["teacher_video"]).abs().mean() < 0.01
        assert (b["mask"].sum(1) == d["mask"].sum(1)).all()
