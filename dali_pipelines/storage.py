"""The object-storage backend of `shard_files`: shard directories under an S3 prefix
(``s3://bucket/prefix``, AWS S3 or an S3-compatible store such as MinIO or Ceph). `shard_files`
is the one interface the manifest reader and the per-sample reader use; it sends URLs here.

Object storage is read with fsspec + s3fs (botocore underneath), not DALI's own S3 support: the
loaders never hand DALI a file (``reader.ClipReader`` reads each video member by offset and feeds
the bytes through an external source), so what is needed is a ranged read, which s3fs does. The
endpoint and credentials come from botocore's usual sources: ``AWS_ENDPOINT_URL`` (or
``AWS_ENDPOINT_URL_S3``) for an S3-compatible store, ``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY`` / ``AWS_PROFILE``, ``~/.aws/config`` and ``~/.aws/credentials``.

- Small files (the manifest, the ``.idx`` files) are read whole; the tars by byte range:
  ``RemoteRanges(url).pread(size, offset)`` is one ranged GET. A sequential scan over a tar (the
  table build reads every sample's 16-byte ``.meta``) uses ``RemoteRanges(url, read_ahead=True)``:
  fsspec's read-ahead cache then fetches ``READ_AHEAD`` bytes at a time instead of one request
  per member.
- The reader asks for the video members of the batch it is on and of the next one ahead of use
  (`ReadAhead`: a few threads fetch them while DALI decodes), so a request's latency overlaps
  decoding instead of adding to it.
- Transient errors (throttling, 5xx, dropped connections, timeouts) are retried by botocore's
  ``standard`` retry mode: exponential backoff with jitter, up to ``RETRIES`` attempts.
- A missing object or prefix, or denied access, is a ``StorageError`` naming the URL.

gs:// is not served: fsspec reads Google Cloud Storage through another library (gcsfs), which
this package neither depends on nor tests. s3fs is an optional dependency (the ``s3`` extra),
imported when an s3:// path is first read.
"""

from __future__ import annotations

import os
import posixpath
from concurrent.futures import Future, ThreadPoolExecutor

REMOTE_SCHEMES = ("s3",)
READ_AHEAD = 8 << 20  # bytes fetched per request by a sequential scan of a remote tar
AHEAD_THREADS = 8  # concurrent ranged GETs of ReadAhead
AHEAD_MAX = 256  # ranges ReadAhead holds (fetched or in flight) at most
RETRIES = 8  # botocore attempts per request (standard mode: exponential backoff with jitter)


class StorageError(OSError):
    """A shard file that cannot be read: missing, denied, or the store unreachable (names the URL)."""


def is_remote(path: str | os.PathLike) -> bool:
    return isinstance(path, str) and "://" in path


def check_scheme(path: str) -> None:
    scheme = path.split("://", 1)[0]
    if scheme not in REMOTE_SCHEMES:
        extra = " (gs:// would need gcsfs, which this project does not use)" if scheme == "gs" else ""
        raise StorageError(f"{path}: unsupported scheme {scheme}://; shard directories are local "
                           f"folders or {', '.join(s + '://bucket/prefix' for s in REMOTE_SCHEMES)}{extra}")


def join(url: str, name: str) -> str:
    """``url/name`` (the URL keeps its ``//``)."""
    return posixpath.join(url.rstrip("/"), name)


def filesystem():
    """The S3 filesystem (s3fs). fsspec keeps one instance per set of arguments and process (it
    drops its cache in a forked child, whose event loop would not work), so this is cheap."""
    try:
        import s3fs  # heavy optional dependency: only for s3:// shard directories
    except ImportError:
        raise StorageError("reading s3:// shard directories needs s3fs: pip install 'mvd[s3]'") from None
    # default_fill_cache=False: ranged reads must not keep a whole tar in memory. The endpoint is
    # botocore's own choice (AWS_ENDPOINT_URL_S3, else AWS_ENDPOINT_URL), passed explicitly only so
    # that fsspec's instance cache, keyed by these arguments, follows a change of it
    return s3fs.S3FileSystem(config_kwargs={"retries": {"max_attempts": RETRIES, "mode": "standard"}},
                             default_fill_cache=False, endpoint_url=endpoint())


def endpoint() -> str | None:
    """The S3 endpoint the environment names (None: AWS S3 itself, or what ~/.aws/config says)."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def _explain(url: str, exc: Exception) -> StorageError:
    if isinstance(exc, StorageError):
        return exc
    if isinstance(exc, FileNotFoundError):
        return StorageError(f"{url}: no such object (missing file, prefix or bucket)")
    if isinstance(exc, PermissionError):
        return StorageError(f"{url}: access denied ({exc}); check the AWS credentials "
                            "(AWS_ACCESS_KEY_ID / AWS_PROFILE / ~/.aws/credentials)")
    return StorageError(f"{url}: cannot read it from {endpoint() or 'AWS S3'} ({type(exc).__name__}: {exc})")


def _key(url: str) -> str:
    check_scheme(url)
    return url.split("://", 1)[1]


def exists(url: str) -> bool:
    """Whether the object exists."""
    try:
        return bool(filesystem().isfile(_key(url)))
    except Exception as exc:  # noqa: BLE001 - every store error is explained with its URL
        raise _explain(url, exc) from exc


def missing(urls: list[str]) -> list[str]:
    """The objects that are not there: one listing per prefix instead of a request per object."""
    fs = filesystem()
    listed: set[str] = set()
    for prefix in sorted({posixpath.dirname(_key(u)) for u in urls}):
        try:
            listed.update(fs.ls(prefix, detail=False, refresh=True))
        except FileNotFoundError:
            pass
        except Exception as exc:  # noqa: BLE001
            raise _explain(f"s3://{prefix}", exc) from exc
    return [u for u in urls if _key(u) not in listed]


def read_bytes(url: str) -> bytes:
    """A whole (small) object: a manifest or an index."""
    try:
        return filesystem().cat_file(_key(url))
    except Exception as exc:  # noqa: BLE001
        raise _explain(url, exc) from exc


class RemoteRanges:
    """Ranged reads of one object; with ``read_ahead`` a file object whose cache fetches
    ``READ_AHEAD`` bytes at a time (a sequential scan), else one ranged GET per read."""

    def __init__(self, url: str, read_ahead: bool, checked: bool = False):
        self.url, self.key = url, _key(url)
        self.fs = filesystem()
        self.file = None
        try:
            if read_ahead:
                self.file = self.fs.open(self.key, "rb", block_size=READ_AHEAD, cache_type="readahead")
            elif not checked:
                self.fs.info(self.key)  # a missing object is an error now, not at the first read
        except Exception as exc:  # noqa: BLE001
            raise _explain(url, exc) from exc

    def pread(self, size: int, offset: int) -> bytes:
        try:
            if self.file is not None:
                self.file.seek(offset)
                return self.file.read(size)
            return self.fs.cat_file(self.key, start=offset, end=offset + size)
        except Exception as exc:  # noqa: BLE001
            raise _explain(f"{self.url} (bytes {offset}-{offset + size - 1})", exc) from exc

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


def check_prefix(url: str) -> None:
    """A StorageError unless the prefix holds objects."""
    path = url
    try:
        found = filesystem().ls(_key(path), detail=False, refresh=True)
    except FileNotFoundError:
        found = []
    except Exception as exc:  # noqa: BLE001
        raise _explain(path, exc) from exc
    if not found:
        raise StorageError(f"{path}: no such prefix (no objects under it; expected a shard directory "
                           "uploaded from mvd-shard)")


class ReadAhead:
    """Video members fetched before they are asked for. ``want(ranges)`` starts fetching each
    ``(url, offset, size)`` not already held, on ``AHEAD_THREADS`` threads (at most ``AHEAD_MAX``
    held: the oldest is dropped for a new one); ``pread(url, size, offset)`` returns a fetched
    range (waiting for one in flight) and forgets it, or reads it now. Local files are never
    fetched ahead (the page cache does that). One per process: the threads are made on first use
    and are not carried into a forked or spawned worker (``__getstate__``)."""

    def __init__(self):
        self._pool: ThreadPoolExecutor | None = None
        self._pid = -1
        self._held: dict[tuple[str, int, int], Future] = {}

    def __getstate__(self):
        return {"_pool": None, "_pid": -1, "_held": {}}

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None or self._pid != os.getpid():
            self._pool, self._pid, self._held = ThreadPoolExecutor(AHEAD_THREADS), os.getpid(), {}
        return self._pool

    def want(self, ranges) -> None:
        pool = self._executor()
        for url, offset, size in ranges:
            key = (url, offset, size)
            if is_remote(url) and key not in self._held:
                while len(self._held) >= AHEAD_MAX:  # the oldest was never asked for (a replaced sample)
                    self._held.pop(next(iter(self._held)))
                self._held[key] = pool.submit(RemoteRanges(url, read_ahead=False, checked=True).pread,
                                              size, offset)

    def pread(self, url: str, size: int, offset: int) -> bytes | None:
        """The range if it was fetched ahead (or is in flight), else None."""
        if self._pid != os.getpid():
            return None
        future = self._held.pop((url, offset, size), None)
        return None if future is None else future.result()
