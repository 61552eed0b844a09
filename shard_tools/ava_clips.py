"""AVA keyframe clips cut from their movies (the packing half of ``mvd-shard ava``).

Before packing, the AVA sources' ``prepare_all`` (:func:`cut_all_clips`) decodes each movie once,
in order, from the key frame before its first window, and cuts every keyframe's clip still to
pack from that pass (:func:`cut_movie_clips`: each frame resized once and held by the clips whose
windows hold it, a clip encoded once its window is complete); the record's ``prepare``
(:class:`KeyframeClip`) then takes that clip, or, when it is missing, seeks the movie to just
before the window and decodes only the window's frames (:func:`cut_clip`, the same frames). The
window is ``clip_frames`` frames centred on the keyframe's frame ``k = round((timestamp -
movie_start) * fps)``: ``k - clip_frames // 2 .. k + clip_frames // 2 - 1``, the first (last)
decoded frame repeated where the movie starts (ends) inside it. ``movie_start`` is 0 for the full
movies AVA serves and 900 for movies cut to the annotated 15-minute segment (seconds 900-1800).

A clip that cannot be cut is rejected with its reason: the movie cannot be decoded, ends before
the keyframe, or starts after it.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av

from shard_tools import rejections as rj
from shard_tools.encode import VideoWriter, codec_by_name
from shard_tools.reencode import ReencodeOptions, scaled_size
from shard_tools.rejections import Rejected
from shard_tools.sources import SourceRecord

CLIP_CODECS = ("h264", "hevc", "vp9", "mjpeg")
BEYOND_END = "keyframe beyond the movie's end"
BEFORE_START = "keyframe before the movie's start"
# what opening, decoding or encoding a movie raises on a bad file
DECODE_ERRORS = (av.FFmpegError, OSError, ValueError, EOFError)


@dataclass(frozen=True)
class ClipOptions:
    clip_frames: int = 64  # 16 frames x stride 4, the recipe's window
    short_side: int | None = None  # None keeps the movie's size (rounded down to even)
    codec: str = "vp9"  # VP9 in .webm: DALI's CPU decoder reads it
    gop: int = 16
    movie_start: float = 0.0  # the AVA time at the movie files' first frame: 900 for movies cut to 900-1800 s

    def __post_init__(self) -> None:
        if self.clip_frames < 2 or self.clip_frames % 2:
            raise ValueError(f"clip frames must be even and >= 2 (centred on the keyframe), got {self.clip_frames}")
        if self.codec not in CLIP_CODECS:
            raise ValueError(f"clip codec must be one of {CLIP_CODECS}, got {self.codec!r}")
        ReencodeOptions(self.codec, self.short_side, self.gop)  # the encoder's own checks
        if self.movie_start < 0:
            raise ValueError(f"movie start must be >= 0 seconds, got {self.movie_start}")

    @property
    def ext(self) -> str:
        return codec_by_name(self.codec).ext


def keyframe_frame(timestamp: int, fps: float, movie_start: float = 0.0) -> int:
    """The movie frame of a keyframe at ``timestamp`` seconds (AVA time; the movie file begins at
    ``movie_start``)."""
    return round((timestamp - movie_start) * fps)


def clip_window(keyframe: int, clip_frames: int) -> range:
    """Movie frames of the clip centred on ``keyframe`` (which is its ``clip_frames // 2``-th)."""
    return range(keyframe - clip_frames // 2, keyframe + clip_frames // 2)


def stream_rate(stream) -> Fraction:
    """The video stream's frame rate; rejects a stream that has none."""
    rate = stream.average_rate or stream.guessed_rate
    if not rate:
        raise Rejected(rj.reason(rj.UNDECODABLE, "the video stream has no frame rate"))
    return Fraction(rate)


def _frame_index(frame, start_pts: int, time_base: Fraction, fps: Fraction) -> int:
    if frame.pts is None:
        raise Rejected(rj.reason(rj.UNDECODABLE, "decoded frames carry no timestamps, so they cannot be located"))
    return round((frame.pts - start_pts) * time_base * fps)


def _decode_window(container, stream, fps: Fraction, window: range, size: tuple[int, int]) -> tuple[dict, int]:
    """Movie frame index -> frame (resized to ``size``) for the frames of ``window`` the movie has,
    and how many frames were decoded to get them.

    Seeks to the key frame before the window's start, then decodes forward; a demuxer whose seek
    lands after the start is asked again from further back (and in the end from the start).
    """
    start_pts = stream.start_time or 0
    time_base = stream.time_base
    first = max(window.start, 0)
    back, decoded = Fraction(0), 0
    while True:
        seconds = first / fps - back
        if seconds > 0:
            container.seek(start_pts + int(seconds / time_base), stream=stream, backward=True)
        elif back > 0:  # a retry from the movie's start
            container.seek(start_pts, stream=stream, backward=True)
        frames, overshot = {}, False
        for n, frame in enumerate(container.decode(stream)):
            decoded += 1
            index = _frame_index(frame, start_pts, time_base, fps)
            if n == 0 and index > first and seconds > 0:
                overshot = True  # the seek landed after the window's start
                break
            if index >= window.stop:
                break
            if index >= window.start:
                frames[index] = frame.reformat(width=size[0], height=size[1])
        if not overshot:
            return frames, decoded
        back = max(2 * back, Fraction(1))


def cut_clip(movie: Path, timestamp: int, dst: Path, options: ClipOptions) -> int:
    """Write the clip of the keyframe at ``timestamp`` seconds of ``movie`` to ``dst``; returns
    the number of movie frames decoded for it (the window plus the lead-in from a key frame).

    Raises :class:`~shard_tools.rejections.Rejected` when the movie cannot be decoded or ends
    before the keyframe.
    """
    try:
        with av.open(str(movie), "r") as container:
            if not container.streams.video:
                raise Rejected(rj.NO_VIDEO)
            stream = container.streams.video[0]
            stream.codec_context.thread_count = 1  # the worker pool is the parallelism
            fps = stream_rate(stream)
            keyframe = keyframe_frame(timestamp, fps, options.movie_start)
            if keyframe < 0:
                raise Rejected(before_start(timestamp, options.movie_start))
            window = clip_window(keyframe, options.clip_frames)
            size = scaled_size(stream.codec_context.width, stream.codec_context.height, options.short_side)
            frames, decoded = _decode_window(container, stream, fps, window, size)
    except DECODE_ERRORS as err:
        raise Rejected(rj.reason(rj.UNDECODABLE, f"{type(err).__name__}: {err}"[:200])) from None
    if not frames or max(frames) < keyframe:
        last = max(frames, default=None)
        where = f"ends at frame {last}" if last is not None else "has no frame in the clip's window"
        raise Rejected(rj.reason(BEYOND_END, f"keyframe frame {keyframe} (t={timestamp} s at {float(fps):g} fps); "
                                             f"the movie {where}"))
    indices = sorted(frames)
    try:
        with VideoWriter(dst, options.codec, size[0], size[1], fps, gop=options.gop) as writer:
            at = 0
            for index in window:  # the nearest decoded frame at or before, else the first decoded
                while at + 1 < len(indices) and indices[at + 1] <= index:
                    at += 1
                writer.write(frames[indices[at]])
    except DECODE_ERRORS as err:
        raise Rejected(rj.reason(rj.REENCODE_FAILED, f"{type(err).__name__}: {err}"[:200])) from None
    return decoded


def before_start(timestamp: int, movie_start: float) -> str:
    """The rejection reason of a keyframe before the movie file's first frame."""
    return rj.reason(BEFORE_START, f"t={timestamp} s, the movie starts at {movie_start:g} s")


class _Clip:
    """One keyframe's clip gathered during a movie's single decoding pass.

    Holds, for every frame of its window, the nearest decoded frame at or before it, else the
    first decoded one (what :func:`cut_clip` writes), fed frame by frame in display order, and
    encodes them once the window is complete: one encoder at a time, and at most the frames of
    the windows overlapping the current frame held (references to shared resized frames).
    """

    def __init__(self, keyframe: int, timestamp: int, dst: Path, options: ClipOptions):
        self.keyframe, self.timestamp, self.dst = keyframe, timestamp, dst
        self.window = clip_window(keyframe, options.clip_frames)
        self.options = options
        self.frames: list = []  # the window's frames so far, in order
        self.last_index: int | None = None  # the latest decoded frame inside the window

    def feed(self, index: int, image) -> None:
        """A decoded (resized) frame at movie frame ``index`` (in the window)."""
        if index < self.window.start + len(self.frames):
            return  # out of display order (not met in practice): dropped
        fill = image if not self.frames else self.frames[-1]
        self.frames += [fill] * (index - self.window.start - len(self.frames)) + [image]
        self.last_index = index

    def finish(self, size: tuple[int, int], fps: Fraction) -> str | None:
        """Encode the clip (the last frame repeated to the window's end); the rejection reason
        (and no file) when the movie has no frame at or after the keyframe in the window."""
        if self.last_index is None or self.last_index < self.keyframe:
            where = f"ends at frame {self.last_index}" if self.last_index is not None else \
                "has no frame in the clip's window"
            return rj.reason(BEYOND_END, f"keyframe frame {self.keyframe} (t={self.timestamp} s at "
                                         f"{float(fps):g} fps); the movie {where}")
        self.frames += [self.frames[-1]] * (len(self.window) - len(self.frames))
        try:
            with VideoWriter(self.dst, self.options.codec, size[0], size[1], fps, gop=self.options.gop) as writer:
                for frame in self.frames:
                    writer.write(frame)
        except DECODE_ERRORS as err:
            self.dst.unlink(missing_ok=True)
            return rj.reason(rj.REENCODE_FAILED, f"{type(err).__name__}: {err}"[:200])
        finally:
            self.frames = []
        return None


def cut_movie_clips(movie: Path, keyframes: list[tuple[int, Path]],
                    options: ClipOptions) -> tuple[dict[Path, str | None], int]:
    """Cut the clip of every ``(timestamp, dst)`` of ``movie`` from one decoding pass, in order.

    The pass starts at the key frame before the first window (a seek) and stops after the last;
    each decoded frame is resized once and held by every clip whose window holds it, and a clip
    is encoded as soon as its window is complete, so at most the frames of the windows overlapping
    the current frame are held (a bounded sliding buffer: about ``clip_frames`` plus the keyframe
    spacing of frames at the clip's size, e.g. ~0.3 GB at 1080p without a short side). Returns
    dst -> None (written) or the rejection reason (what :func:`cut_clip` would raise), and the
    number of frames decoded. The clips are the frames :func:`cut_clip` writes.
    """
    results: dict[Path, str | None] = {}
    decoded = 0
    clips: list[_Clip] = []
    try:
        with av.open(str(movie), "r") as container:
            if not container.streams.video:
                return {dst: rj.NO_VIDEO for _, dst in keyframes}, 0
            stream = container.streams.video[0]
            stream.codec_context.thread_count = 1  # the worker pool is the parallelism
            fps = stream_rate(stream)
            size = scaled_size(stream.codec_context.width, stream.codec_context.height, options.short_side)
            for timestamp, dst in keyframes:
                keyframe = keyframe_frame(timestamp, fps, options.movie_start)
                if keyframe < 0:
                    results[dst] = before_start(timestamp, options.movie_start)
                else:
                    clips.append(_Clip(keyframe, timestamp, dst, options))
            clips.sort(key=lambda c: c.window.start)
            waiting, active = list(reversed(clips)), []  # waiting: by window start, the next last
            held = None  # (index, frame): a frame is used once the next one's index is larger

            def deliver(index: int, frame) -> None:
                while waiting and waiting[-1].window.start <= index:
                    active.append(waiting.pop())
                image = None
                for clip in list(active):
                    if index >= clip.window.stop:
                        results[clip.dst] = clip.finish(size, fps)
                        active.remove(clip)
                        continue
                    if image is None:  # resized once for every clip that holds it
                        image = frame.reformat(width=size[0], height=size[1])
                    clip.feed(index, image)

            first = max(clips[0].window.start, 0) if clips else 0
            for index, frame in _decode_from(container, stream, fps, first):
                decoded += 1
                if held is not None and index != held[0]:
                    deliver(*held)
                held = (index, frame)
                if not waiting and not active:
                    break
            if held is not None:
                deliver(*held)
            for clip in active + waiting:
                results[clip.dst] = clip.finish(size, fps)
    except Rejected as err:
        _abort_all(clips, results, str(err))
    except DECODE_ERRORS as err:
        _abort_all(clips, results, rj.reason(rj.UNDECODABLE, f"{type(err).__name__}: {err}"[:200]))
    return results, decoded


def _decode_from(container, stream, fps: Fraction, first: int):
    """(movie frame index, frame) in display order from the key frame before frame ``first``
    (from the movie's start when the demuxer's seek lands after it)."""
    start_pts, time_base = stream.start_time or 0, stream.time_base
    seek = first / fps > 1
    if seek:
        container.seek(start_pts + int((first / fps - 1) / time_base), stream=stream, backward=True)
    for n, frame in enumerate(container.decode(stream)):
        index = _frame_index(frame, start_pts, time_base, fps)
        if n == 0 and seek and index > first:
            break  # landed after the window
        yield index, frame
    else:
        return
    container.seek(start_pts, stream=stream, backward=True)
    for frame in container.decode(stream):
        yield _frame_index(frame, start_pts, time_base, fps), frame


def _abort_all(clips: list[_Clip], results: dict, reason: str) -> None:
    for clip in clips:
        if clip.dst not in results:
            clip.dst.unlink(missing_ok=True)
            results[clip.dst] = reason


@dataclass(frozen=True)
class KeyframeClip:
    """Picklable ``prepare`` of one keyframe: calling it with a path writes the clip there, or
    takes the clip the movie's single pass (:func:`cut_movie_clips`, run by :func:`cut_all_clips`
    before packing) already wrote there, or raises the reason that pass recorded."""

    movie: Path
    timestamp: int
    options: ClipOptions

    def __call__(self, path: Path) -> None:
        marker = rejected_marker(path)
        if marker.exists():
            reason = marker.read_text()
            marker.unlink()
            raise Rejected(reason)
        if path.is_file() and path.stat().st_size:
            return
        cut_clip(self.movie, self.timestamp, path, self.options)


def rejected_marker(clip: Path) -> Path:
    """Where the one-pass cutter records why a keyframe's clip could not be cut."""
    return clip.with_name(clip.name + ".rejected")


def _cut_movie(job: tuple[Path, list[tuple[int, Path]], ClipOptions]) -> int:
    """Worker: one movie's pass; writes the clips and the rejection markers; frames decoded."""
    movie, keyframes, options = job
    results, decoded = cut_movie_clips(movie, keyframes, options)
    for dst, reason in results.items():
        if reason is not None:
            rejected_marker(dst).write_text(reason)
    return decoded


def cut_all_clips(records: list[SourceRecord], mapper) -> None:
    """The ``prepare_all`` of AVA sources: cut the clips of ``records`` movie by movie, one pass
    per movie (movies in parallel through ``mapper``, build_shards' worker pool)."""
    by_movie: dict[Path, list[tuple[int, Path]]] = defaultdict(list)
    options = None
    for record in records:
        clip = record.prepare
        if isinstance(clip, KeyframeClip):
            rejected_marker(record.path).unlink(missing_ok=True)
            by_movie[clip.movie].append((clip.timestamp, record.path))
            options = clip.options
    jobs = [(movie, sorted(cuts), options) for movie, cuts in sorted(by_movie.items())]
    for _ in mapper(_cut_movie, jobs):
        pass
