"""Decode-check a video with PyAV and describe it, or say why it cannot be packed.

Every frame is decoded (which counts them and checks the first and the last); a file is
rejected when it is missing or empty, cannot be opened, has no video stream, yields no frame,
fails to decode part-way, or decodes to clearly fewer frames than its header declares
(a truncated file whose container stops cleanly). The same pass finds the stream's facts
(:class:`video_caps.decoders.StreamFacts`: profile, pixel format, chroma, bit depth, coded size,
key frame spacing, B-frames, variable frame rate) that decide which decoders take it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import av
from av.video.frame import PictureType

from shard_tools import rejections as rj
from shard_tools.sample import VideoInfo
from video_caps.decoders import StreamFacts

# a file whose decoded frame count falls short of the header's by more than this is truncated
TRUNCATION_TOLERANCE_FRAMES = 2
TRUNCATION_TOLERANCE_FRACTION = 0.05
# frame durations that differ by more than this fraction of the typical one make a stream VFR
VFR_TOLERANCE = 0.1
_SUBSAMPLING = {(1, 1): "4:4:4", (2, 1): "4:2:2", (2, 2): "4:2:0", (4, 1): "4:1:1", (1, 2): "4:4:0"}


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


def chroma_and_depth(pix_fmt: str) -> tuple[str, int]:
    """(chroma subsampling, luma bit depth) of an FFmpeg pixel format: yuv420p10le -> ("4:2:0", 10)."""
    fmt = av.VideoFormat(pix_fmt, 64, 64)
    depth = fmt.components[0].bits if fmt.components else 8
    if fmt.is_rgb:
        return "rgb", depth
    if len([c for c in fmt.components if not c.is_alpha]) == 1:
        return "4:0:0", depth
    return _SUBSAMPLING.get((64 // fmt.chroma_width(), 64 // fmt.chroma_height()), "other"), depth


def _is_vfr(pts: list[int]) -> bool:
    steps = sorted(b - a for a, b in zip(pts, pts[1:]))
    if len(steps) < 2:
        return False
    typical = steps[len(steps) // 2]
    return typical <= 0 or (steps[-1] - steps[0]) > VFR_TOLERANCE * typical


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
        num_frames, width, height, pix_fmt = 0, 0, 0, ""
        last_key, max_interval, b_frames, pts = 0, 1, False, []
        try:
            for frame in container.decode(stream):
                if num_frames == 0:
                    width, height, pix_fmt = frame.width, frame.height, frame.format.name
                if frame.key_frame and num_frames:
                    max_interval, last_key = max(max_interval, num_frames - last_key), num_frames
                b_frames = b_frames or frame.pict_type == PictureType.B
                if frame.pts is not None:
                    pts.append(frame.pts)
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
        chroma, depth = chroma_and_depth(pix_fmt)
        ctx = stream.codec_context
        facts = StreamFacts(
            codec=codec, profile=ctx.profile or None, pix_fmt=pix_fmt, chroma=chroma, bit_depth=depth,
            coded_width=ctx.coded_width or width, coded_height=ctx.coded_height or height, width=width,
            height=height, fps=fps, num_frames=num_frames,
            max_keyframe_interval=max(max_interval, num_frames - last_key), b_frames=b_frames,
            vfr=_is_vfr(sorted(pts)))
        return ProbeResult(VideoInfo(num_frames, fps, width, height, codec, facts))
