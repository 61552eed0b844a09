"""The GPU loader refuses, before the first step, a folder NVDEC cannot read every sample of
(the decision is tested here on CPU: dali_pipelines.manifest.check_gpu_decodable)."""

from __future__ import annotations

import json

import pytest

from dali_pipelines.manifest import ShardDirError, check_gpu_decodable, load_shard_dir
from shard_tools.build import BuildOptions, build_shards
from shard_tools.sources import SourceRecord, SourceSet
from shard_tools.synth import SynthClip
from video_caps.decoders import gpu_target


def _folder(tmp_path, codec: str, width: int, height: int, target: str = "pyav"):
    clips = tmp_path / "clips"
    clips.mkdir(parents=True)
    records = [SourceRecord(clips / f"c{i}.{'webm' if codec == 'vp9' else 'mp4'}", i % 2, f"c{i % 2}", f"c{i}",
                            prepare=SynthClip(i, i % 2, "square", "left", "shape", 0, "train", 4, width, height,
                                              12.0, codec, 4))
               for i in range(3)]
    sources = SourceSet("list", ["c0", "c1"], records)
    build_shards(sources, tmp_path / "out", BuildOptions(workers=1, target=target), progress=False)
    return load_shard_dir(tmp_path / "out")


def test_a_folder_nvdec_takes_passes(tmp_path):
    check_gpu_decodable(_folder(tmp_path, "vp9", 128, 128), "gpu-hopper")


def test_a_folder_with_streams_below_nvdec_minimum_is_refused_with_the_fix(tmp_path):
    shards = _folder(tmp_path, "vp9", 96, 96)
    refused = r"3 samples are of stream kinds .*3 samples: VP9 4:2:0 8-bit .*from 128x128"
    with pytest.raises(ShardDirError, match=refused) as err:
        check_gpu_decodable(shards, "gpu-hopper")
    assert f"mvd-shard verify {shards.path} --target gpu-hopper" in str(err.value)
    # the same folder packed for the GPU target is taken
    fixed = _folder(tmp_path / "fixed", "vp9", 96, 96, target="gpu-hopper")
    check_gpu_decodable(fixed, "gpu-hopper")


def test_a_folder_made_before_stream_facts_is_judged_by_its_codecs(tmp_path, caplog):
    shards = _folder(tmp_path, "h264", 64, 48)
    manifest = {k: v for k, v in shards.manifest.items() if k != "streams"}
    (shards.path / "manifest.json").write_text(json.dumps(manifest))
    old = load_shard_dir(shards.path)
    check_gpu_decodable(old, "gpu-hopper")  # H.264 is an NVDEC codec: passes, with the caveat
    assert "predates recorded stream facts" in caplog.text
    manifest["codecs"] = {"av1": 3}
    (shards.path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ShardDirError, match=r"3 samples in codecs \['av1'\]"):
        check_gpu_decodable(load_shard_dir(shards.path), "gpu-hopper")


def test_gpu_families_by_compute_capability():
    assert [gpu_target(c) for c in ((8, 0), (8, 6), (8, 9), (9, 0), (10, 0), (12, 0), (7, 5))] == [
        "gpu-ampere", "gpu-ampere-ga10x", "gpu-ada", "gpu-hopper", "gpu-blackwell", "gpu-blackwell",
        "gpu-ampere-hopper"]


@pytest.mark.cuda
def test_the_gpu_loader_refuses_a_folder_nvdec_cannot_read_before_decoding(tmp_path):
    """96x96 VP9 is below NVDEC's 128x128 VP9 minimum: refused at construction, nothing decoded."""
    from dali_pipelines import PretrainLoader  # DALI: imported only where the GPU test runs

    shards = _folder(tmp_path, "vp9", 96, 96)
    with pytest.raises(ShardDirError, match=r"GPU decoder \(NVDEC on .*VP9 from 128x128.*mvd-shard verify"):
        PretrainLoader(shards.path, 2, device="gpu", num_frames=4, sampling_rate=1, input_size=32)
