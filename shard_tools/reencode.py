"""Re-encode a video with PyAV/FFmpeg: scale to a short side, pick codec and GOP length.

Audio is dropped (the models use video only); the frame rate is kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import av

from shard_tools.encode import VideoWriter, codec_by_name


@dataclass(frozen=True)
class ReencodeOptions:
    codec: str = "h264"
    short_side: int | None = None  # None keeps the size (rounded down to even)
    gop: int = 16

    def __post_init__(self) -> None:
        codec_by_name(self.codec)
        if self.short_side is not None and self.short_side < 2:
            raise ValueError(f"short side must be >= 2, got {self.short_side}")
        if self.gop < 1:
            raise ValueError(f"GOP length must be >= 1, got {self.gop}")

    @property
    def ext(self) -> str:
        return codec_by_name(self.codec).ext


def scaled_size(width: int, height: int, short_side: int | None) -> tuple[int, int]:
    """Size with the shorter side = ``short_side`` (aspect kept), both rounded to even numbers."""
    if short_side is not None:
        scale = short_side / min(width, height)
        width, height = round(width * scale), round(height * scale)
    return max(2, width - width % 2), max(2, height - height % 2)


def reencode_video(src: Path, dst: Path, options: ReencodeOptions, *, size: tuple[int, int] | None = None) -> None:
    """Decode ``src`` and write ``dst`` with ``options`` (at ``size`` = (width, height) when given,
    which overrides the short side); raises av.FFmpegError/ValueError on failure."""
    with av.open(str(src), "r") as inp:
        stream = inp.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or 25
        width, height = size or scaled_size(stream.codec_context.width, stream.codec_context.height,
                                            options.short_side)
        with VideoWriter(dst, options.codec, width, height, rate, gop=options.gop) as out:
            for frame in inp.decode(stream):
                out.write(frame)
