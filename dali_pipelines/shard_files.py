"""Bytes off a shard directory, in one place: a small file whole (manifest.json, the `.idx`
indexes) and a byte range of a tar (one member of one sample). Local files today; another
storage backend plugs in here and nowhere else.

Plain Python (no numpy, no DALI): the manifest reader and the per-sample reader both use it.
"""

from __future__ import annotations

import os


def read_text(path: str | os.PathLike) -> str:
    """A small file of the shard directory as text (UTF-8)."""
    with open(path, encoding="utf-8") as f:
        return f.read()


def read_range(path: str, offset: int, size: int, handles: dict | None = None) -> bytes:
    """`size` bytes of `path` from `offset` (fewer only when the file ends first: the caller
    checks). `handles` caches one open file per (process, path) across calls (a reader's, so a
    forked worker opens its own); without it the file is opened for this read alone."""
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
        os.close(handles.pop(key))
