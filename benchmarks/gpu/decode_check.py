"""Each codec of the travelled check set through the GPU loader (DALI's mixed decoder, on
NVDEC) against the CPU loader on the same clips: the same seed gives the same samples, windows
and crops, so the two batches differ only by decoding and resizing. GPU-decoded frames are not
bit-exact with CPU-decoded ones (colour conversion and rounding differ), so they are compared
with a tolerance: the mean absolute difference over the CPU clips' standard deviation.

    python -m benchmarks.gpu.decode_check --shards WORK/check --out OUT/decode

Writes OUT/decode_check.json; exits 1 when a codec does not decode on the GPU, yields other
samples than the CPU loader, or differs beyond TOLERANCE.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

import torch

from dali_pipelines import PretrainLoader

TOLERANCE = 0.05  # mean |GPU - CPU| / std(CPU)


def first_batches(data_dir: Path, device: str, batch_size: int, batches: int
                  ) -> tuple[list[torch.Tensor], list[list[str]], str, float]:
    """(videos on the host as float32, keys, decoder, seconds) of epoch 0's first batches, the
    loader's start-up included."""
    start = time.perf_counter()
    loader = PretrainLoader(data_dir, batch_size, device=device, seed=0)
    videos, keys = [], []
    it = iter(loader)
    for _ in range(batches):
        batch = next(it)
        videos.append(batch["video"].float().cpu())  # host copy: the comparison is on the CPU
        keys.append(list(batch["key"]))
    seconds = time.perf_counter() - start
    decoder = loader.decoder
    loader.close()
    return videos, keys, decoder, seconds


def check_codec(data_dir: Path, batch_size: int, batches: int) -> dict:
    gpu, gpu_keys, gpu_decoder, gpu_s = first_batches(data_dir, "gpu", batch_size, batches)
    cpu, cpu_keys, cpu_decoder, cpu_s = first_batches(data_dir, "cpu", batch_size, batches)
    g, c = torch.cat(gpu), torch.cat(cpu)
    diff = (g - c).abs()
    relative = float(diff.mean() / c.std().clamp_min(1e-6))
    result = {
        "gpu_decoder": gpu_decoder, "cpu_decoder": cpu_decoder,
        "clips": int(g.shape[0]), "shape": list(g.shape[1:]), "dtype": str(gpu[0].dtype),
        "gpu_seconds_with_startup": gpu_s, "cpu_seconds_with_startup": cpu_s,
        "same_samples": gpu_keys == cpu_keys,
        "mean_abs_diff_over_std": relative, "max_abs_diff": float(diff.max()),
        "finite": bool(torch.isfinite(g).all()), "tolerance": TOLERANCE,
    }
    result["ok"] = result["same_samples"] and result["finite"] and relative <= TOLERANCE
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu.decode_check",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", type=Path, required=True,
                        help="the check set: one shard directory per codec")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--batches", type=int, default=2)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    results = {}
    for data_dir in sorted(p.parent for p in args.shards.glob("*/manifest.json")):
        codec = data_dir.name
        try:
            results[codec] = check_codec(data_dir, args.batch_size, args.batches)
        except Exception as exc:  # one codec's failure is its result; the others still run
            traceback.print_exc()
            results[codec] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        print(f"[decode] {codec}: {json.dumps(results[codec])}", flush=True)
    if not results:
        print(f"decode_check: no shard directory under {args.shards}", file=sys.stderr)
        return 1
    (args.out / "decode_check.json").write_text(json.dumps(results, indent=1) + "\n")
    return 0 if all(r["ok"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
