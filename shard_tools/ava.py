"""AVA v2.2 (``mvd-shard ava``): one sample per annotated keyframe, the clip around it cut from
its movie.

The ground-truth CSV's rows are grouped by keyframe ``(video_id, timestamp)``, and within it by
box: rows with the same coordinates and person id are one box with several actions. Each kept
keyframe becomes a :class:`~shard_tools.sources.SourceRecord`, so ``build_shards`` packs AVA
with its usual workers, resume and rejections; its clip is cut from the movie by
:mod:`shard_tools.ava_clips` (one decoding pass per movie before packing, the record's
``prepare`` otherwise), centred on the keyframe's frame, with ``movie_start`` (0 for the full
movies AVA serves, 900 for movies cut to the annotated 15-minute segment) the AVA time of the
movie file's first frame.

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
from shard_tools.ava_clips import (BEYOND_END, DECODE_ERRORS, ClipOptions, KeyframeClip, before_start,
                                   cut_all_clips, keyframe_frame, stream_rate)
from shard_tools.build import BuildOptions, build_shards, work_dir
from shard_tools.encode import codec_by_name
from shard_tools.parts import Part
from shard_tools.reencode import scaled_size
from shard_tools.rejections import Rejected, Rejection
from shard_tools.sources import SourceError, SourceRecord, SourceSet, _display_path, _index_videos
from video_caps.decoders import DEFAULT_TARGET, StreamFacts, decoder, refusal

EMPTY_BOX = "empty box"
NO_BOX = "no usable box"
# a header's frame count may be a little off: at source time only keyframes this many frames past
# it are rejected; the clip cutter decides the rest by decoding
_HEADER_SLACK_FRAMES = 2
_AVA_SEGMENT_START = 900  # AVA annotates seconds 900-1800 of each movie; keyframes 902..1798


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
            fps = stream_rate(stream)
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
    except DECODE_ERRORS as err:
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
            rejected.append(Rejection(where, before_start(timestamp, clip.movie_start)))
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
