"""`mvd-bench {shard,loader,model,step,demo,all} [--device cpu|gpu] [--quick] --out DIR`.

Runs the chosen benchmark modules, then writes DIR/report.json, DIR/report.md and PNG plots.
Each module is `benchmarks.<mode>` with `run(out_dir, *, quick[, device]) -> list[dict]`.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import shlex
import sys
import tempfile
import time
import traceback
from pathlib import Path

from benchmarks import env, report, targets

# Whether each mode's run() takes the device (`all` runs them in report.MODES order).
TAKES_DEVICE = {"shard": False, "loader": True, "model": True, "step": True, "demo": False}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="mvd-bench",
        description="Throughput suite: sharding, loaders, model forward+backward and the full "
        "MVD training step; and the demo's accuracy margin (distilled over scratch, seeds 0-2). "
        "Writes report.json, report.md and PNG plots into --out.",
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
    parser.add_argument("--out", type=Path, required=True, metavar="DIR",
                        help="report directory (report.json, report.md, plots)")
    parser.add_argument(
        "--work",
        type=Path,
        metavar="DIR",
        help="keep the modules' scratch data (synthetic videos and shards, run dirs) here and "
        "reuse it on the next run; default: a temporary directory, deleted at the end",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = shlex.join(["mvd-bench", *(sys.argv[1:] if argv is None else argv)])
    modes = list(report.MODES) if args.mode == "all" else [args.mode]
    args.out.mkdir(parents=True, exist_ok=True)

    environment = env.collect(args.device)
    print(f"mvd-bench: {command}")
    print(f"device: {args.device} ({environment['device_name']}), "
          f"{environment['cpu_count']} CPUs, {environment['date_utc']}")
    with contextlib.ExitStack() as stack:
        work = args.work or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mvd-bench-")))
        results = {mode: run_mode(mode, args.device, args.quick, work / mode) for mode in modes}
    environment["load_average_at_end"] = env.load_average()
    for mode, result in results.items():
        if result.get("records"):
            result["plots"] = report.write_plots(mode, result["records"], args.out)

    full = {
        "format": report.FORMAT,
        "command": command,
        "config": {"mode": args.mode, "modes": modes, "device": args.device, "quick": args.quick,
                   "out": str(args.out), "work": str(args.work) if args.work else None},
        "environment": environment,
        "notes": notes(environment),
        "modes": results,
        "targets": targets.evaluate(results, environment),
    }
    report.write_report(full, args.out)
    print(f"wrote {args.out / 'report.json'} and {args.out / 'report.md'}")
    failed = [m for m, r in results.items() if r["status"] == "failed"]
    if failed:
        print(f"failed modes: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def notes(environment: dict) -> list[str]:
    """What a reader must know to weigh the figures: no GPU, a machine busy with other work."""
    out = []
    if environment["gpu"] is None:
        out.append("No GPU was visible to this run: it holds no GPU figures.")
    # The load before the run started is other work; the load at the end includes this run.
    load = (environment["load_average_at_start"] or [0.0])[0]
    if load > 0.5 * environment["cpu_count"]:
        out.append(f"The machine was busy when the run started (1-minute load average {load:g} "
                   f"on {environment['cpu_count']} CPUs): CPU figures may be low and noisy.")
    return out


def run_mode(mode: str, device: str, quick: bool, work_dir: Path) -> dict:
    """Run one benchmark module in `work_dir`; returns {"status": ok|skipped|failed, ...} with
    its records."""
    reason = unavailable(mode, device)
    if reason:
        print(f"[{mode}] skipped: {reason}")
        return {"status": "skipped", "reason": reason}
    print(f"[{mode}] running{' (quick)' if quick else ''} ...", flush=True)
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
    about = " ".join((module.__doc__ or "").split("\n\n")[0].split())
    print(f"[{mode}] {len(records)} records in {seconds:.1f} s")
    print("\n".join(report.tables(records)))
    for rec in records:
        if "value" not in rec:
            print(f"[{mode}]   {report.describe(rec)}")
    print(flush=True)
    return {"status": "ok", "about": about, "seconds": seconds, "records": records}


def unavailable(mode: str, device: str) -> str | None:
    """Why `mode` cannot run on `device` here, or None when it can."""
    if device == "gpu" and TAKES_DEVICE[mode]:
        import torch

        if not torch.cuda.is_available():
            return "--device gpu asked for, but torch sees no CUDA device on this machine"
    return None


if __name__ == "__main__":
    sys.exit(main())
