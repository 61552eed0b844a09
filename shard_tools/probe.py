"""Decode-check a video with PyAV and describe it, or say why it cannot be packed.

Every frame is decoded (which counts them and checks the first and the last); a file is
rejected when it is missing or empty, cannot be opened, has no video stream, yields no frame,
fails to decode part-way, or decodes to clearly fewer frames than its header declares
(a truncated file whose container stops cleanly).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import av

from shard_tools import rejections as rj
from shard_tools.sample import VideoInfo

# a file whose decoded frame count falls short of the header's by more than this is truncated
TRUNCATION_TOLERANCE_FRAMES = 2
TRUNCATION_TOLERANCE_FRACTION = 0.05


@dataclass(frozen=True)
class ProbeResult:
    info: VideoInfo | None
    reason: str | None = None  # set when info is None

    @property
    def ok(self) -> bool:
        return self.info is not None


def _short(err: BaseException) -> str:
    text = getattr(err, "strerror", None) or str(err) or type(err).__name__
    return " ".join(str(text).split())[:160]


def _declared_frames(container, stream, fps: float) -> int | None:
    if stream.frames:
        return int(stream.frames)
    if stream.duration is not None and stream.time_base is not None and fps > 0:
        return round(float(stream.duration * stream.time_base) * fps)
    if container.duration is not None and fps > 0 and len(container.streams) == 1:
        return round(container.duration / av.time_base * fps)
    return None


def probe_video(path: Path, *, threads: int = 1) -> ProbeResult:
    """Decode every frame of ``path``; ``threads`` is the decoder's thread count (0 = auto)."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return ProbeResult(None, rj.MISSING)
    except OSError as err:
        return ProbeResult(None, rj.reason(rj.UNDECODABLE, _short(err)))
    if size == 0:
        return ProbeResult(None, rj.EMPTY)
    try:
        container = av.open(str(path), "r")
    except (av.FFmpegError, OSError, ValueError, EOFError) as err:
        return ProbeResult(None, rj.reason(rj.UNDECODABLE, f"cannot open: {_short(err)}"))
    with container:
        if not container.streams.video:
            return ProbeResult(None, rj.NO_VIDEO)
        stream = container.streams.video[0]
        stream.codec_context.thread_count = threads
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else 0.0
        codec = stream.codec_context.codec.canonical_name
        num_frames, width, height = 0, 0, 0
        try:
            for frame in container.decode(stream):
                if num_frames == 0:
                    width, height = frame.width, frame.height
                num_frames += 1
        except (av.FFmpegError, OSError, ValueError, EOFError) as err:
            category = rj.TRUNCATED if num_frames else rj.UNDECODABLE
            return ProbeResult(None, rj.reason(category, f"decode error after {num_frames} frames: {_short(err)}"))
        if num_frames == 0:
            return ProbeResult(None, rj.reason(rj.UNDECODABLE, "no frame could be decoded"))
        declared = _declared_frames(container, stream, fps)
        if declared is not None:
            slack = max(TRUNCATION_TOLERANCE_FRAMES, TRUNCATION_TOLERANCE_FRACTION * declared)
            if num_frames < declared - slack:
                return ProbeResult(None, rj.reason(rj.TRUNCATED, f"decoded {num_frames} of {declared} frames"))
        return ProbeResult(VideoInfo(num_frames, fps, width, height, codec))
