"""One sample of an ``mvd-shards/1`` shard: its tar members and how each is encoded.

Members of a sample share its key (no dot in it):

- ``<key>.<ext>``  the video bytes (``ext`` = the file's own extension, lowercased);
- ``<key>.cls``    class index as ASCII text;
- ``<key>.json``   ``{"num_frames", "fps", "width", "height", "codec", "label", "label_name", "source"}``
                   plus ``"stream"`` (the stream's facts, see :class:`video_caps.decoders.StreamFacts`;
                   absent in folders made before it) and any dataset fields (AVA: ``"ava"``);
- ``<key>.meta``   16 bytes, little-endian int32 ``num_frames, width, height, label``.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

from video_caps.decoders import StreamFacts

FORMAT = "mvd-shards/1"
META = struct.Struct("<4i")  # num_frames, width, height, label
TAR_BLOCK = 512


@dataclass(frozen=True)
class VideoInfo:
    """What decoding a video with PyAV found: frames counted by decoding, fps, size, codec."""

    num_frames: int
    fps: float
    width: int
    height: int
    codec: str  # PyAV canonical codec name: h264, hevc, vp9, vp8, mjpeg, ...
    stream: StreamFacts | None = None  # what decides which decoders take it


def pack_meta(num_frames: int, width: int, height: int, label: int) -> bytes:
    return META.pack(num_frames, width, height, label)


def unpack_meta(data: bytes) -> tuple[int, int, int, int]:
    """``(num_frames, width, height, label)`` from a ``.meta`` member."""
    return META.unpack(data)


def sample_json(info: VideoInfo, label: int, label_name: str, source: str) -> dict:
    stream = {"stream": info.stream.to_json()} if info.stream is not None else {}
    return {**stream,
        "num_frames": info.num_frames,
        "fps": info.fps,
        "width": info.width,
        "height": info.height,
        "codec": info.codec,
        "label": label,
        "label_name": label_name,
        "source": source,
    }


def sample_members(
    key: str, ext: str, video: bytes, info: VideoInfo, label: int, label_name: str, source: str,
    json_fields: dict | None = None,
) -> list[tuple[str, bytes]]:
    """The tar members of one sample, in the order they are written; ``json_fields`` are added
    to the json (they may not replace the standard fields)."""
    if "." in key or "/" in key:
        raise ValueError(f"sample key {key!r} must not contain '.' or '/'")
    fields = sample_json(info, label, label_name, source)
    clash = sorted(set(fields) & set(json_fields or {}))
    if clash:
        raise ValueError(f"sample {key!r}: dataset json fields {clash} would replace standard fields")
    meta = json.dumps({**fields, **(json_fields or {})}, sort_keys=True)
    return [
        (f"{key}.{ext}", video),
        (f"{key}.cls", str(label).encode("ascii")),
        (f"{key}.json", meta.encode("utf-8")),
        (f"{key}.meta", pack_meta(info.num_frames, info.width, info.height, label)),
    ]


def split_member_name(name: str) -> tuple[str, str]:
    """WebDataset's rule: the key is the name up to the first dot of its last path part."""
    dot = name.find(".", name.rfind("/") + 1)
    if dot < 0:
        return name, ""
    return name[:dot], name[dot + 1 :]


def tar_bytes(members: list[tuple[str, bytes]]) -> int:
    """Bytes the members take in a ustar archive: a header block each plus padded data."""
    return sum(TAR_BLOCK + -(-len(data) // TAR_BLOCK) * TAR_BLOCK for _, data in members)
