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


def _encoder_options(codec: Codec, gop: int, quality: int | None, width: int, height: int) -> dict[str, str]:
    if codec.name in ("vp9", "vp8"):
        # no lag, no alt-ref: every packet is one shown frame
        opts = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0", "auto-alt-ref": "0",
                "g": str(gop), "crf": str(quality or 32), "b:v": "0" if codec.name == "vp9" else "1M"}
        return opts
    if codec.name == "h264":
        return {"preset": "veryfast", "crf": str(quality or 23), "g": str(gop), "threads": "1"}
    if codec.name == "hevc":
        params = f"keyint={gop}:min-keyint=1:log-level=error:pools=none:frame-threads=1"
        if min(width, height) < 64:
            # the libx265 that PyAV ships corrupts the heap on some small widths (40, 48) in its
            # lookahead; tiny frames go without lookahead and B-frames
            params += ":bframes=0:rc-lookahead=0"
        return {"preset": "veryfast", "crf": str(quality or 28), "x265-params": params}
    return {"q:v": str(quality or 3)}  # mjpeg: every frame is a key frame


class VideoWriter:
    """Encode RGB frames into a video file: ``with VideoWriter(...) as w: w.write(rgb)``."""

    def __init__(self, path: Path, codec: str, width: int, height: int, fps: float | Fraction, *,
                 gop: int = 16, quality: int | None = None):
        self.codec = codec_by_name(codec)
        if self.codec.name != "mjpeg" and (width % 2 or height % 2):
            raise ValueError(f"{codec} needs an even width and height, got {width}x{height}")
        self.width, self.height = width, height
        # bitexact: no random container UIDs or version strings, so the same frames give the same bytes
        self.container = av.open(str(path), "w", options={"fflags": "+bitexact"})
        rate = Fraction(fps).limit_denominator(1001)
        self.stream = self.container.add_stream(self.codec.encoder, rate=rate)
        self.time_base, self.frames = 1 / rate, 0
        self.stream.width, self.stream.height = width, height
        self.stream.pix_fmt = self.codec.pix_fmt
        self.stream.codec_context.gop_size = gop
        self.stream.codec_context.thread_count = 1
        self.stream.options = _encoder_options(self.codec, gop, quality, width, height)

    def write(self, frame: np.ndarray | av.VideoFrame) -> None:
        """Encode one frame: an (H, W, 3) uint8 RGB array or a PyAV frame (resized if needed)."""
        if isinstance(frame, np.ndarray):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        if self.codec.name == "mjpeg":  # the MJPEG encoder takes full-range (JPEG) YUV only
            frame = frame.reformat(width=self.width, height=self.height, format=self.codec.pix_fmt,
                                   src_color_range=frame.color_range or None, dst_color_range="JPEG")
            frame.color_range = 2  # AVCOL_RANGE_JPEG
        else:
            frame = frame.reformat(width=self.width, height=self.height, format=self.codec.pix_fmt)
        frame.pts, frame.time_base = self.frames, self.time_base  # constant frame rate
        self.frames += 1
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
