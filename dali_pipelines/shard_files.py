"""Bytes off a shard directory, in one place: a small file whole (manifest.json, the `.idx`
indexes) and a byte range of a tar (one member of one sample). A shard directory is a local
folder or an object-storage prefix (`s3://bucket/prefix`): URLs go to the `storage` backend,
paths to the file system, here and nowhere else.

Plain Python (no numpy, no DALI): the manifest reader and the per-sample reader both use it.
"""

from __future__ import annotations

import os

from dali_pipelines import storage


def is_remote(path: str | os.PathLike) -> bool:
    """Whether `path` is an object-storage URL (`s3://...`) rather than a local path."""
    return storage.is_remote(path)


def join(base: str | os.PathLike, name: str):
    """`base/name`: a URL for a URL (keeping its `//`), else a `Path`-compatible local path."""
    return storage.join(base, name) if is_remote(base) else os.path.join(os.fspath(base), name)


def resolve(path: str | os.PathLike) -> str:
    """An absolute local path (symlinks resolved), or the URL as given."""
    return str(path) if is_remote(path) else os.path.realpath(os.fspath(path))


def is_dir(path: str | os.PathLike) -> bool:
    """A local directory, or a prefix holding objects (a missing one is a StorageError naming it:
    `storage.check_prefix`)."""
    if is_remote(path):
        storage.check_prefix(path)
        return True
    return os.path.isdir(path)


def is_file(path: str | os.PathLike) -> bool:
    return storage.exists(path) if is_remote(path) else os.path.isfile(path)


def missing(paths: list) -> list[str]:
    """The paths (or URLs) that are not there."""
    urls = [str(p) for p in paths if is_remote(p)]
    gone = set(storage.missing(urls)) if urls else set()
    return [str(p) for p in paths if (str(p) in gone if is_remote(p) else not os.path.isfile(p))]


def read_text(path: str | os.PathLike) -> str:
    """A small file of the shard directory as text (UTF-8)."""
    if is_remote(path):
        return storage.read_bytes(path).decode("utf-8")
    with open(path, encoding="utf-8") as f:
        return f.read()


def read_range(path: str, offset: int, size: int, handles: dict | None = None, scan: bool = False) -> bytes:
    """`size` bytes of `path` from `offset` (fewer only when the file ends first: the caller
    checks). `handles` caches one open file per (process, path) across calls (a reader's, so a
    forked worker opens its own); without it the file is opened for this read alone. `scan`: the
    caller reads the file front to back (an object is then read `storage.READ_AHEAD` bytes at a
    time; a local file needs no help)."""
    if is_remote(path):
        key = (os.getpid(), path)
        obj = None if handles is None else handles.get(key)
        if obj is None:
            obj = storage.RemoteRanges(path, read_ahead=scan)
            if handles is not None:
                handles[key] = obj
        return obj.pread(size, offset)
    if handles is None:
        fd = os.open(path, os.O_RDONLY)
        try:
            return os.pread(fd, size, offset)
        finally:
            os.close(fd)
    key = (os.getpid(), path)
    fd = handles.get(key)
    if fd is None:
        fd = handles[key] = os.open(path, os.O_RDONLY)
    return os.pread(fd, size, offset)


def close_all(handles: dict) -> None:
    """Close the files `read_range` opened into `handles` in this process, and forget them."""
    pid = os.getpid()
    for key in [k for k in handles if k[0] == pid]:
        handle = handles.pop(key)
        if isinstance(handle, int):
            os.close(handle)
        else:
            handle.close()
