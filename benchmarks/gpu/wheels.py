"""The wheels the GPU check's DALI calls carry (benchmarks/gpu/pack.py packs them): the small
wheels DALI imports that the GPU machine lacks (`WHEELS`), pinned as in constraints.txt and
matched to the machine's Python and platform, and the DALI wheel slimmed to what CPython 3.12
loads (`slim_wheel`)."""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

from packaging.tags import Tag, compatible_tags, cpython_tags
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

from benchmarks.gpu.manifest import MiB, PackError

CONSTRAINTS = Path(__file__).resolve().parents[2] / "constraints.txt"
DALI = "nvidia-dali-cuda130"
# What the GPU machine lacks of DALI's imports (as the project describes the GPU machine), by distribution name. DALI also
# declares libcst and nvtx (5 MiB as cp312 wheels): its pipelines ran here with both made
# unimportable, so they stay behind (the env stage names any module DALI fails to import).
WHEELS = ("astunparse", "gast", "optree", "makefun")
# The GPU machine: CPython 3.12, glibc 2.28 or newer (its torch 2.11 wheels are manylinux_2_28).
PYTHON = (3, 12)
PLATFORMS = tuple(f"manylinux_2_{m}_x86_64" for m in range(28, 16, -1)) + ("manylinux2014_x86_64",)
# In a slimmed wheel: the extension modules of CPython 3.12 only, no headers, no bytecode.
EXTENSION = re.compile(r"\.cpython-(\d+t?)-[^/]*\.so$")
DROPPED_DIRS = ("include/", "__pycache__/")


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


# ---------------------------------------------------------------------------- the slim wheel


def kept(path: str) -> bool:
    """Whether a file of the DALI wheel is part of the CPython 3.12 runtime (an installed
    dist's RECORD also lists its scripts, outside site-packages as `../../../bin/...`: DALI's
    command-line tools, left out; pip refuses a wheel path that leaves its target)."""
    if path.startswith("../") or ".data/scripts/" in path:
        return False
    if any(f"/{d}" in f"/{path}" for d in DROPPED_DIRS) or path.endswith(".pyc"):
        return False
    m = EXTENSION.search(path)
    return m is None or m.group(1) == f"{PYTHON[0]}{PYTHON[1]}"


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def dali_files(wheels_dir: Path | None, from_site: bool) -> tuple[str, list[tuple[str, Callable[[], bytes]]]]:
    """(the wheel's file name, [(path in the wheel, read)]) of the DALI wheel in `wheels_dir`,
    or, `from_site`, of the DALI installed here (its RECORD lists the wheel's files)."""
    version = dict(requirements(wanted=(DALI,)))[DALI]
    name = f"{DALI.replace('-', '_')}-{version}-py3-none-manylinux_2_28_x86_64.whl"
    if from_site:
        dist = metadata.distribution(DALI)
        if dist.version != version:
            raise PackError(f"{DALI} {dist.version} is installed here; constraints.txt pins "
                            f"{version}")
        files = [(str(f), (lambda f=f: Path(dist.locate_file(f)).read_bytes()))
                 for f in dist.files or () if Path(dist.locate_file(f)).is_file()]
        return name, files
    wheel = Path(wheels_dir or ".") / name
    if not wheel.is_file():
        raise PackError(f"{wheel} is missing: download it (--download) or build from the DALI "
                        f"installed here (--dali-from-site)")
    z = zipfile.ZipFile(wheel)
    return name, [(i.filename, (lambda i=i: z.read(i))) for i in z.infolist() if not i.is_dir()]


def strip_library(data: bytes, scratch: Path) -> bytes:
    """The shared library without its static symbol table (`strip --strip-unneeded`): what the
    dynamic loader reads (.dynsym, .dynstr, the CUDA fat binaries) stays."""
    path = scratch / "lib.so"
    path.write_bytes(data)
    subprocess.run(["strip", "--strip-unneeded", str(path)], check=True)
    return path.read_bytes()


def slim_wheel(out_dir: Path, wheels_dir: Path | None = None, *, from_site: bool = False,
               strip: bool = True, reuse: bool = False, xz_preset: str = "-9e"
               ) -> tuple[Path, dict]:
    """Write the slimmed DALI wheel, xz-compressed, into `out_dir`; returns (its path, what was
    kept and dropped). The wheel is stored (no deflate) so that xz sees the raw bytes; RECORD is
    rewritten for the files kept. `reuse`: keep an earlier run's .whl.xz and its record (xz -9e
    of ~340 MiB takes minutes)."""
    name, files = dali_files(wheels_dir, from_site)
    packed, record_file = out_dir / f"{name}.xz", out_dir / f"{name}.xz.json"
    if reuse and packed.is_file() and record_file.is_file():
        return packed, json.loads(record_file.read_text())
    dist_info = next(f.split("/")[0] for f, _ in files if f.split("/")[0].endswith(".dist-info"))
    out_dir.mkdir(parents=True, exist_ok=True)
    scratch = out_dir / "strip-scratch"
    scratch.mkdir(exist_ok=True)
    wheel = out_dir / name
    record, kept_bytes, dropped, dropped_bytes = [], 0, 0, 0
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_STORED) as z:
        for path, read in sorted(files):
            if path == f"{dist_info}/RECORD" or not kept(path):
                dropped += path != f"{dist_info}/RECORD"
                dropped_bytes += len(read()) if path != f"{dist_info}/RECORD" else 0
                continue
            data = read()
            if strip and (path.endswith(".so") or ".so." in path):
                data = strip_library(data, scratch)
            z.writestr(path, data)
            record.append((path, _record_hash(data), str(len(data))))
            kept_bytes += len(data)
        text = io.StringIO()
        csv.writer(text, lineterminator="\n").writerows([*record, (f"{dist_info}/RECORD", "", "")])
        z.writestr(f"{dist_info}/RECORD", text.getvalue())
    shutil.rmtree(scratch)
    print(f"[pack] xz {xz_preset} {name} ({wheel.stat().st_size / MiB:.0f} MiB) ...", flush=True)
    subprocess.run(["xz", xz_preset, "-T2", "-f", "-k", str(wheel)], check=True)
    wheel.unlink()
    slimmed = {"files_kept": len(record), "bytes_kept": kept_bytes, "files_dropped": dropped,
               "bytes_dropped": dropped_bytes, "stripped": strip, "xz": xz_preset}
    record_file.write_text(json.dumps(slimmed) + "\n")
    return packed, slimmed
