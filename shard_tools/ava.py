"""AVA v2.2 (``mvd-shard ava``): one sample per annotated keyframe, the clip around it cut from
its movie.

The ground-truth CSV's rows are grouped by keyframe ``(video_id, timestamp)``, and within it by
box: rows with the same coordinates and person id are one box with several actions. Each kept
keyframe becomes a :class:`~shard_tools.sources.SourceRecord`, so ``build_shards`` packs AVA
with its usual workers, resume and rejections. Before packing, the sources' ``prepare_all``
(:func:`cut_all_clips`) decodes each movie once, in order, from the key frame before its first
window, and cuts every keyframe's clip still to pack from that pass (:func:`cut_movie_clips`:
each frame resized once and held by the clips whose windows hold it, a clip encoded once its
window is complete); the record's ``prepare`` (:class:`KeyframeClip`) then takes that clip, or,
when it is missing, seeks the movie to just before the window and decodes only the window's
frames (:func:`cut_clip`, the same frames). The window is ``clip_frames`` frames centred on the
keyframe's frame ``k = round((timestamp - movie_start) * fps)``: ``k - clip_frames // 2 ..
k + clip_frames // 2 - 1``, the first (last) decoded frame repeated where the movie starts (ends)
inside it. ``movie_start`` is 0 for the full movies AVA serves and 900 for movies cut to the
annotated 15-minute segment (seconds 900-1800).

Samples carry class index -1 (no clip label); the json's ``"ava"`` field holds the boxes, their
actions and person ids and the keyframe's proposals; the manifest's ``"detection"`` field the
action ids, the evaluated subset and the excluded timestamps (ARCHITECTURE.md / the AVA contract).

Rejected (listed with their reason): keyframes whose movie is missing or cannot be read, whose
keyframe lies beyond the movie's end, or that keep no usable box; rows whose action id is not in
the label map; boxes of zero width or height (keyframes before the movie's start, too, with a
``movie_start``). Excluded timestamps are skipped and counted. A
description file that cannot be parsed (including boxes outside [0, 1] and proposals that are
not normalised) raises :class:`~shard_tools.sources.SourceError` naming the file and line.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from shard_tools import ava_files
from shard_tools import rejections as rj
from shard_tools.build import BuildOptions, build_shards, work_dir
from shard_tools.encode import VideoWriter, codec_by_name
from shard_tools.parts import Part
from shard_tools.reencode import scaled_size
from shard_tools.rejections import Rejected, Rejection
from shard_tools.sources import SourceError, SourceRecord, SourceSet, _display_path, _index_videos
from video_caps.decoders import DEFAULT_TARGET, StreamFacts, decoder, refusal

CLIP_CODECS = ("h264", "hevc", "vp9", "mjpeg")
BEYOND_END = "keyframe beyond the movie's end"
BEFORE_START = "keyframe before the movie's start"
EMPTY_BOX = "empty box"
NO_BOX = "no usable box"
# a header's frame count may be a little off: at source time only keyframes this many frames past
# it are rejected; the clip cutter decides the rest by decoding
_HEADER_SLACK_FRAMES = 2
_DECODE_ERRORS = (av.FFmpegError, OSError, ValueError, EOFError)
_AVA_SEGMENT_START = 900  # AVA annotates seconds 900-1800 of each movie; keyframes 902..1798


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
        if self.short_side is not None and self.short_side < 2:
            raise ValueError(f"short side must be >= 2, got {self.short_side}")
        if self.gop < 1:
            raise ValueError(f"GOP length must be >= 1, got {self.gop}")
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


def _stream_rate(stream) -> Fraction:
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
            fps = _stream_rate(stream)
            keyframe = keyframe_frame(timestamp, fps, options.movie_start)
            if keyframe < 0:
                raise Rejected(_before_start(timestamp, options.movie_start))
            window = clip_window(keyframe, options.clip_frames)
            size = scaled_size(stream.codec_context.width, stream.codec_context.height, options.short_side)
            frames, decoded = _decode_window(container, stream, fps, window, size)
    except _DECODE_ERRORS as err:
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
    except _DECODE_ERRORS as err:
        raise Rejected(rj.reason(rj.REENCODE_FAILED, f"{type(err).__name__}: {err}"[:200])) from None
    return decoded


def _before_start(timestamp: int, movie_start: float) -> str:
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
        except _DECODE_ERRORS as err:
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
            fps = _stream_rate(stream)
            size = scaled_size(stream.codec_context.width, stream.codec_context.height, options.short_side)
            for timestamp, dst in keyframes:
                keyframe = keyframe_frame(timestamp, fps, options.movie_start)
                if keyframe < 0:
                    results[dst] = _before_start(timestamp, options.movie_start)
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
    except _DECODE_ERRORS as err:
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


@dataclass(frozen=True)
class _Movie:
    path: Path
    where: str  # as rejections name it
    fps: Fraction | None = None
    frames: int | None = None  # from the header, when it says
    problem: str | None = None  # why none of its keyframes can be packed
    size: tuple[int, int] | None = None  # width, height


def _probe_movie(path: Path, where: str) -> _Movie:
    """The movie's frame rate and header frame count, without decoding."""
    try:
        with av.open(str(path), "r") as container:
            if not container.streams.video:
                return _Movie(path, where, problem=rj.NO_VIDEO)
            stream = container.streams.video[0]
            fps = _stream_rate(stream)
            if stream.frames:
                frames = int(stream.frames)
            elif stream.duration is not None and stream.time_base is not None:
                frames = int(float(stream.duration * stream.time_base) * fps)
            elif container.duration is not None:
                frames = int(container.duration / av.time_base * fps)
            else:
                frames = None
            return _Movie(path, where, fps, frames, size=(stream.codec_context.width, stream.codec_context.height))
    except Rejected as err:
        return _Movie(path, where, problem=str(err))
    except _DECODE_ERRORS as err:
        return _Movie(path, where, problem=rj.reason(rj.UNDECODABLE, f"cannot open: {err}"[:200]))


def _clips_not_taken(clip: ClipOptions, movies: list[_Movie]) -> str | None:
    """Advice when the clips (8-bit 4:2:0 in ``clip.codec``, at the movies' scaled sizes) are
    not taken by the default GPU decoder, whose loader would then refuse the folder."""
    gpu = decoder(DEFAULT_TARGET)
    refused = []
    for movie in movies:
        w, h = scaled_size(*movie.size, clip.short_side)
        facts = StreamFacts(clip.codec, None, codec_by_name(clip.codec).pix_fmt, "4:2:0", 8, w, h, w, h,
                            float(movie.fps), clip.clip_frames, clip.gop, False, False)
        found = refusal(gpu, facts)
        if found is not None:
            refused.append(found.text)
    if not refused:
        return None
    return (f"the clips of {len(refused)} movies are not taken by {gpu.label} (e.g. {refused[0]}): the GPU "
            f"loader will refuse the folder; use --codec h264 or a larger --short-side, or decode them on the CPU")


def _read(reader, *args, **kwargs):
    try:
        return reader(*args, **kwargs)
    except ava_files.AvaFileError as err:
        raise SourceError(str(err)) from None


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _rounded(values) -> list[float]:
    return [round(float(v), 6) for v in values]


@dataclass
class AvaSources:
    """What :func:`ava_sources` found: the sources to pack and the manifest's detection facts."""

    sources: SourceSet
    action_ids: list[int]  # label map id of each class index
    eval_action_ids: list[int]
    excluded: set[tuple[str, int]]  # from the excluded-timestamps file
    excluded_skipped: int  # annotated keyframes skipped as excluded

    def detection(self, packed: list[SourceRecord]) -> dict:
        """The manifest's ``"detection"`` field, over the records that were packed."""
        annotations = [r.json_fields["ava"] for r in packed]
        return {"detection": {
            "action_ids": self.action_ids,
            "eval_action_ids": self.eval_action_ids,
            "excluded": [list(e) for e in sorted(self.excluded)],
            "excluded_skipped": self.excluded_skipped,
            "keyframes": len(annotations),
            "boxes": sum(len(a["boxes"]) for a in annotations),
            "proposals": sum(len(a["proposals"]) for a in annotations),
        }}


# the detection fields counted over the packed keyframes (summed over the parts of an array job)
_COUNTED = ("keyframes", "boxes", "proposals")


def merge_detection(parts: list[dict]) -> dict:
    """The ``"detection"`` field of a folder from its parts' (:func:`AvaSources.detection` each):
    the counts add up, the rest is the same in every part."""
    first = parts[0]["detection"]
    for n, part in enumerate(parts[1:], start=1):
        differ = sorted(k for k in first if k not in _COUNTED and part["detection"].get(k) != first[k])
        if differ:
            raise ValueError(f"AVA part {n}: detection fields {differ} differ from part 0's")
    return {"detection": {k: sum(p["detection"][k] for p in parts) if k in _COUNTED else v
                          for k, v in first.items()}}


def _eval_ids(label_map: dict[int, str], labels: Path, eval_labels: Path | None) -> list[int]:
    if eval_labels is None:
        return sorted(label_map)
    eval_map = _read(ava_files.read_label_map, eval_labels)
    for action, name in eval_map.items():
        if label_map.get(action) != name:
            found = f"is {label_map[action]!r} there" if action in label_map else "is not there"
            raise SourceError(f"evaluated label map {eval_labels}: action {action} {name!r} {found} in the label "
                              f"map {labels}; the evaluated actions must be a subset of the label map")
    return sorted(eval_map)


def _keyframe_boxes(rows: list[ava_files.BoxRow], label_map: dict[int, str], labels_name: str, where: str,
                    rejected: list[Rejection]) -> tuple[list, list, list]:
    """(boxes, actions, person ids) of one keyframe's rows; rows and boxes that cannot be used are
    appended to ``rejected``."""
    grouped: dict[tuple, list[int]] = {}
    for row in rows:
        grouped.setdefault((row.box, row.person_id), []).append(row.action_id)
    boxes, actions, person_ids = [], [], []
    for (box, person_id), box_actions in grouped.items():
        detail = f"box {','.join(f'{v:g}' for v in box)}, person {person_id}"
        unknown = sorted({a for a in box_actions if a not in label_map})
        for action in unknown:
            rejected.append(Rejection(where, rj.reason(rj.UNKNOWN_LABEL,
                                                        f"action id {action} is not in {labels_name} ({detail})")))
        known = sorted({a for a in box_actions if a in label_map})
        # boxes within the readers' tolerance of [0, 1] are float noise: clipped
        clipped = [min(max(v, 0.0), 1.0) for v in box]
        if known and (clipped[2] <= clipped[0] or clipped[3] <= clipped[1]):
            rejected.append(Rejection(where, rj.reason(EMPTY_BOX, f"zero width or height ({detail})")))
        elif known:
            boxes.append(clipped)
            actions.append(known)
            person_ids.append(person_id)
    return boxes, actions, person_ids


def ava_sources(videos_dir: Path, annotations: Path, labels: Path, *, clip_dir: Path,
                eval_labels: Path | None = None, excluded: Path | None = None, proposals: Path | None = None,
                clip: ClipOptions = ClipOptions()) -> AvaSources:
    """The keyframes of the ground-truth CSV ``annotations`` as sources; clips are cut into
    ``clip_dir`` on demand. Movies are ``<video_id>.<any extension>`` anywhere under ``videos_dir``."""
    videos_dir, annotations, labels = Path(videos_dir), Path(annotations), Path(labels)
    label_map = _read(ava_files.read_label_map, labels)
    action_ids = sorted(label_map)
    eval_action_ids = _eval_ids(label_map, labels, Path(eval_labels) if eval_labels else None)
    rows = _read(ava_files.read_box_csv, annotations, scores=False)
    excluded_set = _read(ava_files.read_excluded, excluded) if excluded else set()
    keyframe_proposals = _read(ava_files.read_proposals, proposals) if proposals else {}
    files = _index_videos(videos_dir)

    by_keyframe: dict[tuple[str, int], list[ava_files.BoxRow]] = defaultdict(list)
    for row in rows:
        by_keyframe[(row.video_id, row.timestamp)].append(row)
    movies: dict[str, _Movie] = {}
    records, rejected, skipped = [], [], 0
    for video_id, timestamp in sorted(by_keyframe):
        if (video_id, timestamp) in excluded_set:
            skipped += 1
            continue
        if video_id not in movies:
            path = files.get(video_id)
            movies[video_id] = (_probe_movie(path, _display_path(path, videos_dir)) if path else
                                _Movie(Path(video_id), video_id,
                                       problem=rj.reason(rj.MISSING, f"no movie {video_id}.* in {videos_dir}")))
        movie = movies[video_id]
        where = f"{movie.where}@{timestamp:04d}"
        if movie.problem is not None:
            rejected.append(Rejection(where, movie.problem))
            continue
        keyframe = keyframe_frame(timestamp, movie.fps, clip.movie_start)
        if keyframe < 0:
            rejected.append(Rejection(where, _before_start(timestamp, clip.movie_start)))
            continue
        if movie.frames is not None and keyframe >= movie.frames + _HEADER_SLACK_FRAMES:
            seconds = float(movie.frames / movie.fps)
            hint = (f"; a movie cut to AVA's 15-minute segment needs a movie start of {_AVA_SEGMENT_START} s"
                    if clip.movie_start == 0 and 0 <= timestamp - _AVA_SEGMENT_START < seconds else "")
            rejected.append(Rejection(where, rj.reason(
                BEYOND_END, f"keyframe frame {keyframe} (t={timestamp} s at {float(movie.fps):g} fps); the movie has "
                            f"{movie.frames} frames ({seconds:.1f} s){hint}")))
            continue
        boxes, actions, person_ids = _keyframe_boxes(by_keyframe[(video_id, timestamp)], label_map, labels.name,
                                                     where, rejected)
        if not boxes:
            rejected.append(Rejection(where, rj.reason(NO_BOX, "every box of the keyframe was rejected")))
            continue
        found = keyframe_proposals.get((video_id, timestamp), np.zeros((0, 5), np.float32))
        ann = {"video_id": video_id, "timestamp": timestamp, "keyframe": clip.clip_frames // 2,
               "boxes": boxes, "actions": actions, "person_ids": person_ids,
               "proposals": [_rounded(p) for p in found]}
        records.append(SourceRecord(Path(clip_dir) / f"{video_id}_{timestamp:04d}.{clip.ext}", -1, "", where,
                                    prepare=KeyframeClip(movie.path, timestamp, clip), json_fields={"ava": ann}))

    notes = []
    if skipped:
        notes.append(f"{skipped} annotated keyframes skipped as excluded ({Path(excluded).name})")
    unknown = sorted({r.action_id for r in rows if r.action_id not in label_map})
    if unknown:
        notes.append(f"action ids {unknown[:10]}{' ...' if len(unknown) > 10 else ''} of {annotations.name} are "
                     f"not in {labels.name}: their rows are rejected (give the full label map with --labels and "
                     "the evaluated subset with --eval-labels)")
    not_taken = _clips_not_taken(clip, [m for m in movies.values() if m.size])
    if not_taken:
        notes.append(not_taken)
    provenance = {"source": "pbtxt", "file": str(labels.resolve()), "sha256": _sha256(labels)}
    sources = SourceSet("ava", [label_map[i] for i in action_ids], records, rejected, provenance, notes,
                        prepare_all=cut_all_clips)
    return AvaSources(sources, action_ids, eval_action_ids, excluded_set, skipped)


def shard_ava(out_dir: Path, *, videos: Path, annotations: Path, labels: Path, eval_labels: Path | None = None,
              excluded: Path | None = None, proposals: Path | None = None, clip: ClipOptions = ClipOptions(),
              seed: int = 0, shard_size_mb: float = 1024.0, shard_samples: int | None = None,
              workers: int | None = None, progress: bool = True, overwrite: bool = False,
              on_note: Callable[[str], None] | None = None, part: Part | None = None) -> dict:
    """Pack AVA into ``out_dir`` (``mvd-shard ava``) and return the manifest; re-running resumes.

    ``on_note`` is told the advice for the user (excluded keyframes skipped, unknown action ids).
    """
    found = ava_sources(videos, annotations, labels, clip_dir=work_dir(out_dir), eval_labels=eval_labels,
                        excluded=excluded, proposals=proposals, clip=clip)
    for note in found.sources.notes if on_note else ():
        on_note(note)
    paths = {"videos": videos, "annotations": annotations, "labels": labels, "eval_labels": eval_labels,
             "excluded": excluded, "proposals": proposals}
    command = {k: str(Path(v).resolve()) if v is not None else None for k, v in paths.items()}
    command.update(asdict(clip))
    options = BuildOptions(seed=seed, shard_size_mb=shard_size_mb, shard_samples=shard_samples, workers=workers,
                           part=part)
    return build_shards(found.sources, out_dir, options, command=command, progress=progress, overwrite=overwrite,
                        manifest_fields=found.detection)
