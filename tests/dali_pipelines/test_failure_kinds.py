"""Only the video decoder failing on a sample is a bad sample: any other exception out of the
pipeline (the reader's I/O, an out-of-memory, a CUDA error) propagates at once, unprobed."""

from __future__ import annotations

import pytest
from conftest import TINY

from dali_pipelines import DecodeFailureError, PretrainLoader
from dali_pipelines import reader
from dali_pipelines.failures import FailureLog, is_decode_failure

DECODER = ("Critical error in pipeline:\nError in CPU operator `nvidia.dali.fn.decoders.video`,\n"
           "which was used in the pipeline definition with the following traceback:\n...\n"
           "encountered:\n\n{}\n")


def test_only_the_decoders_own_failures_are_bad_samples():
    assert is_decode_failure(RuntimeError(DECODER.format("Failed to create video decoder")))
    assert is_decode_failure(RuntimeError(
        DECODER.format("x").replace("CPU operator", "MIXED operator")))
    assert not is_decode_failure(RuntimeError(DECODER.format("CUDA error: out of memory")))
    assert not is_decode_failure(RuntimeError(DECODER.format("CUDA_ERROR_ILLEGAL_ADDRESS")))
    assert not is_decode_failure(RuntimeError(
        "Error in CPU operator `nvidia.dali.fn.external_source`: OSError: disk gone"))
    assert not is_decode_failure(MemoryError())


def test_a_reader_error_propagates_without_probing(synth_shards, monkeypatch):
    def gone(self, sample):
        raise OSError("the shard file went away")

    def no_probe(*args, **kwargs):
        raise AssertionError("a non-decoder error must not be probed")

    monkeypatch.setattr(reader.ClipReader, "video_bytes", gone)
    monkeypatch.setattr(FailureLog, "probe", no_probe)
    loader = PretrainLoader(synth_shards, 4, device="cpu", **TINY)
    with pytest.raises(Exception, match="the shard file went away") as err:
        next(iter(loader))
    assert not isinstance(err.value, DecodeFailureError)
    assert loader.bad == {} and loader.num_failures == 0


def test_past_the_limit_the_single_process_stop_names_the_step(corrupt_vp9):
    data_dir, key = corrupt_vp9
    loader = PretrainLoader(data_dir, 8, device="cpu", max_failure_fraction=0.0, **TINY)
    with pytest.raises(DecodeFailureError, match=rf"at epoch 0 step \d+; this rank: 1 of its 48 "
                                                 rf"samples failed.*{key}"):
        list(loader)
