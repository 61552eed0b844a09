"""PyAV decoding of chosen frames: the fallback for codecs DALI cannot decode on the chosen device,
the probe that finds which sample broke a DALI batch, and the baseline loader's decoder.
"""

from __future__ import annotations

import io

import numpy as np


class DecodeError(RuntimeError):
    """A video's bytes could not be decoded into the requested frames."""


def decode_frames(data: bytes, indices: np.ndarray, convert_all: bool = False) -> np.ndarray:
    """Frames `indices` (presentation order, 0-based) as (T, H, W, 3) uint8 RGB.

    Seeks to the key frame before the first wanted frame and decodes forward only up to the last
    one; frames that are not wanted are decoded only when other frames reference them, and not
    converted to RGB, unless `convert_all` (what public PyAV loaders do: every frame of the
    window decoded and converted).
    Raises DecodeError when the bytes do not hold the frames.
    """
    import av  # PyAV: imported when a PyAV decode is asked for (a DALI-only machine lacks it)

    indices = np.asarray(indices, dtype=np.int64)
    wanted = np.unique(indices)
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            stream = container.streams.video[0]
            stream.thread_type = "NONE"  # one decode thread: the loaders parallelise over samples
            frames = _decode_wanted(container, stream, wanted, convert_all)
    except DecodeError:
        raise
    except (av.FFmpegError, IndexError, ValueError, OSError) as exc:
        raise DecodeError(f"{type(exc).__name__}: {exc}") from exc
    missing = [int(i) for i in wanted if int(i) not in frames]
    if missing:
        raise DecodeError(f"frames {missing[:8]} not found (video ended at {len(frames)} decoded)")
    pos = {int(i): n for n, i in enumerate(wanted)}
    stack = np.stack([frames[int(i)] for i in wanted])
    return stack[[pos[int(i)] for i in indices]]


def _decode_wanted(container, stream, wanted: np.ndarray, convert_all: bool) -> dict[int, np.ndarray]:
    pts_table = _presentation_pts(container, stream)
    if pts_table is not None and wanted[-1] < len(pts_table):
        index_of = {int(p): i for i, p in enumerate(pts_table)}
        container.seek(int(pts_table[wanted[0]]), stream=stream, backward=True, any_frame=False)
        frames = _collect(container, stream, wanted, convert_all, index_of)
        if len(frames) == len(wanted):
            return frames
    container.seek(0, stream=stream, backward=True, any_frame=False)  # count from the start
    return _collect(container, stream, wanted, convert_all, None)


def _collect(container, stream, wanted, convert_all, index_of) -> dict[int, np.ndarray]:
    """Decode forward until every wanted frame is in. A frame's index comes from its pts
    (`index_of`) or, without one, from counting decoded frames from the start.

    With pts, the packets of frames that are not wanted are decoded with skip_frame=NONREF:
    a frame no other frame references (H.264/HEVC non-reference B-frames) is then skipped.
    """
    from av.video.reformatter import VideoReformatter  # PyAV, as in decode_frames

    wanted_set = {int(i) for i in wanted}
    frames: dict[int, np.ndarray] = {}
    to_rgb = VideoReformatter()  # one swscale context for the clip, not one per frame
    context = stream.codec_context
    skip = index_of is not None and not convert_all
    count = 0
    for packet in container.demux(stream):
        if skip and packet.pts is not None:
            context.skip_frame = "DEFAULT" if index_of.get(packet.pts) in wanted_set else "NONREF"
        for frame in context.decode(packet):
            i = count if index_of is None else index_of.get(frame.pts)
            count += 1
            if convert_all:
                rgb = frame.to_ndarray(format="rgb24")  # as public loaders do, a context per frame
            if i in wanted_set and i not in frames:
                frames[i] = rgb if convert_all else to_rgb.reformat(frame, format="rgb24").to_ndarray()
                if len(frames) == len(wanted_set):
                    return frames
    return frames


def _presentation_pts(container, stream) -> np.ndarray | None:
    """Sorted pts of every packet (frame i of the video has the i-th smallest), read by demuxing
    only; None when some packet has no pts (then frames are counted from the start)."""
    pts = []
    for packet in container.demux(stream):
        if packet.size == 0:
            continue
        if packet.pts is None:
            return None
        pts.append(packet.pts)
    return np.sort(np.asarray(pts, dtype=np.int64))
