"""The failure limit holds when no batch succeeds: on a shard set whose every sample has rotted,
probing stops within seconds at the limit (naming max_failure_fraction and the bad keys), never
claiming that the samples decode; a decoder error that no sample causes is told apart from a bad
sample and names the stream."""

from __future__ import annotations

import sys

import pytest
from conftest import TINY, corrupt_copy

from dali_pipelines import DecodeFailureError, PretrainLoader, load_shard_dir
from dali_pipelines.failures import (NOT_A_SAMPLE, SAME_MESSAGE_RUN, DecoderUnsupportedError,
                                     FailureLog, describe_stream, not_a_sample)


@pytest.fixture(scope="module")
def rotted(synth_shards, tmp_path_factory):
    """synth_shards with the video bytes of every sample overwritten (after 64 bytes)."""
    keys = list(load_shard_dir(synth_shards).table.keys)
    return corrupt_copy(synth_shards, tmp_path_factory.mktemp("rotted") / "all", keys)


def _stop(data_dir, fraction) -> tuple[str, PretrainLoader]:
    loader = PretrainLoader(data_dir, 8, device="cpu", max_failure_fraction=fraction, **TINY)
    with pytest.raises(DecodeFailureError) as err:
        next(iter(loader))
    message = str(err.value)
    assert "decodes on its own" not in message
    assert f"max_failure_fraction={fraction}" in message
    assert all(key.split(":")[1] in message for key in loader.failed_keys)
    return message, loader


def test_every_sample_rotted_stops_at_the_epochs_limit_while_probing(rotted):
    # 48 samples, 1 %: the limit is 0.48 samples, so the first probed batch is past it
    message, loader = _stop(rotted, 0.01)
    assert "while probing a failed batch" in message and len(loader.bad) == 8  # one batch
    assert "8 of its 48 samples failed" in message


def test_every_sample_rotted_stops_after_a_run_of_the_same_message(rotted):
    # 50 %: 24 bad samples would be the epoch's limit; the run of one message stops it first
    message, loader = _stop(rotted, 0.5)
    assert f"{SAME_MESSAGE_RUN} samples in a row failed to decode with the same message" in message
    assert len(loader.bad) == SAME_MESSAGE_RUN


def test_one_bad_sample_below_the_limit_is_still_replaced(corrupt_vp9):
    """The probe's limits do not stop a rate below max_failure_fraction."""
    data_dir, key = corrupt_vp9
    loader = PretrainLoader(data_dir, 8, device="cpu", max_failure_fraction=0.05, **TINY)
    assert len(list(loader)) == 6 and [k.split(":")[1] for k in loader.failed_keys] == [key]


# DALI 2.4's own texts (dali/operators/video/frames_decoder_gpu.cc) for errors no sample causes
NVDEC_TEXTS = (
    "Codec configuration not supported on this GPU. Codec: H.264, chroma format: 4:2:2, bit "
    "depth: 10",
    "Video is too small in at least one dimension. Provided: 64x48 vs supported:128x128",
    "Video is too large in at least one dimension. Provided: 9000x9000 vs supported:8192x8192",
    "libnvcuvid.so.1: cannot open shared object file: No such file or directory",
)


def test_decoder_errors_no_sample_causes_are_told_apart_from_bad_samples():
    assert len(NVDEC_TEXTS) == len(NOT_A_SAMPLE)
    assert all(not_a_sample(text) for text in NVDEC_TEXTS)
    for bad_sample in ("Failed to open video file", "Could not find a valid video stream",
                       "Invalid data found when processing input"):
        assert not not_a_sample(bad_sample)


def test_the_stream_is_described_by_codec_chroma_bit_depth_and_size(synth_shards):
    table = load_shard_dir(synth_shards).table
    with open(table.shard_paths[table.shard[0]], "rb") as f:
        f.seek(int(table.offset[0]))
        data = f.read(int(table.size[0]))
    text = describe_stream(data, table, 0)
    assert text == "codec vp9, pixel format yuv420p (chroma 4:2:0, 8-bit), 64x48", text


def test_without_pyav_the_stream_is_described_from_the_shard_dirs_codecs(synth_shards, monkeypatch):
    """The GPU check machine has no PyAV: the message takes the codecs the shard dir holds (also
    for an s3:// one: nothing is read again) and the sample table's size."""
    shards = load_shard_dir(synth_shards)
    monkeypatch.setitem(sys.modules, "av", None)  # `import av` raises ImportError
    text = describe_stream(b"", shards.table, 0, shards.codecs)
    assert text.startswith("codec vp9 (shard manifest), 64x48 (sample table)"), text


@pytest.mark.cuda
def test_a_stream_below_nvdecs_minimum_stops_at_once_naming_stream_and_sample(request):
    """synth_shards are 64x48 VP9: below NVDEC's 128x128 minimum for VP9, every sample fails
    alike on the GPU, so the first probe stops the run (no sample is marked bad). The clips are
    below the minimum on purpose, so they are taken inside the test, not as an argument:
    test_gpu_clips.py holds the clips the cuda tests mean to decode to NVDEC's minimum."""
    synth_shards = request.getfixturevalue("synth_shards")
    loader = PretrainLoader(synth_shards, 8, device="gpu", **TINY)
    with pytest.raises(DecoderUnsupportedError, match=r"too small.*64x48.*sample shard-0000"):
        next(iter(loader))
    assert loader.bad == {}


def test_the_share_rule_waits_for_enough_samples_then_holds_the_fraction(synth_shards):
    """With an epoch too large for its own limit to bite soon (a million samples a rank), the
    share of failed samples among those seen stops probing once 1 / fraction * FAIR_SHARE were
    seen, and not for a share at or under the fraction."""
    table = load_shard_dir(synth_shards).table
    log = FailureLog(table, lambda item: (item, 0), 0.01, samples_per_rank=1e6)
    log.bad = {i: "x" for i in range(12)}
    log.num_seen = 999  # 1.2 % of the samples seen, but fewer than FAIR_SHARE / 0.01 = 1000
    assert log.probe_limit() is None
    log.num_seen = 1000
    assert "12 of the 1000 samples seen failed" in log.probe_limit()
    log.num_seen = 1200  # 1.0 %: not past the fraction
    assert log.probe_limit() is None
