"""Load and check a shard directory (format `mvd-shards/1`, see ARCHITECTURE.md) and build the
sample table the loaders read from, without decoding anything.

The table comes from the DALI `.idx` file beside each tar (offset and size of every member) and
each sample's 16-byte `.meta` member (num_frames, width, height, label as little-endian int32).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FORMAT = "mvd-shards/1"
META_MEMBERS = ("cls", "json", "meta")
META_DTYPE = np.dtype("<i4")

# PyAV codec names each DALI video decoder backend handles (DALI 2.4 documentation).
DALI_CODECS = {
    "cpu": frozenset({"vp8", "vp9", "mjpeg"}),
    "gpu": frozenset({"h264", "hevc", "vp8", "vp9", "av1", "mjpeg", "mpeg4"}),
}


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
    label: np.ndarray  # (N,) int64
    keys: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.keys)

    def where(self, index: int) -> str:
        """`shard-000000.tar:key` for messages."""
        return f"{os.path.basename(self.shard_paths[self.shard[index]])}:{self.keys[index]}"


@dataclass(frozen=True)
class ShardDir:
    """A checked shard directory: its manifest and sample table."""

    path: Path
    manifest: dict
    table: SampleTable

    @property
    def classes(self) -> list[str]:
        return list(self.manifest["classes"])

    @property
    def codecs(self) -> dict[str, int]:
        return dict(self.manifest.get("codecs", {}))


def load_shard_dir(data_dir: str | os.PathLike) -> ShardDir:
    """Read `data_dir/manifest.json`, check every listed shard and index, build the table.

    Raises ShardDirError naming the missing or inconsistent file.
    """
    path = Path(data_dir)
    if not path.is_dir():
        raise ShardDirError(f"{path}: no such directory (expected a shard directory from mvd-shard)")
    manifest_path = path / "manifest.json"
    if not manifest_path.is_file():
        raise ShardDirError(
            f"{path}: no manifest.json; this is not a shard directory written by mvd-shard"
        )
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as exc:
        raise ShardDirError(f"{manifest_path}: not valid JSON ({exc})") from exc
    if manifest.get("format") != FORMAT:
        raise ShardDirError(
            f"{manifest_path}: format {manifest.get('format')!r}, expected {FORMAT!r}"
        )
    for field in ("samples", "classes", "shards"):
        if field not in manifest:
            raise ShardDirError(f"{manifest_path}: missing field {field!r}")
    if not manifest["shards"]:
        raise ShardDirError(f"{manifest_path}: lists no shards")

    missing = [
        str(path / entry[part])
        for entry in manifest["shards"]
        for part in ("name", "index")
        if not (path / entry[part]).is_file()
    ]
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


def parse_index(idx_path: Path) -> list[dict[str, tuple[int, int, str | None]]]:
    """One dict per sample of a DALI webdataset index: member extension -> (offset, size, name).

    Reads `v1.2` (ext offset size name, repeated) and `v1.1` (ext offset size, repeated; name None).
    """
    lines = idx_path.read_text().splitlines()
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


def _build_table(path: Path, manifest: dict) -> SampleTable:
    shard_paths, shard, offset, size, meta, keys = [], [], [], [], [], []
    for s, entry in enumerate(manifest["shards"]):
        tar_path = path / entry["name"]
        idx_path = path / entry["index"]
        samples = parse_index(idx_path)
        if "samples" in entry and entry["samples"] != len(samples):
            raise ShardDirError(
                f"{idx_path}: {len(samples)} samples, manifest says {entry['samples']}"
            )
        shard_paths.append(str(tar_path.resolve()))
        with open(tar_path, "rb") as f:
            fd = f.fileno()
            for members in samples:
                video = [ext for ext in members if ext not in META_MEMBERS]
                key = _key(fd, *members[(video or list(members))[0]])
                if len(video) != 1 or "meta" not in members:
                    raise ShardDirError(
                        f"{tar_path.name}:{key}: expected one video member and a .meta member, "
                        f"found {sorted(members)}"
                    )
                meta_off, meta_size, _ = members["meta"]
                raw = os.pread(fd, 16, meta_off)
                if meta_size != 16 or len(raw) != 16:
                    raise ShardDirError(f"{tar_path.name}:{key}.meta: expected 16 bytes")
                meta.append(np.frombuffer(raw, META_DTYPE))
                off, sz, _ = members[video[0]]
                shard.append(s)
                offset.append(off)
                size.append(sz)
                keys.append(key)
    meta_arr = np.stack(meta) if meta else np.zeros((0, 4), META_DTYPE)
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
    )


def _key(fd: int, offset: int, size: int, name: str | None) -> str:
    """A member's sample key: its name up to the first dot (from the tar header for v1.1)."""
    if name is None:
        header = os.pread(fd, 100, offset - 512)
        name = header.split(b"\0", 1)[0].decode("utf-8", "replace")
    return os.path.basename(name).split(".", 1)[0]

