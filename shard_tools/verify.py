"""``mvd-shard verify DIR``: re-read every shard and check it against the manifest.

Checks, per shard: the tar exists with the manifest's size and sha256; its DALI index matches the
one computed from the tar; every sample has its video, ``cls``, ``json`` and ``meta`` members
with consistent contents (class index -1, "no clip label", in a detection set such as AVA, whose
labels live in the json); the sample count matches. Also: the total sample count, the per-codec
counts, unique keys across shards, and no stray ``shard-*.tar`` the manifest does not list.
"""

from __future__ import annotations

import hashlib
import json
import struct
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from shard_tools.manifest import ManifestError, load_manifest
from shard_tools.sample import META, split_member_name
from shard_tools.writer import dali_index_text


@dataclass
class VerifyReport:
    shards: int = 0
    samples: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _check_sample(shard: str, key: str, members: dict[str, bytes], num_classes: int,
                  codecs: dict[str, int], detection: bool) -> list[str]:
    where = f"{shard}: sample {key!r}"
    videos = [ext for ext in members if ext not in ("cls", "json", "meta")]
    missing = [ext for ext in ("cls", "json", "meta") if ext not in members]
    if missing or len(videos) != 1:
        return [f"{where} has members {sorted(members)}; expected one video plus cls, json, meta"]
    try:
        label = int(members["cls"].decode("ascii"))
        info = json.loads(members["json"])
        meta = META.unpack(members["meta"])
    except (ValueError, struct.error) as err:
        return [f"{where}: unreadable cls/json/meta ({err})"]
    codecs[info.get("codec")] = codecs.get(info.get("codec"), 0) + 1
    problems = []
    if detection and label != -1:
        problems.append(f"{where}: class index {label} in a detection set, whose samples carry -1")
    elif not detection and not 0 <= label < num_classes:
        problems.append(f"{where}: class index {label} outside 0..{num_classes - 1}")
    expect = (info.get("num_frames"), info.get("width"), info.get("height"), info.get("label"))
    if meta != expect or info.get("label") != label:
        problems.append(f"{where}: meta {meta} / cls {label} disagree with json {expect}")
    if len(members[videos[0]]) == 0:
        problems.append(f"{where}: empty video member")
    return problems


def _read_shard(path: Path, num_classes: int, codecs: dict[str, int],
                detection: bool) -> tuple[str, list[str], list[str]]:
    """(sha256, keys in order, problems) of one tar, reading it once; counts codecs into ``codecs``."""
    h = hashlib.sha256()

    class _Hashing:
        def __init__(self, f):
            self.f = f

        def read(self, n=-1):
            data = self.f.read(n)
            h.update(data)
            return data

    keys, problems, current, members = [], [], None, {}
    with open(path, "rb") as f, tarfile.open(fileobj=(hashing := _Hashing(f)), mode="r|") as tf:
        for member in tf:
            if not member.isreg():
                continue
            key, ext = split_member_name(member.name)
            if key != current:
                if current is not None:
                    problems += _check_sample(path.name, current, members, num_classes, codecs, detection)
                current, members = key, {}
                keys.append(key)
            members[ext] = tf.extractfile(member).read()
        if current is not None:
            problems += _check_sample(path.name, current, members, num_classes, codecs, detection)
        while hashing.read(1 << 20):  # hash the end-of-archive padding too
            pass
    return h.hexdigest(), keys, problems


def verify_shards(out_dir: Path) -> VerifyReport:
    out_dir = Path(out_dir)
    report = VerifyReport()
    try:
        manifest = load_manifest(out_dir)
    except ManifestError as err:
        report.problems.append(str(err))
        return report
    num_classes = len(manifest["classes"])
    seen: dict[str, str] = {}
    codecs: dict[str, int] = {}
    for shard in manifest["shards"]:
        path = out_dir / shard["name"]
        report.shards += 1
        if not path.is_file():
            report.problems.append(f"{shard['name']}: listed in the manifest but missing")
            continue
        if path.stat().st_size != shard["bytes"]:
            report.problems.append(f"{shard['name']}: {path.stat().st_size} bytes, manifest says {shard['bytes']}")
        try:
            digest, keys, problems = _read_shard(path, num_classes, codecs, "detection" in manifest)
        except (tarfile.TarError, OSError, EOFError) as err:
            report.problems.append(f"{shard['name']}: cannot be read as a tar ({err})")
            continue
        report.problems += problems
        if digest != shard["sha256"]:
            report.problems.append(f"{shard['name']}: sha256 {digest[:12]}... does not match the manifest's "
                                   f"{shard['sha256'][:12]}... (the file changed or is corrupt)")
        if len(keys) != shard["samples"]:
            report.problems.append(f"{shard['name']}: {len(keys)} samples, manifest says {shard['samples']}")
        for key in keys:
            if key in seen:
                report.problems.append(f"{shard['name']}: key {key!r} also in {seen[key]}")
            seen[key] = shard["name"]
        report.samples += len(keys)
        index = out_dir / shard.get("index", "")
        if not index.is_file():
            report.problems.append(f"{shard['name']}: DALI index {index.name} missing")
        elif keys and index.read_text() != dali_index_text(path):
            report.problems.append(f"{shard['name']}: DALI index {index.name} does not match the tar")
    if report.samples != manifest["samples"] and not any("missing" in p for p in report.problems):
        report.problems.append(f"{report.samples} samples in the shards, manifest says {manifest['samples']}")
    if report.ok and codecs != manifest.get("codecs", {}):
        found = dict(sorted(codecs.items()))
        report.problems.append(f"codec counts in the shards {found} differ from the manifest's "
                               f"{manifest.get('codecs')}")
    listed = {s["name"] for s in manifest["shards"]}
    for stray in sorted(out_dir.glob("shard-*.tar")):
        if stray.name not in listed:
            report.problems.append(f"{stray.name}: not listed in the manifest")
    return report
