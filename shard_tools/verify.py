"""``mvd-shard verify DIR``: re-read every shard and check it against the manifest.

Checks, per shard: the tar exists with the manifest's size and sha256; its DALI index matches the
one computed from the tar; every sample has its video, ``cls``, ``json`` and ``meta`` members
with consistent contents (class index -1, "no clip label", in a detection set such as AVA, whose
labels live in the json); the sample count matches. Also: the total sample count, the per-codec
counts, unique keys across shards, and no stray ``shard-*.tar`` the manifest does not list.

It also says how many samples a decoder target (by default the GPU set, NVDEC on Ampere/Hopper)
cannot take, by each sample's recorded stream facts or, in folders made before those were
recorded, by probing the sample's video, and the mvd-shard command that makes a folder it takes
(:func:`fix_command`).
"""

from __future__ import annotations

import hashlib
import json
import shlex
import struct
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from shard_tools.manifest import ManifestError, load_manifest
from shard_tools.probe import probe_video
from shard_tools.sample import META, split_member_name
from shard_tools.writer import dali_index_text
from video_caps.decoders import DEFAULT_TARGET, StreamFacts, decoder, refusal

# the command-line flag of each input a source's manifest records (manifest["options"] key -> flag)
_INPUT_FLAGS = {
    "kinetics": {"videos": "--videos", "csv": "--csv", "classes": "--classes"},
    "ssv2": {"videos": "--videos", "labels": "--labels", "annotations": "--annotations"},
    "list": {"root": "--root", "list": "--list", "classes": "--classes"},
    "ucf101": {"videos": "--videos", "class_index": "--class-index", "split_file": "--split-file"},
    "hmdb51": {"videos": "--videos", "splits_dir": "--splits-dir", "split": "--split", "subset": "--subset"},
}
_MAX_EXAMPLES = 10


@dataclass
class VerifyReport:
    shards: int = 0
    samples: int = 0
    problems: list[str] = field(default_factory=list)
    target: str = DEFAULT_TARGET
    not_taken: dict[str, int] = field(default_factory=dict)  # samples the target cannot take, per property
    not_taken_examples: list[str] = field(default_factory=list)  # "shard:key: reason", the first few
    probed: int = 0  # samples without recorded stream facts, probed here
    fix: str | None = None  # the command that makes a folder the target takes

    @property
    def ok(self) -> bool:
        return not self.problems


def _stream_facts(info: dict, video: bytes, ext: str, report: VerifyReport) -> StreamFacts | None:
    """The sample's recorded stream facts, or (a folder made before they were recorded) the facts
    found by probing its video; None when the video cannot be probed (reported elsewhere)."""
    if isinstance(info.get("stream"), dict):
        return StreamFacts.from_json(info["stream"])
    report.probed += 1
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"video.{ext}"
        path.write_bytes(video)
        probe = probe_video(path)
    return probe.info.stream if probe.ok else None


def _check_decoder(where: str, info: dict, video: bytes, ext: str, report: VerifyReport) -> None:
    facts = _stream_facts(info, video, ext, report)
    found = refusal(decoder(report.target), facts) if facts is not None else None
    if found is not None:
        report.not_taken[found.property] = report.not_taken.get(found.property, 0) + 1
        if len(report.not_taken_examples) < _MAX_EXAMPLES:
            report.not_taken_examples.append(f"{where}: {found.text}")


def _check_sample(shard: str, key: str, members: dict[str, bytes], num_classes: int,
                  codecs: dict[str, int], detection: bool, report: VerifyReport) -> list[str]:
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
    else:
        _check_decoder(f"{shard}:{key}", info, members[videos[0]], videos[0], report)
    return problems


def _read_shard(path: Path, num_classes: int, codecs: dict[str, int],
                detection: bool, report: VerifyReport) -> tuple[str, list[str], list[str]]:
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
                    problems += _check_sample(path.name, current, members, num_classes, codecs, detection, report)
                current, members = key, {}
                keys.append(key)
            members[ext] = tf.extractfile(member).read()
        if current is not None:
            problems += _check_sample(path.name, current, members, num_classes, codecs, detection, report)
        while hashing.read(1 << 20):  # hash the end-of-archive padding too
            pass
    return h.hexdigest(), keys, problems


def fix_command(manifest: dict, out_dir: Path, target: str) -> str:
    """The mvd-shard command that packs the folder's sources again for ``target``, into a new
    folder beside ``out_dir``: streams the target takes are copied, the others re-encoded."""
    options = manifest.get("options", {})
    new_out = Path(out_dir).with_name(f"{Path(out_dir).name}-{target}")
    flags = _INPUT_FLAGS.get(manifest.get("dataset"))
    if flags is None:  # ava, synth: their clips are always encoded; re-encode them with H.264
        return (f"re-run the mvd-shard {manifest.get('dataset')} command that wrote {out_dir} with "
                f"--codec h264 (and a size the target takes) into --out {new_out}")
    args = ["mvd-shard", manifest["dataset"]]
    for key, flag in flags.items():
        if options.get(key) is not None:
            args += [flag, str(options[key])]
    for key, flag in (("seed", "--seed"), ("shard_size_mb", "--shard-size-mb"), ("shard_samples", "--shard-samples"),
                      ("max_gop", "--max-gop")):
        if options.get(key) is not None:
            args += [flag, str(options[key])]
    reencode = options.get("reencode")
    if reencode:
        args += ["--reencode", "--codec", reencode["codec"], "--gop", str(reencode["gop"])]
        if reencode.get("short_side") is not None:
            args += ["--short-side", str(reencode["short_side"])]
    args += ["--target", target, "--out", str(new_out)]
    return shlex.join(args)


def verify_shards(out_dir: Path, target: str = DEFAULT_TARGET) -> VerifyReport:
    """Check ``out_dir`` against its manifest and count the samples ``target`` cannot take."""
    out_dir = Path(out_dir)
    decoder(target)
    report = VerifyReport(target=target)
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
            digest, keys, problems = _read_shard(path, num_classes, codecs, "detection" in manifest, report)
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
    if report.not_taken:
        report.fix = fix_command(manifest, out_dir, target)
    return report
