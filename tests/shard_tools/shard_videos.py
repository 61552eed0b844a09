"""Small real video files made with PyAV for the shard_tools tests, good and broken."""

from __future__ import annotations

import os
from pathlib import Path

import av
import numpy as np


def write_video(path: Path, encoder: str, num_frames: int, width: int, height: int, *, fps: int = 12,
                audio: bool = False, gop: int = 8, pix_fmt: str | None = None) -> Path:
    """Encode a moving-bar clip; ``encoder`` is an FFmpeg encoder name (libx264, libvpx-vp9, ...),
    ``pix_fmt`` its pixel format (default: 8-bit 4:2:0)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(encoder, rate=fps)
        stream.width, stream.height = width, height
        stream.pix_fmt = pix_fmt or ("yuvj420p" if encoder == "mjpeg" else "yuv420p")
        stream.codec_context.gop_size = gop
        if encoder.startswith("libvpx"):
            stream.options = {"deadline": "realtime", "cpu-used": "8"}
        if encoder == "libx265":
            # no lookahead: the libx265 PyAV ships corrupts the heap at some small widths with it
            stream.options = {"x265-params": "log-level=error:bframes=0:rc-lookahead=0"}
        astream = container.add_stream("aac", rate=16000) if audio else None
        for i in range(num_frames):
            rgb = np.full((height, width, 3), 40, np.uint8)
            rgb[:, (3 * i) % width] = (250, 200, 30)
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format=stream.pix_fmt)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
        if astream is not None:
            _write_tone(container, astream, seconds=num_frames / fps)
    return path


def _write_tone(container, astream, seconds: float) -> None:
    rate, size = 16000, 1024  # whole AAC frames only
    chunks = max(1, round(rate * seconds / size))
    t = np.arange(chunks * size, dtype=np.float32) / rate
    samples = np.ascontiguousarray((np.sin(2 * np.pi * 440 * t) * 0.3).reshape(chunks, 1, size))
    for i in range(chunks):
        frame = av.AudioFrame.from_ndarray(samples[i].copy(), format="fltp", layout="mono")
        frame.sample_rate, frame.pts = rate, i * size
        for packet in astream.encode(frame):
            container.mux(packet)
    for packet in astream.encode():
        container.mux(packet)


def write_audio_only(path: Path) -> Path:
    with av.open(str(path), "w") as container:
        _write_tone(container, container.add_stream("aac", rate=16000), seconds=0.5)
    return path


def count_frames(path_or_file) -> int:
    """Frames by decoding, written independently of shard_tools.probe."""
    with av.open(path_or_file) as container:
        return sum(1 for _ in container.decode(video=0))


def truncate(path: Path, fraction: float) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


# name -> (encoder, frames, width, height, audio): the good files of the mixed folder
GOOD_VIDEOS = {
    "h264_a.mp4": ("libx264", 24, 64, 48, False),
    "vp9_odd.webm": ("libvpx-vp9", 10, 65, 37, False),
    "mjpeg_odd.avi": ("mjpeg", 5, 33, 21, False),
    "hevc.mkv": ("libx265", 12, 48, 32, False),
    "vp8.webm": ("libvpx", 9, 32, 32, False),
    "one_frame.mp4": ("libx264", 1, 32, 24, False),
    "with_audio.mp4": ("libx264", 12, 48, 32, True),
    "clip.with.dots.mp4": ("libx264", 6, 32, 24, False),
    "clip_with_dots.webm": ("libvpx-vp9", 7, 32, 24, False),
    "sub dir/spaced name.mp4": ("libx264", 8, 32, 24, False),
}
# name -> reason category the sharder must give
BROKEN_VIDEOS = {
    "empty.mp4": "empty file",
    "garbage.mp4": "undecodable",
    "truncated.webm": "truncated",
    "truncated.mp4": "undecodable",  # the moov atom is at the end: the cut file cannot be opened
    "audio_only.m4a": "no video stream",
}


def make_mixed_videos(root: Path) -> Path:
    for name, (encoder, n, w, h, audio) in GOOD_VIDEOS.items():
        write_video(root / name, encoder, n, w, h, audio=audio)
    (root / "empty.mp4").write_bytes(b"")
    (root / "garbage.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 4000, np.uint8).tobytes())
    truncate(write_video(root / "truncated.webm", "libvpx-vp9", 48, 64, 48), 0.5)
    truncate(write_video(root / "truncated.mp4", "libx264", 24, 64, 48), 0.5)
    write_audio_only(root / "audio_only.m4a")
    return root


def label_of(name: str) -> int:
    return list(GOOD_VIDEOS).index(name) % 3


def run_env() -> dict:
    """Environment for ``python -m shard_tools`` subprocesses that import this checkout."""
    root = str(Path(__file__).resolve().parents[2])
    return {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
