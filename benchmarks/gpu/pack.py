"""`python -m benchmarks.gpu.pack --out DIR`: pack what the GPU check needs into batches.

The GPU machine (shared/GPU.md) has torch but lacks:

- DALI and its small dependencies (`WHEELS`), pinned to constraints.txt's versions, as wheels
  for CPython 3.12 on manylinux_2_28 x86_64;
- PyAV (`dali_pipelines.decode` imports it, so `import dali_pipelines` needs it; it is the CPU
  decode path of H.264 / HEVC and the loader benchmark's baseline), webdataset and braceexpand
  (tests/shard_tools import webdataset, and `pytest -m cuda` collects every test module), and
  pytest-timeout (setup.cfg's per-test timeout);
- an encoder for shards, so the shard sets are made here (`SHARD_SETS`): `check`, H.264, HEVC
  and VP9 at 320x240, GOP 16, for the decode check; `loader` and `step`, the shards
  `mvd-bench loader / step --device gpu --work DIR` look for under DIR, made by those modules'
  own `synth_shards` so that names and options match.

Files above 50 MiB are split into `NAME.partNN` pieces; the pieces are grouped into batches of at
most 60 MiB (a device call carries 64 MiB with the working tree); DIR/MANIFEST.json
(`benchmarks.gpu.manifest`) records files, sha256s, parts, batches and the calls that carry
them. DIR/batches/batch-N/ hold the pieces, each with a copy of the manifest.

    python -m benchmarks.gpu.pack --download --wheels /tmp/mvd-gpu-wheels --out /tmp/x  # network
    python -m benchmarks.gpu.pack --wheels /tmp/mvd-gpu-wheels                  # -> .gpu-pack/

Without `--download` nothing is fetched: the wheels must already be in --wheels.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import shlex
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from packaging.tags import Tag, compatible_tags, cpython_tags
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

from benchmarks import loader as loader_bench
from benchmarks import step as step_bench
from benchmarks.gpu.manifest import (BATCH_BYTES, FORMAT, MANIFEST, PART_BYTES, SAFE_NAME, MiB,
                                     part_name, sha256_file)
from shard_tools.synth import make_synth_dataset

REPO = Path(__file__).resolve().parents[2]
CONSTRAINTS = REPO / "constraints.txt"
DEFAULT_OUT = REPO / ".gpu-pack"
# What the GPU machine lacks (see the module docstring), by distribution name.
WHEELS = ("nvidia-dali-cuda130", "astunparse", "gast", "six", "optree", "makefun", "libcst",
          "nvtx", "av", "webdataset", "braceexpand", "pytest-timeout")
# The GPU machine: CPython 3.12, glibc 2.28 or newer (its torch 2.11 wheels are manylinux_2_28).
PYTHON = (3, 12)
PLATFORMS = tuple(f"manylinux_2_{m}_x86_64" for m in range(28, 16, -1)) + ("manylinux2014_x86_64",)
SHARD_SETS = ("check", "loader", "step")
# A shard set past this size is refused before encoding: it would cost a batch of its own.
MAX_SET_BYTES = 40 * MiB
# Encoded bytes per pixel-frame of the synthetic clips (noisy on purpose), measured at 320x240,
# GOP 16: H.264 CRF 23 0.031, VP9 0.026, HEVC 0.011; the estimate takes the largest, rounded up.
BYTES_PER_PIXEL_FRAME = 0.035
# Kept free in every batch for its copy of MANIFEST.json.
MANIFEST_RESERVE = 256 * 1024
DEVICE_CALL_BYTES = 64 * MiB  # what one call of the device tool carries, working tree included
PARTS_DIR = "/tmp/mvd-gpu-parts"  # where run.sh --receive gathers the batches on the GPU machine


class PackError(RuntimeError):
    """The pack cannot be made as asked (names the file, setting or fix)."""


# ------------------------------------------------------------------------------------- wheels


def requirements(constraints: Path = CONSTRAINTS, wanted: tuple[str, ...] = WHEELS
                 ) -> list[tuple[str, str]]:
    """(name, version) of each wanted distribution, pinned as in constraints.txt."""
    pins = {}
    for line in Path(constraints).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[canonicalize_name(name)] = version.strip()
    missing = [w for w in wanted if canonicalize_name(w) not in pins]
    if missing:
        raise PackError(f"{constraints} pins no version of {', '.join(missing)}")
    return [(w, pins[canonicalize_name(w)]) for w in wanted]


def download_wheels(dest: Path, reqs: list[tuple[str, str]]) -> None:
    """`pip download` the pinned wheels for the GPU machine's Python and platform, without their
    dependencies, into `dest`. Needs the network: run by hand, never from the tests."""
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--python-version", ".".join(map(str, PYTHON)), "--implementation", "cp",
           "--abi", f"cp{PYTHON[0]}{PYTHON[1]}", "--abi", "abi3", "--abi", "none",
           *(a for p in ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
                         "any") for a in ("--platform", p)),
           "-d", str(dest), *(f"{n}=={v}" for n, v in reqs)]
    print("$ " + shlex.join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def target_tags() -> frozenset[Tag]:
    """The wheel tags pip accepts on the GPU machine (CPython 3.12, manylinux x86_64)."""
    abi = f"cp{PYTHON[0]}{PYTHON[1]}"
    return frozenset([*cpython_tags(PYTHON, abis=[abi], platforms=PLATFORMS),
                      *compatible_tags(PYTHON, abi, PLATFORMS)])


def find_wheels(wheels_dir: Path, reqs: list[tuple[str, str]]) -> list[Path]:
    """The one wheel of each requirement in `wheels_dir`; raises PackError naming what is missing,
    doubled or built for another Python or platform."""
    wanted = {canonicalize_name(n): Version(v) for n, v in reqs}
    found: dict[str, list[Path]] = {n: [] for n in wanted}
    tags = target_tags()
    bad = []
    for path in sorted(Path(wheels_dir).glob("*.whl")):
        name, version, _, wheel_tags = parse_wheel_filename(path.name)
        if name not in wanted or version != wanted[name]:
            continue
        if not wheel_tags & tags:
            bad.append(f"{path.name} (not for CPython {PYTHON[0]}.{PYTHON[1]} on manylinux x86_64)")
            continue
        found[name].append(path)
    missing = [f"{n}=={wanted[n]}" for n, paths in found.items() if not paths]
    doubled = [", ".join(p.name for p in paths) for paths in found.values() if len(paths) > 1]
    if missing or doubled or bad:
        lines = [f"wheels in {wheels_dir} do not match constraints.txt:"]
        if missing:
            lines.append(f"missing {' '.join(missing)} (add --download to fetch them with pip)")
        lines += [f"more than one wheel: {d}" for d in doubled]
        lines += [f"unusable: {b}" for b in bad]
        raise PackError("\n  ".join(lines))
    return [paths[0] for paths in found.values()]


# --------------------------------------------------------------------------------- shard sets


@dataclass(frozen=True)
class CheckSet:
    """The decode check's shards: per codec what
    `mvd-shard synth --out DIR --codec C --gop G --width W --height H --num-frames T
    --num-videos N` makes (synth encodes straight into --codec; --reencode is for real videos)."""

    codecs: tuple[str, ...] = ("h264", "hevc", "vp9")
    num_videos: int = 16
    num_frames: int = 80
    width: int = 320
    height: int = 240
    gop: int = 16


@dataclass(frozen=True)
class ShardJob:
    """One shard directory of a set: its estimated size, and how to make it (returns the dir)."""

    what: str
    estimated_bytes: float
    make: Callable[[], Path]


def estimate_bytes(num_videos: int, width: int, height: int, num_frames: int) -> float:
    return num_videos * width * height * num_frames * BYTES_PER_PIXEL_FRAME


def shard_jobs(name: str, build: Path, check: CheckSet, workers: int | None) -> list[ShardJob]:
    """The shard directories of set `name` ("check", "loader" or "step"), under `build` as the
    GPU machine will find them under its work folder."""
    if name == "check":
        def make(codec: str) -> Callable[[], Path]:
            def run() -> Path:
                out = build / "check" / codec
                make_synth_dataset(out, num_videos=check.num_videos, num_frames=check.num_frames,
                                   width=check.width, height=check.height, codec=codec,
                                   gop=check.gop, workers=workers)
                return out
            return run
        size = estimate_bytes(check.num_videos, check.width, check.height, check.num_frames)
        return [ShardJob(f"check/{c} ({check.num_videos} x {check.width}x{check.height}x"
                         f"{check.num_frames})", size, make(c)) for c in check.codecs]
    if name == "loader":  # what `mvd-bench loader --device gpu --work W` reads from W/loader
        s = loader_bench.settings_for("gpu", False)
        root = build / "bench" / "loader" / "shards"
        size = estimate_bytes(s.num_videos, s.width, s.height, s.num_frames)
        return [ShardJob(f"loader/{c} ({s.num_videos} x {s.width}x{s.height}x{s.num_frames}, "
                         "benchmarks/loader.py FULL_GPU)", size,
                         lambda c=c: loader_bench.synth_shards(root, s, c)) for c in s.codecs]
    if name == "step":  # what `mvd-bench step --device gpu --work W` reads from W/step
        variants = step_bench.settings_for("gpu", False)
        synths = {json.dumps(v.synth, sort_keys=True): v for v in variants}
        if len(synths) != 1:
            raise PackError("benchmarks/step.py: the GPU variants must share one synth dict "
                            "(they read one shard directory)")
        (settings,) = synths.values()
        sy = settings.synth
        size = estimate_bytes(sy["num_videos"], sy["width"], sy["height"], sy["num_frames"])
        return [ShardJob(f"step ({sy['num_videos']} x {sy['width']}x{sy['height']}x"
                         f"{sy['num_frames']} {sy['codec']}, benchmarks/step.py FULL_GPU)", size,
                         lambda: step_bench.synth_shards(build / "bench" / "step" / "shards",
                                                         settings))]
    raise PackError(f"unknown shard set {name!r}; choose from {', '.join(SHARD_SETS)}")


def make_shard_set(name: str, build: Path, check: CheckSet, workers: int | None,
                   max_bytes: float) -> tuple[Path, list[str]]:
    """Make set `name` and tar it (paths relative to `build`); returns (tar, shard dirs)."""
    jobs = shard_jobs(name, build, check, workers)
    estimate = sum(j.estimated_bytes for j in jobs)
    if estimate > max_bytes:
        raise PackError(
            f"shard set {name!r} would be about {estimate / MiB:.0f} MiB "
            f"({'; '.join(j.what for j in jobs)}), over {max_bytes / MiB:.0f} MiB: shrink those "
            f"settings (e.g. 48 videos at 320x240x80 per codec is ~8 MiB), or leave the set out "
            f"with --skip {name} (the GPU machine then encodes it with the travelled PyAV)")
    dirs = []
    for job in jobs:
        print(f"[pack] shards {job.what} ...", flush=True)
        dirs.append(job.make())
    tar_path = build / f"shards-{name}.tar"
    with tarfile.open(tar_path, "w", format=tarfile.PAX_FORMAT) as tar:
        for d in dirs:
            for path in sorted(p for p in d.rglob("*") if p.is_file()):
                tar.add(path, arcname=str(path.relative_to(build)), filter=_plain)
    return tar_path, [str(d.relative_to(build)) for d in dirs]


def _plain(info: tarfile.TarInfo) -> tarfile.TarInfo:
    """Same bytes for the same shards: no owner or time stamps in the tar."""
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = 0
    return info


# ----------------------------------------------------------------------- pieces and batches


@dataclass(frozen=True)
class Piece:
    """`size` bytes of `source` from `offset`: a part of a split file, or a whole file."""

    name: str
    source: Path
    offset: int
    size: int


def split_file(path: Path, part_bytes: int = PART_BYTES) -> list[Piece]:
    """The pieces `path` travels as: itself when it is at most `part_bytes`, else
    `NAME.part00`, `NAME.part01`, ... of at most `part_bytes` each, in `cat` order."""
    size = Path(path).stat().st_size
    if size <= part_bytes:
        return [Piece(Path(path).name, Path(path), 0, size)]
    return [Piece(part_name(Path(path).name, i), Path(path), start, min(part_bytes, size - start))
            for i, start in enumerate(range(0, size, part_bytes))]


def write_piece(piece: Piece, dest_dir: Path) -> str:
    """Write the piece's bytes to dest_dir/piece.name; returns their sha256."""
    out = Path(dest_dir) / piece.name
    with open(piece.source, "rb") as src, open(out, "wb") as dst:
        src.seek(piece.offset)
        left = piece.size
        while left:
            chunk = src.read(min(8 * MiB, left))
            if not chunk:
                raise PackError(f"{piece.source} shrank while packing")
            dst.write(chunk)
            left -= len(chunk)
    return sha256_file(out)


def plan_batches(pieces: list[Piece], batch_bytes: int = BATCH_BYTES) -> list[list[Piece]]:
    """Group the pieces into as few batches of at most `batch_bytes` as first-fit decreasing
    finds (largest piece first, each into the first batch it fits)."""
    batches: list[list[Piece]] = []
    for piece in sorted(pieces, key=lambda p: (-p.size, p.name)):
        if piece.size > batch_bytes:
            raise PackError(f"{piece.name} is {piece.size / MiB:.1f} MiB, more than a batch "
                            f"({batch_bytes / MiB:.1f} MiB): lower the part size")
        for batch in batches:
            if sum(p.size for p in batch) + piece.size <= batch_bytes:
                batch.append(piece)
                break
        else:
            batches.append([piece])
    return batches


# ----------------------------------------------------------------------------------- the pack


def pack(out: Path, wheels_dir: Path, *, sets: tuple[str, ...] = SHARD_SETS,
         check: CheckSet = CheckSet(), reqs: list[tuple[str, str]] | None = None,
         download: bool = False, part_bytes: int = PART_BYTES, batch_bytes: int = BATCH_BYTES,
         max_set_bytes: float = MAX_SET_BYTES, workers: int | None = None,
         command: str = "") -> dict:
    """Make the pack in `out` (MANIFEST.json, batches/batch-N/, build/ scratch); returns the
    manifest."""
    out, wheels_dir = Path(out), Path(wheels_dir)
    reqs = requirements() if reqs is None else reqs
    if download:
        download_wheels(wheels_dir, reqs)
    files = [(w, "wheel", {}) for w in find_wheels(wheels_dir, reqs)]
    build = out / "build"
    build.mkdir(parents=True, exist_ok=True)
    shard_sets = {}
    for name in sets:
        tar_path, dirs = make_shard_set(name, build, check, workers, max_set_bytes)
        files.append((tar_path, "shards", {"set": name}))
        shard_sets[name] = {"file": tar_path.name, "dirs": dirs}

    entries, pieces = [], []
    for path, kind, extra in files:
        if not SAFE_NAME.match(path.name):
            raise PackError(f"{path}: the name must match {SAFE_NAME.pattern} to travel")
        print(f"[pack] sha256 {path.name} ...", flush=True)
        mine = split_file(path, part_bytes)
        entries.append({"name": path.name, "kind": kind, **extra, "bytes": path.stat().st_size,
                        "sha256": sha256_file(path), "parts": [] if len(mine) == 1 else mine})
        pieces += mine
    batches = plan_batches(pieces, batch_bytes - MANIFEST_RESERVE)

    batch_root = out / "batches"
    if batch_root.exists():
        shutil.rmtree(batch_root)
    digests = {}
    for i, batch in enumerate(batches, 1):
        d = batch_root / f"batch-{i}"
        d.mkdir(parents=True)
        for piece in batch:
            digests[piece.name] = write_piece(piece, d)
    for entry in entries:
        entry["parts"] = [{"name": p.name, "bytes": p.size, "sha256": digests[p.name]}
                          for p in entry["parts"]]
    whole = {e["name"]: e["sha256"] for e in entries if not e["parts"]}
    for name, digest in whole.items():
        if digests[name] != digest:
            raise PackError(f"{name} changed while packing (sha256 {digests[name]} != {digest})")

    manifest = {
        "format": FORMAT,
        "created_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": command,
        "git": git_state(),
        "part_bytes": part_bytes,
        "batch_bytes": batch_bytes,
        "requirements": [f"{n}=={v}" for n, v in reqs],
        "shard_sets": shard_sets,
        "files": entries,
        "batches": [{"name": f"batch-{i}", "bytes": sum(p.size for p in b),
                     "pieces": [p.name for p in b]} for i, b in enumerate(batches, 1)],
        "transfer": transfer_calls(batch_root, len(batches)),
    }
    text = json.dumps(manifest, indent=1) + "\n"
    if len(text.encode()) > MANIFEST_RESERVE:
        raise PackError(f"MANIFEST.json is {len(text)} bytes, more than the {MANIFEST_RESERVE} "
                        "kept free for it in each batch")
    (out / MANIFEST).write_text(text)
    for i in range(1, len(batches) + 1):
        (batch_root / f"batch-{i}" / MANIFEST).write_text(text)
    return manifest


def transfer_calls(batch_root: Path, n: int) -> dict:
    """The device-tool calls that carry the batches: one per batch, the last one also runs."""
    try:
        root = str(batch_root.resolve().relative_to(REPO))
    except ValueError:  # a pack outside the repository cannot be carried as it is
        root = str(batch_root.resolve())
    calls = []
    for i in range(1, n + 1):
        carry = f"{root}/batch-{i}"
        command = f"bash benchmarks/gpu/run.sh --receive {carry}"
        if i == n:
            command += " && bash benchmarks/gpu/run.sh"
        calls.append({"carry": [carry], "command": command})
    return {"parts_dir": PARTS_DIR,
            "note": "calls back to back: the machine goes back when idle, and the parts with it",
            "calls": calls}


def git_state() -> dict:
    """The commit the pack was made from, and whether the working tree differed from it."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True,
                              check=True).stdout.strip()
    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain"))}
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}


def worktree_bytes() -> int | None:
    """Bytes of the files a device call copies besides the carried batch: tracked files and
    untracked ones git does not ignore."""
    try:
        listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others",
                                 "--exclude-standard"], capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    paths = (REPO / p.decode() for p in listed.split(b"\0") if p)
    return sum(p.stat().st_size for p in paths if p.is_file())


def describe(manifest: dict) -> list[str]:
    lines = [f"{len(manifest['files'])} files, {len(manifest['batches'])} batches:"]
    for f in manifest["files"]:
        parts = f" in {len(f['parts'])} parts" if f["parts"] else ""
        lines.append(f"  {f['name']}: {f['bytes'] / MiB:.2f} MiB{parts}")
    for b in manifest["batches"]:
        lines.append(f"  {b['name']}: {b['bytes'] / MiB:.1f} MiB ({len(b['pieces'])} pieces)")
    tree = worktree_bytes()
    if tree is not None:
        largest = max(b["bytes"] for b in manifest["batches"]) + MANIFEST_RESERVE
        total = tree + largest
        verdict = "fits" if total <= DEVICE_CALL_BYTES else "DOES NOT FIT: trim the working tree"
        lines.append(f"per call: working tree {tree / MiB:.1f} MiB + largest batch "
                     f"{largest / MiB:.1f} MiB = {total / MiB:.1f} of 64 MiB ({verdict})")
    lines.append("device calls, back to back:")
    lines += [f"  carry={c['carry']}  command: {c['command']}"
              for c in manifest["transfer"]["calls"]]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu.pack",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="pack directory (default: .gpu-pack in the repo, git-ignored)")
    parser.add_argument("--wheels", type=Path, default=None,
                        help="folder holding the downloaded wheels (default: OUT/downloads)")
    parser.add_argument("--download", action="store_true",
                        help="first pip-download the pinned wheels into --wheels (network)")
    parser.add_argument("--skip", action="append", default=[], choices=SHARD_SETS,
                        help="leave a shard set out (repeatable)")
    parser.add_argument("--workers", type=int, default=None, help="encoder processes")
    args = parser.parse_args(argv)
    command = shlex.join(["python", "-m", "benchmarks.gpu.pack",
                          *(sys.argv[1:] if argv is None else argv)])
    sets = tuple(s for s in SHARD_SETS if s not in args.skip)
    try:
        manifest = pack(args.out, args.wheels or args.out / "downloads", sets=sets,
                        download=args.download, workers=args.workers, command=command)
    except PackError as err:
        print(f"mvd-gpu-pack: {err}", file=sys.stderr)
        return 2
    print("\n".join(describe(manifest)))
    print(f"wrote {args.out / MANIFEST}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
