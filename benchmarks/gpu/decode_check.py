"""Each codec of the check set through the GPU loader (DALI's mixed decoder, on NVDEC) against
the CPU loader on the same clips: the same seed gives the same samples, windows and crops, so
the two batches differ only by decoding and resizing. GPU-decoded frames are not bit-exact with
CPU-decoded ones (colour conversion and rounding differ), so they are compared with tolerances:
the mean absolute difference over the CPU clips' standard deviation (TOLERANCE), and the share
of pixels off by more than PIXEL_TOLERANCE grey levels (OUTLIER_SHARE).

The CPU side is made here, where PyAV decodes H.264 and HEVC (`reference`, called by
benchmarks.gpu.pack: each codec's `reference.npz` travels inside the check set); the GPU
machine has no PyAV, so there the check reads the reference.

    python -m benchmarks.gpu.decode_check --shards /tmp/mvd-gpu/shards/check --out OUT/decode

Writes OUT/decode_check.json; exits 1 when a codec does not decode on the GPU, yields other
samples than the CPU loader, or differs beyond the tolerances.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

import numpy as np

from dali_pipelines import PretrainLoader

TOLERANCE = 0.05  # mean |GPU - CPU| / std(CPU)
PIXEL_TOLERANCE = 24  # grey levels (of 255)
OUTLIER_SHARE = 0.01  # at most this share of pixels beyond PIXEL_TOLERANCE
REFERENCE = "reference.npz"
# The clips compared: small, so that the CPU reference travels (uint8, ~0.2 MiB a codec)
CLIPS = dict(batch_size=2, num_frames=8, input_size=64, teacher_input_size=64)


def first_batch(data_dir: Path, device: str) -> tuple[np.ndarray, list[str], str, float]:
    """(uint8 video (B, 3, T, S, S) on the host, keys, decoder, seconds with start-up) of
    epoch 0's first batch."""
    start = time.perf_counter()
    loader = PretrainLoader(data_dir, CLIPS["batch_size"], device=device, seed=0,
                            num_frames=CLIPS["num_frames"], input_size=CLIPS["input_size"],
                            teacher_input_size=CLIPS["teacher_input_size"], normalize=False,
                            reader_workers=0)
    batch = next(iter(loader))
    video = batch["video"].cpu().numpy()  # host copy: the comparison is on the CPU
    keys, decoder = list(batch["key"]), loader.decoder
    loader.close()
    return video, keys, decoder, time.perf_counter() - start


def reference(data_dir: Path) -> Path:
    """The CPU loader's first batch of `data_dir`, saved as data_dir/reference.npz."""
    video, keys, decoder, _ = first_batch(data_dir, "cpu")
    out = Path(data_dir) / REFERENCE
    np.savez_compressed(out, video=video, keys=np.array(keys), decoder=np.array(decoder))
    return out


def compare(gpu: np.ndarray, cpu: np.ndarray) -> dict:
    g, c = gpu.astype(np.float32), cpu.astype(np.float32)
    diff = np.abs(g - c)
    relative = float(diff.mean() / max(float(c.std()), 1e-6))
    outliers = float((diff > PIXEL_TOLERANCE).mean())
    return {"mean_abs_diff_over_std": relative, "max_abs_diff": float(diff.max()),
            "outlier_share": outliers, "tolerance": TOLERANCE,
            "pixel_tolerance": PIXEL_TOLERANCE, "outlier_share_limit": OUTLIER_SHARE,
            "within": relative <= TOLERANCE and outliers <= OUTLIER_SHARE}


def check_codec(data_dir: Path) -> dict:
    saved = np.load(data_dir / REFERENCE)
    gpu, keys, decoder, seconds = first_batch(data_dir, "gpu")
    result = {"gpu_decoder": decoder, "cpu_decoder": str(saved["decoder"]),
              "shape": list(gpu.shape), "gpu_seconds_with_startup": seconds,
              "same_samples": keys == [str(k) for k in saved["keys"]],
              **compare(gpu, saved["video"])}
    result["ok"] = result["same_samples"] and result["within"]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu.decode_check",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", type=Path, required=True,
                        help="the check set: one shard directory per codec")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    results = {}
    for data_dir in sorted(p.parent for p in args.shards.glob("*/manifest.json")):
        codec = data_dir.name
        try:
            results[codec] = check_codec(data_dir)
        except Exception as exc:  # one codec's failure is its result; the others still run
            traceback.print_exc()
            results[codec] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        print(f"[decode] {codec}: {json.dumps(results[codec])}", flush=True)
        (args.out / "decode_check.json").write_text(json.dumps(results, indent=1) + "\n")
    if not results:
        print(f"decode_check: no shard directory under {args.shards}", file=sys.stderr)
        return 1
    return 0 if all(r["ok"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
