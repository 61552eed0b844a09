"""`python -m benchmarks.gpu.pack`: what the GPU check's DALI calls carry, in parts.

The GPU machine (as the project describes the GPU machine) has torch but no DALI, PyAV, webdataset, encoder or network. Its
DALI calls (benchmarks/gpu/plan.py) carry:

- the DALI wheel slimmed to what CPython 3.12 loads (`benchmarks.gpu.wheels.slim_wheel`: no
  headers, no other Pythons' extension modules, no bytecode; the shared libraries stripped of
  their static symbol tables with `strip --strip-unneeded`, which the dynamic loader never
  reads), stored uncompressed and then compressed with xz, since xz finds far more in the raw
  libraries than in a deflated zip;
- the small wheels DALI imports that the machine lacks (`benchmarks.gpu.wheels.WHEELS`), cp312
  manylinux;
- the shard sets, made here (`SHARD_SETS`): `check`, H.264, HEVC and VP9 at 192x160 (>= 160 px a
  side: NVDEC refuses VP9 below 128x128 and HEVC below 144x144), GOP 16, for the NVDEC probe, the
  decode check and the loader sweep, with the CPU decode of each codec's first batches
  (`references`, made here with the CPU loader: the machine has no PyAV to decode H.264 or HEVC
  on the host); `step`, the shards `mvd-bench step --feed loader --work W` reads from W/step.

Files above the part size are split into `NAME.partNN` pieces; the pieces are grouped into as
few parts as fit beside the working tree (64 MiB a call, TREE_BUDGET of it for the tree), each
`.gpu-pack/dali-part-N/` with a copy of MANIFEST.json (`benchmarks.gpu.manifest`).
benchmarks/gpu/pack-sizes.json (committed) records each part's bytes and sha256, from which the
plan renders its calls.

    python -m benchmarks.gpu.pack --download --wheels /tmp/mvd-gpu-wheels     # network: pip
    python -m benchmarks.gpu.pack --wheels /tmp/mvd-gpu-wheels --dali-from-site  # offline

`--dali-from-site` builds the slim wheel from the DALI installed here (the same files as the
wheel: `nvidia-dali-cuda130` is `py3-none`); else the DALI wheel must be in --wheels.
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
from dataclasses import dataclass
from pathlib import Path

from benchmarks import step as step_bench
from benchmarks.gpu import decode_check, plan
from benchmarks.gpu.manifest import (FORMAT, MANIFEST, SAFE_NAME, MiB, PackError, part_name,
                                     sha256_file)
from benchmarks.gpu.wheels import DALI, download_wheels, find_wheels, requirements, slim_wheel
from shard_tools.synth import make_synth_dataset

REPO = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO / plan.PACK_DIR
SHARD_SETS = ("check", "step")
# A shard set past this size is refused before encoding: it would cost a part of its own.
MAX_SET_BYTES = 8 * MiB
# Encoded bytes per pixel-frame of the synthetic clips (noisy on purpose), measured at 320x240,
# GOP 16: H.264 CRF 23 0.031, VP9 0.026, HEVC 0.011; the estimate takes the largest, rounded up.
BYTES_PER_PIXEL_FRAME = 0.035
# Kept free in every part for its copy of MANIFEST.json.
MANIFEST_RESERVE = 256 * 1024
# One part: a call's 64 MiB less the working tree's budget and the manifest.
PART_BYTES = plan.PART_LIMIT - MANIFEST_RESERVE


# --------------------------------------------------------------------------------- shard sets


@dataclass(frozen=True)
class CheckSet:
    """The check set's shards: per codec what
    `mvd-shard synth --out DIR --codec C --gop G --width W --height H --num-frames T
    --num-videos N` makes (synth encodes straight into --codec)."""

    codecs: tuple[str, ...] = ("h264", "hevc", "vp9")
    num_videos: int = 8
    num_frames: int = 48
    width: int = 192
    height: int = 160  # >= 160 px a side (NVDEC's minimum: VP9 128, HEVC 144)
    gop: int = 16


def estimate_bytes(num_videos: int, width: int, height: int, num_frames: int) -> float:
    return num_videos * width * height * num_frames * BYTES_PER_PIXEL_FRAME


def shard_dirs(name: str, build: Path, check: CheckSet, workers: int | None) -> list[Path]:
    """Make the shard directories of set `name` under `build` (as the machine unpacks them under
    /tmp/mvd-gpu/shards)."""
    if name == "check":
        shutil.rmtree(build / "check", ignore_errors=True)  # synth refuses a non-empty dir
        size = estimate_bytes(check.num_videos, check.width, check.height, check.num_frames)
        if size * len(check.codecs) > MAX_SET_BYTES:
            raise PackError(f"the check set would be about {size * len(check.codecs) / MiB:.1f} "
                            f"MiB, over {MAX_SET_BYTES / MiB:.0f} MiB: fewer or smaller videos")
        out = []
        for codec in check.codecs:
            print(f"[pack] shards check/{codec} ...", flush=True)
            out.append(build / "check" / codec)
            make_synth_dataset(out[-1], num_videos=check.num_videos, num_frames=check.num_frames,
                               width=check.width, height=check.height, codec=codec,
                               gop=check.gop, workers=workers)
            decode_check.reference(out[-1])  # the CPU side of the decode check, made here
        return out
    if name == "step":  # what `mvd-bench step --feed loader --work W` reads from W/step/shards
        (settings,) = {json.dumps(v.synth, sort_keys=True): v
                       for v in step_bench.settings_for("gpu", False)}.values()
        sy = settings.synth
        if estimate_bytes(sy["num_videos"], sy["width"], sy["height"], sy["num_frames"]) \
                > MAX_SET_BYTES:
            raise PackError(f"benchmarks/step.py GPU_SHARDS would be over "
                            f"{MAX_SET_BYTES / MiB:.0f} MiB: fewer or smaller videos")
        print("[pack] shards step ...", flush=True)
        return [step_bench.synth_shards(build / "bench" / "step" / "shards", settings)]
    raise PackError(f"unknown shard set {name!r}; choose from {', '.join(SHARD_SETS)}")


def tar_dirs(dirs: list[Path], build: Path, tar_path: Path) -> Path:
    with tarfile.open(tar_path, "w", format=tarfile.PAX_FORMAT) as tar:
        for d in dirs:
            for path in sorted(p for p in d.rglob("*") if p.is_file()):
                tar.add(path, arcname=str(path.relative_to(build)), filter=_plain)
    return tar_path


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


def plan_batches(pieces: list[Piece], batch_bytes: int = PART_BYTES) -> list[list[Piece]]:
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


def pack(out: Path, wheels_dir: Path | None, *, from_site: bool = False, strip: bool = True,
         reuse_dali: bool = False, xz_preset: str = "-9e",
         sets: tuple[str, ...] = SHARD_SETS, check: CheckSet = CheckSet(),
         reqs: list[tuple[str, str]] | None = None, download: bool = False,
         part_bytes: int = PART_BYTES, workers: int | None = None, dali: bool = True,
         command: str = "") -> dict:
    """Make the pack in `out` (MANIFEST.json, dali-part-N/, build/ scratch); returns the
    manifest. `dali=False` leaves the DALI wheel out (the tests' small packs)."""
    out = Path(out)
    reqs = requirements() if reqs is None else reqs
    if download:
        download_wheels(Path(wheels_dir), reqs + ([] if from_site or not dali else
                                                  requirements(wanted=(DALI,))))
    build = out / "build"
    build.mkdir(parents=True, exist_ok=True)
    files: list[tuple[Path, str, dict]] = []
    if dali:
        wheel, slimmed = slim_wheel(build, wheels_dir, from_site=from_site, strip=strip,
                                    reuse=reuse_dali, xz_preset=xz_preset)
        files.append((wheel, "wheel-xz", {"slimmed": slimmed}))
    files += [(w, "wheel", {}) for w in find_wheels(Path(wheels_dir), reqs)] if reqs else []
    shard_sets = {}
    for name in sets:
        dirs = shard_dirs(name, build, check, workers)
        tar_path = tar_dirs(dirs, build, build / f"shards-{name}.tar")
        files.append((tar_path, "shards", {"set": name}))
        shard_sets[name] = {"file": tar_path.name, "dirs": [str(d.relative_to(build))
                                                             for d in dirs]}

    entries, pieces = [], []
    for path, kind, extra in files:
        if not SAFE_NAME.match(path.name):
            raise PackError(f"{path}: the name must match {SAFE_NAME.pattern} to travel")
        mine = split_file(path, part_bytes)
        entries.append({"name": path.name, "kind": kind, **extra, "bytes": path.stat().st_size,
                        "sha256": sha256_file(path), "parts": [] if len(mine) == 1 else mine})
        pieces += mine
    batches = plan_batches(pieces, part_bytes)
    for old in out.glob("dali-part-*"):
        shutil.rmtree(old)
    digests = {}
    for i, batch in enumerate(batches, 1):
        d = out / f"dali-part-{i}"
        d.mkdir(parents=True)
        for piece in batch:
            digests[piece.name] = write_piece(piece, d)
    for entry in entries:
        entry["parts"] = [{"name": p.name, "bytes": p.size, "sha256": digests[p.name]}
                          for p in entry["parts"]]
    manifest = {
        "format": FORMAT,
        "created_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": command,
        "git": git_state(),
        "part_bytes": part_bytes,
        "requirements": [f"{n}=={v}" for n, v in reqs],
        "shard_sets": shard_sets,
        "files": entries,
        "batches": [{"name": f"dali-part-{i}", "bytes": sum(p.size for p in b),
                     "pieces": [p.name for p in b]} for i, b in enumerate(batches, 1)],
    }
    text = json.dumps(manifest, indent=1) + "\n"
    if len(text.encode()) > MANIFEST_RESERVE:
        raise PackError(f"MANIFEST.json is {len(text)} bytes, more than the {MANIFEST_RESERVE} "
                        "kept free for it in each part")
    (out / MANIFEST).write_text(text)
    for i in range(1, len(batches) + 1):
        (out / f"dali-part-{i}" / MANIFEST).write_text(text)
    return manifest


def sizes(manifest: dict, out: Path) -> dict:
    """What pack-sizes.json records: each carried part folder's bytes and pieces' sha256."""
    carry = {}
    for b in manifest["batches"]:
        folder = out / b["name"]
        carry[f"{plan.PACK_DIR}/{b['name']}"] = {
            "bytes": sum(p.stat().st_size for p in folder.iterdir() if p.is_file()),
            "pieces": {n: sha256_file(folder / n) for n in b["pieces"]}}
    return {"created_utc": manifest["created_utc"], "command": manifest["command"],
            "files": {f["name"]: {"bytes": f["bytes"], "sha256": f["sha256"],
                                  **({"slimmed": f["slimmed"]} if "slimmed" in f else {})}
                      for f in manifest["files"]},
            "carry": carry}


def git_state() -> dict:
    """The commit the pack was made from, and whether the working tree differed from it."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True,
                              check=True).stdout.strip()
    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain"))}
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu.pack",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"pack directory (default: {plan.PACK_DIR} in the repo, git-ignored)")
    parser.add_argument("--wheels", type=Path, required=True,
                        help="folder holding the downloaded wheels")
    parser.add_argument("--download", action="store_true",
                        help="first pip-download the pinned wheels into --wheels (network)")
    parser.add_argument("--dali-from-site", action="store_true",
                        help="build the slim DALI wheel from the DALI installed here")
    parser.add_argument("--no-strip", action="store_true",
                        help="keep the libraries' static symbol tables")
    parser.add_argument("--xz", default="-9e", metavar="PRESET",
                        help="xz's preset for the slim wheel (default -9e: smallest, slowest)")
    parser.add_argument("--reuse-dali", action="store_true",
                        help="keep the slim DALI wheel an earlier pack made in OUT/build")
    parser.add_argument("--workers", type=int, default=None, help="encoder processes")
    parser.add_argument("--record", action="store_true",
                        help=f"write {plan.PACK_SIZES.name} (what the plan renders from)")
    args = parser.parse_args(argv)
    command = shlex.join(["python", "-m", "benchmarks.gpu.pack",
                          *(sys.argv[1:] if argv is None else argv)])
    try:
        manifest = pack(args.out, args.wheels, from_site=args.dali_from_site,
                        strip=not args.no_strip, reuse_dali=args.reuse_dali, xz_preset=args.xz,
                        download=args.download, workers=args.workers,
                        command=command)
    except (PackError, subprocess.CalledProcessError) as err:
        print(f"mvd-gpu-pack: {err}", file=sys.stderr)
        return 2
    for f in manifest["files"]:
        print(f"  {f['name']}: {f['bytes'] / MiB:.2f} MiB"
              + (f" in {len(f['parts'])} pieces" if f["parts"] else ""))
    for b in manifest["batches"]:
        print(f"  {b['name']}: {b['bytes'] / MiB:.1f} MiB ({len(b['pieces'])} pieces)")
    if args.record:
        plan.PACK_SIZES.write_text(json.dumps(sizes(manifest, args.out), indent=1) + "\n")
        print(f"wrote {plan.PACK_SIZES}; now: python3 -m benchmarks.gpu.plan --write")
    return 0


if __name__ == "__main__":
    sys.exit(main())
