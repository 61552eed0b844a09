"""Writing video files with PyAV: the codecs shard_tools can encode and their containers.

Encoders run single-threaded: parallelism comes from the worker pool, and a single-threaded
encoder gives the same bytes on every run, which resume relies on.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np


@dataclass(frozen=True)
class Codec:
    name: str  # the name users pass and PyAV reports when decoding
    encoder: str  # the FFmpeg encoder
    ext: str  # container extension
    pix_fmt: str


CODECS: dict[str, Codec] = {
    "vp9": Codec("vp9", "libvpx-vp9", "webm", "yuv420p"),
    "vp8": Codec("vp8", "libvpx", "webm", "yuv420p"),
    "h264": Codec("h264", "libx264", "mp4", "yuv420p"),
    "hevc": Codec("hevc", "libx265", "mp4", "yuv420p"),
    "mjpeg": Codec("mjpeg", "mjpeg", "avi", "yuvj420p"),
}


def codec_by_name(name: str) -> Codec:
    try:
        return CODECS[name]
    except KeyError:
        raise ValueError(f"unknown codec {name!r}; choose one of {sorted(CODECS)}") from None


def _encoder_options(codec: Codec, gop: int, quality: int | None) -> dict[str, str]:
    if codec.name in ("vp9", "vp8"):
        # realtime + no alt-ref: fast, and every packet is one shown frame
        opts = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0", "auto-alt-ref": "0",
                "g": str(gop), "crf": str(quality or 32), "b:v": "0" if codec.name == "vp9" else "1M"}
        return opts
    if codec.name == "h264":
        return {"preset": "veryfast", "crf": str(quality or 23), "g": str(gop), "threads": "1"}
    if codec.name == "hevc":
        return {"preset": "veryfast", "crf": str(quality or 28),
                "x265-params": f"keyint={gop}:min-keyint=1:log-level=error:pools=none:frame-threads=1"}
    return {"q:v": str(quality or 3)}  # mjpeg: every frame is a key frame


class VideoWriter:
    """Encode RGB frames into a video file: ``with VideoWriter(...) as w: w.write(rgb)``."""

    def __init__(self, path: Path, codec: str, width: int, height: int, fps: float | Fraction, *,
                 gop: int = 16, quality: int | None = None):
        self.codec = codec_by_name(codec)
        if self.codec.name != "mjpeg" and (width % 2 or height % 2):
            raise ValueError(f"{codec} needs an even width and height, got {width}x{height}")
        self.width, self.height = width, height
        self.container = av.open(str(path), "w")
        rate = Fraction(fps).limit_denominator(1001)
        self.stream = self.container.add_stream(self.codec.encoder, rate=rate)
        self.stream.width, self.stream.height = width, height
        self.stream.pix_fmt = self.codec.pix_fmt
        self.stream.codec_context.gop_size = gop
        self.stream.codec_context.thread_count = 1
        self.stream.options = _encoder_options(self.codec, gop, quality)

    def write(self, frame: np.ndarray | av.VideoFrame) -> None:
        """Encode one frame: an (H, W, 3) uint8 RGB array or a PyAV frame (resized if needed)."""
        if isinstance(frame, np.ndarray):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        frame = frame.reformat(width=self.width, height=self.height, format=self.codec.pix_fmt)
        frame.pts = None
        for packet in self.stream.encode(frame):
            self.container.mux(packet)

    def close(self) -> None:
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.container.close()
