"""`mvd-bench {shard,loader,model,step,all} [--device cpu|gpu] [--quick] --out DIR`.

Runs the chosen benchmark modules, then writes DIR/report.json, DIR/report.md and PNG plots.
Each module is `benchmarks.<mode>` with `run(out_dir, *, quick[, device]) -> list[dict]`.
"""

from __future__ import annotations

import argparse
import importlib
import shlex
import sys
import time
import traceback
from pathlib import Path

from benchmarks import env, report, targets

# Modes in the order `all` runs them, and whether their run() takes the device.
TAKES_DEVICE = {"shard": False, "loader": True, "model": True, "step": True}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="mvd-bench",
        description="Throughput suite: sharding, loaders, model forward+backward and the full "
        "MVD training step. Writes report.json, report.md and PNG plots into --out.",
    )
    parser.add_argument("mode", choices=(*report.MODES, "all"), help="what to measure")
    parser.add_argument(
        "--device",
        choices=("cpu", "gpu"),
        default="cpu",
        help="where loaders decode and models run (default: cpu); sharding always runs on CPU",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny models and inputs, few iterations: all modes in under 5 minutes on 2 cores",
    )
    parser.add_argument("--out", type=Path, required=True, help="report directory")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = shlex.join(["mvd-bench", *(sys.argv[1:] if argv is None else argv)])
    modes = list(report.MODES) if args.mode == "all" else [args.mode]
    out_dir: Path = args.out
    out_dir.mkdir(parents=True, exist_ok=True)

    environment = env.collect(args.device)
    print(f"mvd-bench: {command}")
    print(f"device: {args.device} ({environment['device_name']}), "
          f"{environment['cpu_count']} CPUs, {environment['date_utc']}")

    results = {mode: run_mode(mode, args.device, args.quick, out_dir) for mode in modes}
    for mode, result in results.items():
        if result.get("records"):
            result["plots"] = report.write_plots(mode, result["records"], out_dir)

    notes = []
    if environment["gpu"] is None:
        notes.append("No GPU was visible to this run: it holds no GPU figures.")
    full = {
        "format": report.FORMAT,
        "command": command,
        "config": {
            "mode": args.mode,
            "modes": modes,
            "device": args.device,
            "quick": args.quick,
            "out": str(out_dir),
        },
        "environment": environment,
        "notes": notes,
        "modes": results,
        "targets": targets.evaluate(results, environment),
    }
    report.write_report(full, out_dir)
    failed = [m for m, r in results.items() if r["status"] == "failed"]
    print(f"wrote {out_dir / 'report.json'} and {out_dir / 'report.md'}")
    if failed:
        print(f"failed modes: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def run_mode(mode: str, device: str, quick: bool, out_dir: Path) -> dict:
    """Run one benchmark module; returns {"status": ok|skipped|failed, ...} with its records."""
    reason = unavailable(mode, device)
    if reason:
        print(f"[{mode}] skipped: {reason}")
        return {"status": "skipped", "reason": reason}
    print(f"[{mode}] running{' (quick)' if quick else ''} ...", flush=True)
    work_dir = out_dir / "work" / mode
    work_dir.mkdir(parents=True, exist_ok=True)
    kwargs = {"quick": quick, **({"device": device} if TAKES_DEVICE[mode] else {})}
    start = time.perf_counter()
    try:
        module = importlib.import_module(f"benchmarks.{mode}")
        records = report.validate_records(mode, module.run(work_dir, **kwargs))
    except Exception as exc:  # a failing mode is reported, the other modes still run
        traceback.print_exc()
        return {
            "status": "failed",
            "error": f"{type(exc).__name__}: {exc}",
            "seconds": time.perf_counter() - start,
        }
    seconds = time.perf_counter() - start
    for rec in records:
        print(f"[{mode}]   {report.describe(rec)}")
    print(f"[{mode}] {len(records)} records in {seconds:.1f} s", flush=True)
    return {"status": "ok", "seconds": seconds, "records": records}


def unavailable(mode: str, device: str) -> str | None:
    """Why `mode` cannot run on `device` here, or None when it can."""
    if device == "gpu" and TAKES_DEVICE[mode]:
        import torch

        if not torch.cuda.is_available():
            return "--device gpu asked for, but torch sees no CUDA device on this machine"
    return None


if __name__ == "__main__":
    sys.exit(main())
