"""Fixtures of the loader tests: shards whose frames carry their own frame number, and copies of
the shared synthetic shards with one sample's video bytes destroyed.

Sizes are tiny (32 px crops, 8 frames) so the whole package runs in well under a minute on two
cores; the shared `synth_shards` / `h264_shards` (48 clips of 40 frames at 64x48, 2 shards) come
from tests/conftest.py.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from dali_pipelines.manifest import load_shard_dir

# NVDEC's smallest frames (DALI's frames_decoder_gpu.cc checks the caps per stream and refuses
# "Video is too small in at least one dimension"): VP9/AV1 128x128, HEVC 144x144, H.264 48x16.
# Every shard set a cuda-marked test decodes is at least this on each side.
GPU_MIN_SIDE = 160
COUNTER_FRAMES = (40, 13, 70, 24, 9, 33)  # frame counts of the counter videos (some < a window)
TINY = dict(num_frames=8, sampling_rate=2, input_size=32, teacher_input_size=32, reader_workers=0)


def counter_value(i: int) -> int:
    """The grey level of frame i of a counter video (frame number = (value - 16) / 3)."""
    return 16 + 3 * i


def frame_numbers(video: np.ndarray) -> np.ndarray:
    """Frame numbers of decoded counter frames (..., H, W, 3) uint8 -> (...) int."""
    grey = video.reshape(*video.shape[:-3], -1).astype(np.float64).mean(-1)
    return np.rint((grey - 16) / 3).astype(int)


def _make_counter_shards(out: Path, codec: str) -> Path:
    from shard_tools.build import BuildOptions, build_shards
    from shard_tools.encode import VideoWriter, codec_by_name
    from shard_tools.sources import SourceRecord, SourceSet

    src = out.parent / f"{out.name}-src"
    src.mkdir(parents=True)
    records = []
    for n, num_frames in enumerate(COUNTER_FRAMES):
        path = src / f"counter{n}.{codec_by_name(codec).ext}"
        with VideoWriter(path, codec, 64, 48, 12.0, gop=8, quality=4) as writer:
            for i in range(num_frames):
                writer.write(np.full((48, 64, 3), counter_value(i), np.uint8))
        records.append(SourceRecord(path, n % 2, f"class{n % 2}", path.name))
    sources = SourceSet("list", ["class0", "class1"], records)
    build_shards(sources, out, BuildOptions(shard_samples=3, workers=1), progress=False)
    return out


@pytest.fixture(scope="session")
def counter_shards(tmp_path_factory) -> Path:
    """VP9 videos of 64x48 whose frame i is flat grey `counter_value(i)`; 6 videos, 2 shards."""
    return _make_counter_shards(tmp_path_factory.mktemp("counter") / "vp9", "vp9")


@pytest.fixture(scope="session")
def counter_h264_shards(tmp_path_factory) -> Path:
    """The counter videos as H.264 (decoded through the PyAV fallback on CPU)."""
    return _make_counter_shards(tmp_path_factory.mktemp("counter") / "h264", "h264")


def corrupt_copy(src: Path, dst: Path, keys: list[str]) -> Path:
    """Copy a shard dir and overwrite the video bytes of `keys` (after their first 64 bytes)
    with zeros: the container may still open, but no frame decodes."""
    shutil.copytree(src, dst)
    table = load_shard_dir(dst).table
    for key in keys:
        i = table.keys.index(key)
        with open(table.shard_paths[table.shard[i]], "r+b") as f:
            f.seek(int(table.offset[i]) + 64)
            f.write(bytes(int(table.size[i]) - 64))
    return dst


@pytest.fixture(scope="session")
def corrupt_vp9(synth_shards, tmp_path_factory) -> tuple[Path, str]:
    """synth_shards with one sample's video destroyed; (dir, key)."""
    key = load_shard_dir(synth_shards).table.keys[5]
    return corrupt_copy(synth_shards, tmp_path_factory.mktemp("corrupt") / "vp9", [key]), key


@pytest.fixture(scope="session")
def corrupt_h264(h264_shards, tmp_path_factory) -> tuple[Path, str]:
    """h264_shards with one sample's video destroyed; (dir, key)."""
    key = load_shard_dir(h264_shards).table.keys[30]
    return corrupt_copy(h264_shards, tmp_path_factory.mktemp("corrupt") / "h264", [key]), key


@pytest.fixture(scope="session")
def ava_gpu_shards(tmp_path_factory):
    """Synthetic AVA keyframes of GPU_MIN_SIDE x GPU_MIN_SIDE VP9 clips (NVDEC decodes them),
    with proposals: 2 movies x 6 s."""
    from shard_tools.synth_ava import make_synth_ava_shards

    return make_synth_ava_shards(tmp_path_factory.mktemp("ava") / "gpu", split="train", movies=2,
                                 seconds=6, width=GPU_MIN_SIDE, height=GPU_MIN_SIDE, workers=1)
