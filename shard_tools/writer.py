"""Writing one shard: a WebDataset tar, its DALI index, atomically.

The tar is written under a hidden temporary name, fsync'ed and renamed, so a killed run never
leaves a file named like a shard that is half written. Members are plain ustar entries with
fixed metadata (mtime 0, uid/gid 0), so the same samples always give the same bytes.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

from shard_tools.sample import split_member_name

INDEX_VERSION = "v1.2"
PARTIAL_SUFFIX = ".partial"


def shard_name(index: int) -> str:
    return f"shard-{index:06d}.tar"


def index_name(tar_name: str) -> str:
    return tar_name[: -len(".tar")] + ".idx"


def partial_path(path: Path) -> Path:
    return path.with_name(f".{path.name}{PARTIAL_SUFFIX}")


@dataclass(frozen=True)
class ShardFile:
    name: str
    index: str
    samples: int
    bytes: int
    sha256: str
    index_sha256: str


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``path`` via a temporary name + fsync + rename."""
    tmp = partial_path(path)
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def dali_index_text(tar_path: Path) -> str:
    """The DALI webdataset index of a tar, exactly as DALI's ``wds2idx`` writes it.

    Format v1.2: a line ``v1.2 <samples>``, then one line per sample listing each member as
    ``<ext> <data offset> <size> <member name>``; members are grouped into a sample while
    consecutive regular files share the key (name up to the first dot of the base name).
    """
    samples: list[list[str]] = []
    last_key = None
    with tarfile.open(tar_path, "r:") as tf:
        for member in tf:
            if not member.isreg():
                continue
            key, ext = split_member_name(member.name)
            if not key or key.endswith("/"):
                continue
            entry = f"{ext} {member.offset_data} {member.size} {member.name}"
            if key != last_key:
                samples.append([entry])
                last_key = key
            else:
                samples[-1].append(entry)
    if not samples:
        raise ValueError(f"{tar_path} holds no samples")
    return f"{INDEX_VERSION} {len(samples)}\n" + "".join(" ".join(s) + "\n" for s in samples)


class _HashingFile(io.RawIOBase):
    """A write-only file that hashes what passes through it (tarfile writes sequentially)."""

    def __init__(self, f):
        self.f, self.h, self.pos = f, hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.f.write(data)
        self.h.update(data)
        self.pos += len(data)
        return len(data)

    def tell(self) -> int:
        return self.pos


class ShardWriter:
    """Write one shard: ``add(members)`` per sample, then ``finish()`` renames it into place.

    ``abort()`` (or leaving the ``with`` block on an exception) deletes the temporary file.
    """

    def __init__(self, out_dir: Path, name: str):
        self.path = Path(out_dir) / name
        self.tmp = partial_path(self.path)
        self.file = open(self.tmp, "wb")
        self.hashing = _HashingFile(self.file)
        self.tar = tarfile.open(fileobj=self.hashing, mode="w", format=tarfile.USTAR_FORMAT)
        self.samples = 0

    def add(self, members: list[tuple[str, bytes]]) -> None:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            self.tar.addfile(info, io.BytesIO(data))
        self.samples += 1

    def finish(self) -> ShardFile:
        self.tar.close()
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        size, digest = self.hashing.pos, self.hashing.h.hexdigest()
        index_text = dali_index_text(self.tmp).encode("ascii")
        idx_path = self.path.with_name(index_name(self.path.name))
        atomic_write_bytes(idx_path, index_text)
        os.replace(self.tmp, self.path)
        fsync_dir(self.path.parent)
        return ShardFile(self.path.name, idx_path.name, self.samples, size, digest,
                         hashlib.sha256(index_text).hexdigest())

    def abort(self) -> None:
        self.file.close()
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
