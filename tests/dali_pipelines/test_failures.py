"""A sample that fails to decode at training time is replaced, counted and logged; past the
configured fraction the loader stops naming shards and keys."""

from __future__ import annotations

import logging

import pytest
from conftest import TINY

from dali_pipelines import DecodeFailureError, PretrainLoader


@pytest.mark.parametrize("corrupt,decoder", [("corrupt_vp9", "dali"), ("corrupt_h264", "pyav")])
def test_corrupted_sample_is_replaced_counted_and_logged(corrupt, decoder, request, caplog):
    data_dir, key = request.getfixturevalue(corrupt)
    loader = PretrainLoader(data_dir, 8, device="cpu", max_failure_fraction=0.05, **TINY)
    assert loader.decoder == decoder
    with caplog.at_level(logging.WARNING, logger="dali_pipelines"):
        batches = list(loader)
    assert len(batches) == 6 and all(b["video"].shape[0] == 8 for b in batches)
    keys = [k for b in batches for k in b["key"]]
    assert key not in keys
    assert len(set(keys)) == 47  # the bad one's place went to another sample of its batch
    assert loader.num_failures == 1
    assert [k.split(":")[1] for k in loader.failed_keys] == [key]
    assert key in caplog.text
    # the next epoch skips it from the start, and the count goes on
    list(loader)
    assert loader.num_failures == 2 and len(loader.bad) == 1


@pytest.mark.parametrize("corrupt", ["corrupt_vp9", "corrupt_h264"])
def test_failures_past_the_fraction_stop_with_shard_and_key(corrupt, request):
    data_dir, key = request.getfixturevalue(corrupt)
    loader = PretrainLoader(data_dir, 8, device="cpu", max_failure_fraction=0.0, **TINY)
    with pytest.raises(DecodeFailureError, match=rf"shard-00000\d\.tar.*{key}"):
        list(loader)
