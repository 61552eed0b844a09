import pytest
from shard_videos import BROKEN_VIDEOS, GOOD_VIDEOS, count_frames

from shard_tools.probe import probe_video
from shard_tools.rejections import category_of

CODEC_OF = {"libx264": "h264", "libvpx-vp9": "vp9", "mjpeg": "mjpeg", "libx265": "hevc", "libvpx": "vp8"}


@pytest.mark.parametrize("name", sorted(GOOD_VIDEOS))
def test_probe_counts_frames_and_reads_size_and_codec(mixed_videos, name):
    encoder, frames, width, height, _ = GOOD_VIDEOS[name]
    result = probe_video(mixed_videos / name)
    assert result.ok, result.reason
    assert result.info.num_frames == frames == count_frames(str(mixed_videos / name))
    assert (result.info.width, result.info.height) == (width, height)
    assert result.info.codec == CODEC_OF[encoder]
    assert result.info.fps == pytest.approx(12.0)


@pytest.mark.parametrize("name", sorted(BROKEN_VIDEOS))
def test_probe_classifies_broken_files(mixed_videos, name):
    result = probe_video(mixed_videos / name)
    assert not result.ok
    assert category_of(result.reason) == BROKEN_VIDEOS[name], result.reason


def test_probe_missing_file(tmp_path):
    assert probe_video(tmp_path / "nothing.mp4").reason == "missing file"
