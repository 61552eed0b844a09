"""What the GPU machine has, into OUT: versions.json (the benchmark reports' environment block
from `benchmarks.env`, each module the check imports with its version and file or its import
error, whether the driver's NVDEC library loads, and where the `nvidia` package resolves: DALI's
`nvidia/dali` has to merge with the `nvidia/*` folders of torch's CUDA wheels), and the output
of `nvidia-smi -q`, `nvidia-smi` and `pip list`.

    python3 -m benchmarks.gpu.probe --out OUT/env --needs torch,numpy
                                             # exit 1 when a needed module is missing

Every call of the GPU check runs it first: `--needs` names what that call's later stages import
(call 1 needs no DALI, PyAV or webdataset; they are reported either way).
"""

from __future__ import annotations

import argparse
import ctypes
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

from benchmarks import env

# Every module the check may import, reported with its version or its import error; the
# caller's --needs says which of them its stages cannot do without
REPORTED = ("torch", "nvidia.dali", "av", "webdataset", "timm", "numpy", "yaml", "pytest",
            "triton", "pytest_timeout", "safetensors", "PIL", "cv2", "matplotlib", "rich",
            "optree", "libcst", "nvtx", "astunparse", "gast", "makefun")
NVDEC_LIBRARY = "libnvcuvid.so.1"
COMMANDS = {"nvidia-smi-q.txt": ["nvidia-smi", "-q"], "nvidia-smi.txt": ["nvidia-smi"],
            "pip-list.txt": [sys.executable, "-m", "pip", "list"]}


def import_status(name: str) -> dict:
    try:
        module = importlib.import_module(name)
    except Exception as exc:  # reported, whatever it is: this is the diagnosis
        return {"error": f"{type(exc).__name__}: {exc}"}
    return {"version": getattr(module, "__version__", None),
            "file": getattr(module, "__file__", None)}


def nvdec_library() -> dict:
    try:
        ctypes.CDLL(NVDEC_LIBRARY)
    except OSError as exc:
        return {"library": NVDEC_LIBRARY, "loaded": False, "error": str(exc),
                "hint": "the GPU (mixed) video decoder needs it; in a container the driver's "
                        "video libraries are mounted only when NVIDIA_DRIVER_CAPABILITIES "
                        "includes 'video'"}
    return {"library": NVDEC_LIBRARY, "loaded": True}


def probe(needed: tuple[str, ...]) -> dict:
    modules = {name: import_status(name) for name in dict.fromkeys((*needed, *REPORTED))}
    nvidia = sys.modules.get("nvidia")
    return {
        "environment": env.collect("gpu"),
        "modules": modules,
        "needed": list(needed),
        "missing": [n for n in needed if "error" in modules[n]],
        "nvdec": nvdec_library(),
        "nvidia_package_path": list(getattr(nvidia, "__path__", [])) if nvidia else None,
        "env_vars": {k: os.environ.get(k) for k in ("NVIDIA_DRIVER_CAPABILITIES",
                                                    "NVIDIA_VISIBLE_DEVICES",
                                                    "CUDA_VISIBLE_DEVICES", "PYTHONPATH")},
    }


def save_output(command: list[str], path: Path) -> None:
    """The command's stdout and stderr into `path`, or why it could not run."""
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=30)
        path.write_text(proc.stdout + proc.stderr + ("" if proc.returncode == 0 else
                                                     f"\n(exit status {proc.returncode})\n"))
    except (OSError, subprocess.TimeoutExpired) as exc:
        path.write_text(f"{' '.join(command)}: {exc}\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m benchmarks.gpu.probe",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--needs", default="torch",
                        help="comma-separated modules this call's stages need (default torch)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, command in COMMANDS.items():
        save_output(command, args.out / name)
    result = probe(tuple(n for n in args.needs.split(",") if n))
    (args.out / "versions.json").write_text(json.dumps(result, indent=1) + "\n")
    gpu = result["environment"]["gpu"] or {}
    print(f"probe: {gpu.get('name', 'no GPU')}, torch {result['modules']['torch'].get('version')}"
          f", DALI {result['modules']['nvidia.dali'].get('version')}, NVDEC library "
          f"{'loads' if result['nvdec']['loaded'] else 'MISSING'}")
    for name in result["missing"]:
        print(f"probe: cannot import {name}: {result['modules'][name]['error']}", file=sys.stderr)
    if not result["nvdec"]["loaded"]:
        print(f"probe: {result['nvdec']['error']} ({result['nvdec']['hint']})", file=sys.stderr)
    return 1 if result["missing"] else 0


if __name__ == "__main__":
    sys.exit(main())
