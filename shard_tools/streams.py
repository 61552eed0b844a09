"""The manifest's ``"streams"`` summary: what the packed streams are, and what was re-encoded why.

Counted per shard while it fills (so a resumed run and the parts of an array job add up to the
same summary) and merged for the manifest:

- ``pix_fmts``: samples per pixel format;
- ``size_bands``: samples per band of the display size's short side (:data:`SIZE_BANDS`);
- ``gop``: samples per band of the largest key frame interval in frames (:data:`GOP_BANDS`);
- ``b_frames`` / ``vfr``: samples with B-frames / a variable frame rate;
- ``kinds``: the distinct (codec, chroma, bit depth) with their coded size range
  (:func:`video_caps.decoders.add_kind`), enough to tell whether a decoder takes every sample;
- ``reencoded``: samples re-encoded to suit the target decoder, per property that made them.
"""

from __future__ import annotations

from video_caps.decoders import StreamFacts, add_kind, merge_kinds

# (lower bound, name): a value falls in the last band whose bound it reaches
SIZE_BANDS = ((0, "<128"), (128, "128-239"), (240, "240-359"), (360, "360-479"), (480, "480-719"),
              (720, "720-1079"), (1080, ">=1080"))
GOP_BANDS = ((1, "1"), (2, "2-16"), (17, "17-32"), (33, "33-64"), (65, "65-128"), (129, "129-256"), (257, ">256"))
KEYFRAME_INTERVAL = "keyframe interval"  # the re-encode reason of --max-gop


def _band(value: int, bands) -> str:
    name = bands[0][1]
    for bound, label in bands:
        if value >= bound:
            name = label
    return name


def empty_summary() -> dict:
    return {"pix_fmts": {}, "size_bands": {}, "gop": {}, "b_frames": 0, "vfr": 0, "kinds": {}, "reencoded": {}}


def _add(counts: dict[str, int], key: str, n: int = 1) -> None:
    counts[key] = counts.get(key, 0) + n


def count_stream(summary: dict, facts: StreamFacts, reencoded: str | None) -> None:
    """Count one packed sample (``reencoded``: the property it was re-encoded for, if it was)."""
    _add(summary["pix_fmts"], facts.pix_fmt)
    _add(summary["size_bands"], _band(min(facts.width, facts.height), SIZE_BANDS))
    _add(summary["gop"], _band(facts.max_keyframe_interval, GOP_BANDS))
    summary["b_frames"] += int(facts.b_frames)
    summary["vfr"] += int(facts.vfr)
    add_kind(summary["kinds"], facts)
    if reencoded is not None:
        _add(summary["reencoded"], reencoded)


def merge_summaries(summaries: list[dict]) -> dict:
    """One summary of many (shards of a run, parts of an array job), with sorted keys."""
    out = empty_summary()
    for s in summaries:
        for field in ("pix_fmts", "size_bands", "gop", "reencoded"):
            for key, n in s.get(field, {}).items():
                _add(out[field], key, n)
        out["b_frames"] += s.get("b_frames", 0)
        out["vfr"] += s.get("vfr", 0)
        merge_kinds(out["kinds"], s.get("kinds", {}))
    order = {"size_bands": [b for _, b in SIZE_BANDS], "gop": [b for _, b in GOP_BANDS]}
    for field in ("pix_fmts", "size_bands", "gop", "reencoded", "kinds"):
        rank = order.get(field)
        out[field] = dict(sorted(out[field].items(), key=lambda kv: rank.index(kv[0]) if rank else kv[0]))
    return out
