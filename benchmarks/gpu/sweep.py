"""The GPU loader's clips/s over decode pipelines: `PretrainLoader(device="gpu",
gpu_decoders=N)` for N in PIPELINES (one DALI video pipeline was seen using 1 of 7 NVDEC engines,
DALI #6387; several in parallel reach most of them), on each codec of the check set (H.264,
HEVC, VP9 at >= 160 px), uint8 (`normalize=False`) and float (normalised by DALI).

    python -m benchmarks.gpu.sweep --shards /tmp/mvd-gpu/shards/check --out OUT/sweep

Each point is appended to OUT/sweep.jsonl as soon as it is measured ({"codec", "dtype",
"pipelines", "clips_per_s"} or {"error"}): a stage cut short by its limit keeps what it
measured. Exits 1 when a point failed.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from pathlib import Path

import torch

from benchmarks.timing import endless, timed
from dali_pipelines import PretrainLoader

PIPELINES = (1, 2, 4, 7)
DTYPES = {"uint8": False, "float": True}  # normalize=
BATCH, WARMUP, TIMED = 8, 2, 6  # clips per batch; batches before and inside the timed window
CLIP = dict(num_frames=16, input_size=224, teacher_input_size=224)


def measure(data_dir: Path, pipelines: int, normalize: bool) -> float:
    """Clips/s of the GPU loader alone (batches on the GPU, synchronised at both ends)."""
    loader = PretrainLoader(data_dir, BATCH, device="gpu", seed=0, gpu_decoders=pipelines,
                            normalize=normalize, **CLIP)
    try:
        batches = endless(loader)
        for _ in range(WARMUP):
            next(batches)
        return BATCH * TIMED / timed(lambda: next(batches), TIMED, torch.device("cuda"))
    finally:
        loader.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu.sweep",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", type=Path, required=True, help="one shard dir per codec")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    points = args.out / "sweep.jsonl"
    failed = 0
    for data_dir in sorted(p.parent for p in args.shards.glob("*/manifest.json")):
        for dtype, normalize in DTYPES.items():
            for n in PIPELINES:
                point = {"codec": data_dir.name, "dtype": dtype, "pipelines": n,
                         "batch_size": BATCH, "clip": f"{CLIP['num_frames']}x{CLIP['input_size']}"}
                try:
                    point["clips_per_s"] = round(measure(data_dir, n, normalize), 2)
                except Exception as exc:  # one point's failure is its result; the rest still run
                    traceback.print_exc()
                    point["error"] = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"
                    failed += 1
                print(f"[sweep] {json.dumps(point)}", flush=True)
                with open(points, "a") as f:
                    f.write(json.dumps(point) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
