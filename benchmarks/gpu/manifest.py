"""The GPU check's pack format (`mvd-gpu-pack/1`): what travels, in which pieces and batches.

A pack is a set of files (wheels, shard tars). A file travels whole, or, above the part size, as
pieces `NAME.part00`, `NAME.part01`, ... that `cat` in order gives back. The pieces are grouped
into batches, each small enough for one call of the device tool. MANIFEST.json says it all:

    {"format": "mvd-gpu-pack/1", "part_bytes": 62652416,
     "files": [{"name": "x.whl", "kind": "wheel" | "wheel-xz" | "shards", "bytes": 123,
                "sha256": "...",
                "parts": [{"name": "x.whl.part00", "bytes": 50, "sha256": "..."}, ...]}],
                                                               # parts: [] when it travels whole
     "batches": [{"name": "dali-part-1", "bytes": 60, "pieces": ["x.whl.part00", "y.whl"]}]}

Only the standard library is used here: on the GPU machine this runs before anything is
installed (`benchmarks/gpu/run.sh` calls it):

    python3 -m benchmarks.gpu.manifest receive BATCH_DIR PARTS_DIR  # copy one batch in, check it
    python3 -m benchmarks.gpu.manifest status PARTS_DIR             # exit 1 naming missing batches
    python3 -m benchmarks.gpu.manifest split-plan PARTS_DIR         # "NAME PART PART ..." lines
    python3 -m benchmarks.gpu.manifest sums PARTS_DIR               # "SHA256  NAME" lines
    python3 -m benchmarks.gpu.manifest list PARTS_DIR wheel|shards  # file names of one kind
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import sys
from pathlib import Path

FORMAT = "mvd-gpu-pack/1"
MANIFEST = "MANIFEST.json"
MiB = 2**20
# Names travel through shell word splitting in run.sh: no spaces or shell metacharacters.
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
KINDS = ("wheel", "wheel-xz", "shards")


class ManifestError(ValueError):
    """The manifest or the files beside it are not what the pack says (names the file)."""


class PackError(RuntimeError):
    """The pack cannot be made as asked (names the file, setting or fix)."""


def part_name(name: str, index: int) -> str:
    return f"{name}.part{index:02d}"


def sha256_file(path: Path, start: int = 0, size: int | None = None) -> str:
    """sha256 of `path`, or of its `size` bytes from `start`."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(start)
        left = size
        while left is None or left > 0:
            chunk = f.read(MiB if left is None else min(MiB, left))
            if not chunk:
                break
            h.update(chunk)
            if left is not None:
                left -= len(chunk)
    return h.hexdigest()


def load(path: Path) -> dict:
    """Read and check a MANIFEST.json: format, safe unique names, batches that cover every piece
    once."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path} does not exist: carry a part with its DALI call "
                            "(benchmarks/gpu/PLAN.md; every part carries the manifest)")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise ManifestError(f"{path}: format {manifest.get('format')!r}, expected {FORMAT!r}")
    pieces = expected_pieces(manifest)
    names = [f["name"] for f in manifest["files"]] + list(pieces)
    for name in names:
        if not SAFE_NAME.match(name):
            raise ManifestError(f"{path}: unsafe file name {name!r}")
    for f in manifest["files"]:
        if f["kind"] not in KINDS:
            raise ManifestError(f"{path}: {f['name']} has kind {f['kind']!r}, not one of {KINDS}")
    in_batches = [p for b in manifest["batches"] for p in b["pieces"]]
    if sorted(in_batches) != sorted(pieces):
        raise ManifestError(f"{path}: the batches do not hold every piece exactly once")
    return manifest


def expected_pieces(manifest: dict) -> dict[str, dict]:
    """Every piece that travels (a part, or a whole file) -> {"bytes", "sha256", "file"}."""
    pieces = {}
    for f in manifest["files"]:
        for p in f["parts"] or [f]:
            pieces[p["name"]] = {"bytes": p["bytes"], "sha256": p["sha256"], "file": f["name"]}
    return pieces


def receive(batch_dir: Path, parts_dir: Path) -> list[str]:
    """Copy one batch's pieces (and its manifest) into `parts_dir`, checking each sha256 on
    arrival; returns the status lines. Raises ManifestError on a piece that does not match, or on
    a batch of another pack than the pieces already there."""
    batch_dir, parts_dir = Path(batch_dir), Path(parts_dir)
    manifest = load(batch_dir / MANIFEST)
    parts_dir.mkdir(parents=True, exist_ok=True)
    have = parts_dir / MANIFEST
    if have.exists() and json.loads(have.read_text()) != manifest:
        raise ManifestError(f"{batch_dir} belongs to another pack than the pieces in {parts_dir}: "
                            f"empty {parts_dir} and send every batch of one pack")
    pieces = expected_pieces(manifest)
    batch = next((b for b in manifest["batches"] if b["name"] == batch_dir.name), None)
    if batch is None:
        raise ManifestError(f"{batch_dir}: its name is not one of the manifest's batches")
    for name in batch["pieces"]:
        src = batch_dir / name
        if not src.is_file():
            raise ManifestError(f"{src} is missing: the batch travelled incomplete")
        digest = sha256_file(src)
        if digest != pieces[name]["sha256"]:
            raise ManifestError(f"{src}: sha256 {digest} does not match the manifest's "
                                f"{pieces[name]['sha256']}: send {batch_dir.name} again")
        shutil.copyfile(src, parts_dir / name)
    shutil.copyfile(batch_dir / MANIFEST, have)
    return [f"received {batch_dir.name}: {len(batch['pieces'])} pieces, sha256 checked",
            *status_lines(manifest, parts_dir)[1]]


def status_lines(manifest: dict, parts_dir: Path) -> tuple[bool, list[str]]:
    """(every batch present, lines saying which batches are there and which are missing)."""
    pieces = expected_pieces(manifest)
    missing = []
    for b in manifest["batches"]:
        absent = [n for n in b["pieces"]
                  if not (parts_dir / n).is_file()
                  or (parts_dir / n).stat().st_size != pieces[n]["bytes"]]
        if absent:
            missing.append(f"{b['name']} ({', '.join(absent)})")
    done = len(manifest["batches"]) - len(missing)
    lines = [f"{parts_dir}: {done} of {len(manifest['batches'])} batches present"]
    if missing:
        lines.append("missing: " + "; ".join(missing))
    return not missing, lines


def split_plan(manifest: dict) -> list[str]:
    """One line per split file: its name, then its parts in `cat` order."""
    return [" ".join([f["name"], *(p["name"] for p in f["parts"])])
            for f in manifest["files"] if f["parts"]]


def sums(manifest: dict) -> list[str]:
    """`sha256sum --check` lines for every whole file (reassembled or travelled whole)."""
    return [f"{f['sha256']}  {f['name']}" for f in manifest["files"]]


def names(manifest: dict, kind: str) -> list[str]:
    return [f["name"] for f in manifest["files"] if f["kind"] == kind]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m benchmarks.gpu.manifest",
                                     description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("receive", help="copy one batch into the parts folder, checking it")
    p.add_argument("batch_dir", type=Path)
    p.add_argument("parts_dir", type=Path)
    for command in ("status", "split-plan", "sums"):
        sub.add_parser(command).add_argument("parts_dir", type=Path)
    p = sub.add_parser("list")
    p.add_argument("parts_dir", type=Path)
    p.add_argument("kind", choices=KINDS)
    args = parser.parse_args(argv)
    try:
        if args.command == "receive":
            print("\n".join(receive(args.batch_dir, args.parts_dir)))
            return 0
        manifest = load(args.parts_dir / MANIFEST)
        if args.command == "status":
            ok, lines = status_lines(manifest, args.parts_dir)
            print("\n".join(lines), file=sys.stdout if ok else sys.stderr)
            return 0 if ok else 1
        lines = {"split-plan": lambda: split_plan(manifest), "sums": lambda: sums(manifest),
                 "list": lambda: names(manifest, getattr(args, "kind", ""))}[args.command]()
    except ManifestError as err:
        print(f"manifest: {err}", file=sys.stderr)
        return 2
    if lines:
        print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
