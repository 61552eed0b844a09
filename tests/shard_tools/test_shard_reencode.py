import io
import json
import tarfile

import av
import pytest
from shard_videos import count_frames, write_video

from shard_tools.build import BuildOptions, build_shards
from shard_tools.reencode import ReencodeOptions, scaled_size
from shard_tools.sources import list_sources


def test_scaled_size_keeps_aspect_and_even_sizes():
    assert scaled_size(64, 48, 32) == (42, 32)
    assert scaled_size(37, 65, 32) == (32, 56)
    assert scaled_size(65, 37, None) == (64, 36)


@pytest.fixture(scope="module")
def two_videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("reencode_src")
    write_video(root / "wide.mp4", "libx264", 20, 64, 48)
    write_video(root / "odd.webm", "libvpx-vp9", 11, 65, 37)
    (root / "list.txt").write_text("wide.mp4 0\nodd.webm 1\n")
    return root


def key_frame_positions(data: bytes) -> list[int]:
    with av.open(io.BytesIO(data)) as container:
        packets = [p for p in container.demux(video=0) if p.size]
        packets.sort(key=lambda p: p.pts)
        return [i for i, p in enumerate(packets) if p.is_keyframe]


@pytest.mark.parametrize("codec, ext", [("h264", "mp4"), ("vp9", "webm"), ("mjpeg", "avi"), ("hevc", "mp4")])
def test_reencode_gives_the_requested_codec_short_side_and_gop(two_videos, tmp_path, codec, ext):
    sources = list_sources(two_videos, two_videos / "list.txt")
    options = BuildOptions(workers=1, reencode=ReencodeOptions(codec=codec, short_side=32, gop=4))
    manifest = build_shards(sources, tmp_path, options, progress=False)
    assert manifest["codecs"] == {codec: 2} and not manifest["rejected"]
    assert manifest["options"]["reencode"] == {"codec": codec, "short_side": 32, "gop": 4}
    expected = {"wide.mp4": (20, 42, 32), "odd.webm": (11, 56, 32)}
    with tarfile.open(tmp_path / "shard-000000.tar") as tf:
        names = tf.getnames()
        for source, (frames, width, height) in expected.items():
            key = source.split(".")[0]
            assert f"{key}.{ext}" in names
            info = json.loads(tf.extractfile(f"{key}.json").read())
            video = tf.extractfile(f"{key}.{ext}").read()
            assert (info["codec"], info["width"], info["height"], info["source"]) == (codec, width, height, source)
            assert info["num_frames"] == frames == count_frames(io.BytesIO(video))
            keys = key_frame_positions(video)
            assert keys[0] == 0 and all(b - a <= 4 for a, b in zip(keys, keys[1:] + [frames], strict=True))
