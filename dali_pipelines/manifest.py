"""Load and check a shard directory (format `mvd-shards/1`, see ARCHITECTURE.md) and build the
sample table the loaders read from, without decoding anything.

The table comes from the DALI `.idx` file beside each tar (offset and size of every member) and
each sample's 16-byte `.meta` member (num_frames, width, height, label as little-endian int32).
A sample's label is -1 when it has no clip label (AVA keyframes: their labels are per box).

`load_ava` reads the detection annotations of an AVA shard directory: every sample's `.json`
member (found through the same `.idx` offsets) holds its `ava` record, the manifest its
`detection` section (see the AVA contract in ARCHITECTURE.md).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dali_pipelines import shard_files, storage
from dali_pipelines.shard_files import close_all, read_range, read_text
from video_caps.decoders import DECODERS, folder_refusal

FORMAT = "mvd-shards/1"
META_MEMBERS = ("cls", "json", "meta")
META_DTYPE = np.dtype("<i4")
BOX_TOLERANCE = 1e-3  # normalised box coordinates may overshoot [0, 1] by float noise, not more

# PyAV codec names each DALI video decoder backend handles (video_caps.decoders owns the table:
# the CPU decoder's codecs, and those of NVDEC on any GPU family)
DALI_CODECS = {
    "cpu": frozenset(DECODERS["cpu-dali"].codecs),
    "gpu": frozenset(c for name, d in DECODERS.items() if name.startswith("gpu-") for c in d.codecs),
}
log = logging.getLogger("dali_pipelines")


class ShardDirError(ValueError):
    """The shard directory cannot be read as `mvd-shards/1` (message names the file and fix)."""


@dataclass(frozen=True)
class SampleTable:
    """Where every sample's video bytes are and what the sharder recorded about it.

    All arrays have one entry per sample, in manifest shard order then tar order.
    """

    shard_paths: tuple[str, ...]  # absolute tar paths
    shard: np.ndarray  # (N,) int32 index into shard_paths
    offset: np.ndarray  # (N,) int64 byte offset of the video member in its tar
    size: np.ndarray  # (N,) int64 byte size of the video member
    num_frames: np.ndarray  # (N,) int32
    width: np.ndarray  # (N,) int32
    height: np.ndarray  # (N,) int32
    label: np.ndarray  # (N,) int64, -1 = no clip label
    keys: tuple[str, ...]
    json_offset: np.ndarray | None = None  # (N,) int64 byte offset of the .json member (-1: none)
    json_size: np.ndarray | None = None  # (N,) int64
    keyframe: np.ndarray | None = None  # (N,) int64 frame of the AVA keyframe (DetectLoader's table)

    def __len__(self) -> int:
        return len(self.keys)

    def where(self, index: int) -> str:
        """`shard-000000.tar:key` for messages."""
        return f"{os.path.basename(self.shard_paths[self.shard[index]])}:{self.keys[index]}"


@dataclass(frozen=True)
class ShardDir:
    """A checked shard directory: its manifest and sample table."""

    path: Path | str  # a folder, or an s3:// URL
    manifest: dict
    table: SampleTable

    @property
    def classes(self) -> list[str]:
        return list(self.manifest["classes"])

    @property
    def codecs(self) -> dict[str, int]:
        return dict(self.manifest.get("codecs", {}))


def read_manifest(data_dir: str | os.PathLike, *, missing_ok: bool = False) -> dict | None:
    """`data_dir/manifest.json`, parsed and checked to be `mvd-shards/1`: the one reader of
    that file on the loading side (the loaders, the class lists, the dry run and mvd-export all
    call it; `shard_tools.manifest` is the packing side's, which writes it).

    `data_dir` is a folder or an `s3://bucket/prefix` (`shard_files`). Raises ShardDirError
    naming the directory (or URL) or the file and what is wrong; with `missing_ok`, a directory
    that holds no manifest (not sharded yet) gives None instead.
    """
    path = _dir(data_dir)
    manifest_path = shard_files.join(path, "manifest.json")
    try:
        if missing_ok and not shard_files.is_file(manifest_path):
            return None
        if not shard_files.is_dir(path):
            raise ShardDirError(f"{path}: no such directory (expected a shard directory from mvd-shard)")
        if not missing_ok and not shard_files.is_file(manifest_path):  # with missing_ok: known there
            raise ShardDirError(
                f"{path}: no manifest.json; this is not a shard directory written by mvd-shard"
            )
        text = read_text(manifest_path)
    except storage.StorageError as exc:
        raise ShardDirError(str(exc)) from exc
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ShardDirError(f"{manifest_path}: not valid JSON ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise ShardDirError(f"{manifest_path}: format {found!r}, expected {FORMAT!r}")
    return manifest


def _dir(data_dir: str | os.PathLike):
    """A local shard directory as a Path, an s3:// one as its URL (a Path would fold the //)."""
    return str(data_dir) if shard_files.is_remote(data_dir) else Path(data_dir)


def load_shard_dir(data_dir: str | os.PathLike) -> ShardDir:
    """Read `data_dir/manifest.json` (`read_manifest`), check every listed shard and index,
    build the table. `data_dir` is a folder or an `s3://bucket/prefix`.

    Raises ShardDirError naming the missing or inconsistent file (or URL).
    """
    try:
        return _load_shard_dir(_dir(data_dir))
    except storage.StorageError as exc:
        raise ShardDirError(str(exc)) from exc


def _load_shard_dir(path) -> ShardDir:
    manifest = read_manifest(path)
    manifest_path = shard_files.join(path, "manifest.json")
    for field in ("samples", "classes", "shards"):
        if field not in manifest:
            raise ShardDirError(f"{manifest_path}: missing field {field!r}")
    if not manifest["shards"]:
        raise ShardDirError(f"{manifest_path}: lists no shards")

    missing = shard_files.missing(
        [shard_files.join(path, entry[part]) for entry in manifest["shards"] for part in ("name", "index")]
    )
    if missing:
        raise ShardDirError(
            f"{manifest_path} lists files that are missing: {', '.join(missing)}"
        )
    table = _build_table(path, manifest)
    if len(table) != manifest["samples"]:
        raise ShardDirError(
            f"{manifest_path}: says {manifest['samples']} samples, the shard indexes hold {len(table)}"
        )
    return ShardDir(path, manifest, table)


def check_gpu_decodable(shards: ShardDir, target: str) -> None:
    """Refuse, before the first step, a folder some of whose samples the GPU decoder (NVDEC of the
    ``target`` family, see video_caps.decoders) cannot take: DALI would fail on them mid-epoch.

    Raises ShardDirError naming how many and why, and the fixes (the command from
    `mvd-shard verify`, or decoding on the CPU); logs a caveat for folders made before stream
    facts were recorded (only their codecs can be checked without probing).
    """
    refused, caveat = folder_refusal(shards.manifest, target)
    if caveat:
        log.warning("%s: %s", shards.path, caveat)
    if refused:
        raise ShardDirError(
            f"{shards.path}: the GPU decoder ({DECODERS[target].label}) cannot read this folder: {refused}. "
            f"`mvd-shard verify {shards.path} --target {target}` prints the mvd-shard command that re-encodes "
            f"them into a folder it takes; or decode on the CPU (decoder='pyav' or device='cpu')"
        )


def parse_index(idx_path: Path) -> list[dict[str, tuple[int, int, str | None]]]:
    """One dict per sample of a DALI webdataset index: member extension -> (offset, size, name).

    Reads `v1.2` (ext offset size name, repeated) and `v1.1` (ext offset size, repeated; name None).
    """
    lines = read_text(idx_path).splitlines()
    if not lines:
        raise ShardDirError(f"{idx_path}: empty index")
    head = lines[0].split()
    version = head[0] if head and head[0].startswith("v") else None
    group = {"v1.2": 4, "v1.1": 3}.get(version or "")
    if group is None:
        raise ShardDirError(f"{idx_path}: unsupported index version {head[:1]} (expected v1.2)")
    samples = []
    for n, line in enumerate(lines[1:], start=2):
        fields = line.split()
        if not fields:
            continue
        if len(fields) % group:
            raise ShardDirError(f"{idx_path}:{n}: malformed line ({len(fields)} fields)")
        members = {}
        for i in range(0, len(fields), group):
            name = fields[i + 3] if group == 4 else None
            members[fields[i]] = (int(fields[i + 1]), int(fields[i + 2]), name)
        samples.append(members)
    return samples


def _build_table(path, manifest: dict) -> SampleTable:
    shard_paths, shard, offset, size, meta, keys, json_at = [], [], [], [], [], [], []
    for s, entry in enumerate(manifest["shards"]):
        tar_path = shard_files.join(path, entry["name"])
        idx_path = shard_files.join(path, entry["index"])
        tar_name = os.path.basename(tar_path)
        samples = parse_index(idx_path)
        if "samples" in entry and entry["samples"] != len(samples):
            raise ShardDirError(
                f"{idx_path}: {len(samples)} samples, manifest says {entry['samples']}"
            )
        shard_paths.append(shard_files.resolve(tar_path))
        handles: dict = {}
        try:
            for members in samples:
                video = [ext for ext in members if ext not in META_MEMBERS]
                key = _key(str(tar_path), handles, *members[(video or list(members))[0]])
                if len(video) != 1 or "meta" not in members:
                    raise ShardDirError(
                        f"{tar_name}:{key}: expected one video member and a .meta member, "
                        f"found {sorted(members)}"
                    )
                meta_off, meta_size, _ = members["meta"]
                raw = read_range(str(tar_path), meta_off, 16, handles, scan=True)
                if meta_size != 16 or len(raw) != 16:
                    raise ShardDirError(f"{tar_name}:{key}.meta: expected 16 bytes")
                meta.append(np.frombuffer(raw, META_DTYPE))
                off, sz, _ = members[video[0]]
                shard.append(s)
                offset.append(off)
                size.append(sz)
                keys.append(key)
                json_at.append(members.get("json", (-1, 0, None))[:2])
        finally:
            close_all(handles)
    meta_arr = np.stack(meta) if meta else np.zeros((0, 4), META_DTYPE)
    json_arr = np.asarray(json_at, dtype=np.int64).reshape(-1, 2)
    return SampleTable(
        shard_paths=tuple(shard_paths),
        shard=np.asarray(shard, dtype=np.int32),
        offset=np.asarray(offset, dtype=np.int64),
        size=np.asarray(size, dtype=np.int64),
        num_frames=meta_arr[:, 0].astype(np.int32),
        width=meta_arr[:, 1].astype(np.int32),
        height=meta_arr[:, 2].astype(np.int32),
        label=meta_arr[:, 3].astype(np.int64),
        keys=tuple(keys),
        json_offset=json_arr[:, 0],
        json_size=json_arr[:, 1],
    )


def _key(tar: str, handles: dict, offset: int, size: int, name: str | None) -> str:
    """A member's sample key: its name up to the first dot (from the tar header for v1.1)."""
    if name is None:
        header = read_range(tar, offset - 512, 100, handles, scan=True)
        name = header.split(b"\0", 1)[0].decode("utf-8", "replace")
    return os.path.basename(name).split(".", 1)[0]


def read_sample_json(table: SampleTable, index: int) -> dict:
    """The `.json` member of sample `index`, read by its offset (ShardDirError naming the sample
    when it is missing or not a JSON object)."""
    if table.json_offset is None or table.json_offset[index] < 0:
        raise ShardDirError(f"{table.where(index)}: the sample has no .json member")
    raw = read_range(table.shard_paths[table.shard[index]], int(table.json_offset[index]),
                     int(table.json_size[index]))
    try:
        out = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ShardDirError(f"{table.where(index)}.json: not valid JSON ({exc})") from exc
    if not isinstance(out, dict):
        raise ShardDirError(f"{table.where(index)}.json: expected a JSON object")
    return out


# ---------------------------------------------------------------------------------------------
# AVA detection annotations


@dataclass(frozen=True)
class AvaSample:
    """One keyframe's annotations (the sample's `ava` json record)."""

    video_id: str
    timestamp: int
    keyframe: int  # frame of the keyframe in the stored clip
    boxes: np.ndarray  # (P, 4) float32 ground-truth x1, y1, x2, y2, frame-normalised
    labels: np.ndarray  # (P, C) bool multi-hot over class indices
    actions: tuple[tuple[int, ...], ...]  # per box, its action ids (label-map ids)
    person_ids: tuple[int | None, ...]
    proposals: np.ndarray  # (Q, 5) float32 x1, y1, x2, y2, score (a corner order as the detector gave)


@dataclass(frozen=True)
class AvaAnnotations:
    """The detection side of an AVA shard directory: one `AvaSample` per table row, and the
    manifest's `detection` section. Class index i of a model head <-> action id action_ids[i]."""

    samples: tuple[AvaSample, ...]
    classes: tuple[str, ...]
    action_ids: tuple[int, ...]
    eval_action_ids: tuple[int, ...]
    excluded: frozenset  # of (video_id, timestamp)

    @property
    def keyframes(self) -> np.ndarray:
        """(N,) int64 keyframe of every sample."""
        return np.array([s.keyframe for s in self.samples], dtype=np.int64)

    @property
    def label_map(self) -> dict[int, str]:
        """action id -> name of the evaluated classes."""
        names = dict(zip(self.action_ids, self.classes))
        return {a: names[a] for a in self.eval_action_ids}


def load_ava(shards: ShardDir) -> AvaAnnotations:
    """Every sample's `ava` record and the manifest's `detection` section, checked: boxes in
    [0, 1] (float noise up to BOX_TOLERANCE clipped), ground-truth boxes with x1 <= x2 and
    y1 <= y2 (proposals as the detector gave them), one action list per box with ids of the label map, the
    keyframe inside the clip. Raises ShardDirError naming `shard.tar:key.json` and the field."""
    where = shard_files.join(shards.path, "manifest.json")
    det = shards.manifest.get("detection")
    if not isinstance(det, dict):
        raise ShardDirError(f"{where}: no 'detection' section; this is not an AVA shard directory "
                            f"(write one with mvd-shard ava)")
    classes = tuple(str(c) for c in shards.manifest["classes"])
    try:
        action_ids = tuple(int(a) for a in det["action_ids"])
        eval_ids = tuple(int(a) for a in det.get("eval_action_ids", action_ids))
        excluded = frozenset((str(v), int(t)) for v, t in det.get("excluded", []))
    except (KeyError, TypeError, ValueError) as exc:
        raise ShardDirError(f"{where}: detection.action_ids / eval_action_ids / excluded unreadable "
                            f"({exc!r})") from exc
    if len(action_ids) != len(classes) or len(set(action_ids)) != len(action_ids):
        raise ShardDirError(f"{where}: detection.action_ids must give one distinct id per class "
                            f"({len(classes)} classes, {len(action_ids)} ids)")
    unknown = sorted(set(eval_ids) - set(action_ids))
    if unknown:
        raise ShardDirError(f"{where}: detection.eval_action_ids {unknown} are not in action_ids")
    index = {a: i for i, a in enumerate(action_ids)}
    table = shards.table
    samples = tuple(_ava_sample(table, i, index) for i in range(len(table)))
    return AvaAnnotations(samples, classes, action_ids, eval_ids, excluded)


def _ava_sample(table: SampleTable, i: int, index: dict[int, int]) -> AvaSample:
    name = f"{table.where(i)}.json"
    record = read_sample_json(table, i).get("ava")
    if not isinstance(record, dict):
        raise ShardDirError(f"{name}: no 'ava' record (not an AVA shard sample)")

    def field(key: str):
        if key not in record:
            raise ShardDirError(f"{name}: ava.{key} is missing")
        return record[key]

    def array(key: str, cols: int) -> np.ndarray:
        try:
            a = np.asarray(field(key), dtype=np.float64).reshape(-1, cols)
        except (TypeError, ValueError) as exc:
            raise ShardDirError(f"{name}: ava.{key} must be a list of {cols} numbers per row ({exc})") from exc
        if not np.isfinite(a).all():
            raise ShardDirError(f"{name}: ava.{key} holds a non-finite value")
        return a

    boxes, proposals = array("boxes", 4), array("proposals", 5)
    for key, a, ordered in (("boxes", boxes, True), ("proposals", proposals[:, :4], False)):
        bad = ((a < -BOX_TOLERANCE) | (a > 1 + BOX_TOLERANCE)).any(axis=1)
        if ordered:  # as the official evaluator: a reversed ground-truth box is an error
            bad |= (a[:, 2] < a[:, 0]) | (a[:, 3] < a[:, 1])
        if bad.any():
            b = int(np.argmax(bad))
            raise ShardDirError(f"{name}: ava.{key}[{b}] = {a[b].tolist()} is not a box x1, y1, x2, y2 "
                                f"normalised to [0, 1]" + (" with x1 <= x2, y1 <= y2" if ordered else ""))
        np.clip(a, 0.0, 1.0, out=a)
    actions = field("actions")
    if not isinstance(actions, list) or len(actions) != len(boxes):
        raise ShardDirError(f"{name}: ava.actions must hold one list of action ids per box "
                            f"({len(boxes)} boxes)")
    labels = np.zeros((len(boxes), len(index)), bool)
    for b, ids in enumerate(actions):
        for a in ids if isinstance(ids, list) else [ids]:
            if a not in index:
                raise ShardDirError(f"{name}: ava.actions[{b}] holds action id {a!r}, not in the "
                                    f"manifest's detection.action_ids")
            labels[b, index[a]] = True
    person_ids = field("person_ids") if "person_ids" in record else [None] * len(boxes)
    if not isinstance(person_ids, list) or len(person_ids) != len(boxes):
        raise ShardDirError(f"{name}: ava.person_ids must hold one entry per box")
    keyframe = field("keyframe")
    if not isinstance(keyframe, int) or not 0 <= keyframe < int(table.num_frames[i]):
        raise ShardDirError(f"{name}: ava.keyframe {keyframe!r} is not a frame of the "
                            f"{int(table.num_frames[i])}-frame clip")
    try:
        video_id, timestamp = str(field("video_id")), int(field("timestamp"))
    except (TypeError, ValueError) as exc:
        raise ShardDirError(f"{name}: ava.timestamp must be an integer ({exc})") from exc
    return AvaSample(video_id, timestamp, keyframe, boxes.astype(np.float32), labels,
                     tuple(tuple(a if isinstance(a, list) else [a]) for a in actions),
                     tuple(person_ids), proposals.astype(np.float32))
