"""`mvd-bench {shard,loader,model,step,demo,teachers,detect,storage,all} [--device cpu|gpu] [--quick] --out DIR`.

Runs the chosen benchmark modules, then writes DIR/report.json, DIR/report.md and PNG plots.
Each module is `benchmarks.<mode>` with `run(out_dir, *, quick[, device, seeds, report_dir])
-> list[dict]` (the keywords `MODE_ARGS` names). A module may also define `summarise(records)
-> dict`: its block in report.json under the mode's name, rendered by `report`.
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

# The keywords each mode's run() takes beside `quick` (`all` runs report.MODES in order).
MODE_ARGS = {"shard": (), "loader": ("device",), "model": ("device",),
             "step": ("device", "variants", "feed", "report_dir"), "demo": ("seeds", "threads"),
             "teachers": ("seeds", "report_dir"), "detect": ("seeds", "report_dir"), "storage": ()}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="mvd-bench",
        description="Throughput suite: sharding, loaders, model forward+backward and the full "
        "MVD training step; the demo's accuracy margin (distilled over scratch, seeds 0-4 at 1 and 2 "
        "torch threads); and "
        "which teacher helps which task (teachers: image-, video- and co-taught students on a "
        "spatial and a temporal task, seeds 0-2); and AVA-style action detection on synthetic "
        "movies (detect: distilled over scratch frame mAP, seeds 0-2). Writes report.json, "
        "report.md and PNG plots into --out.",
    )
    parser.add_argument(
        "mode", choices=(*report.MODES, *report.SOLO_MODES, "all"),
        help="what to measure; `all` runs " + ", ".join(report.MODES) + " and leaves out "
        + ", ".join(report.SOLO_MODES) + " (teachers about 8 minutes a seed on 2 cores, detect "
        "about 5; under a minute with --quick: run them by name; storage: the pretrain loader "
        "from a local S3 server beside the same shards on disk, about 2 minutes)")
    parser.add_argument(
        "--device",
        choices=("cpu", "gpu"),
        default="cpu",
        help="where loaders decode and models run (default: cpu); sharding always runs on CPU",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny models and inputs, few iterations: all modes in under 5 minutes on 2 cores; "
        "teachers and detect on one seed in about a minute (their accuracies mean nothing)",
    )
    parser.add_argument("--seeds", type=_seeds, metavar="N,N,...",
                        help="demo, teachers and detect only: the seeds to run (default 0-4 for demo, "
                        "0,1,2 for the others; 0 with --quick)")
    parser.add_argument("--threads", type=_threads, metavar="N,N,...",
                        help="demo only: the torch thread counts to run each seed with (default 1,2; "
                        "1 with --quick)")
    parser.add_argument("--variants", type=_names, metavar="NAME,NAME,...",
                        help="step only: the variants to measure, in this order (on a GPU: "
                        "mvd_s, mvd_b, mvd_s_compiled, mvd_b_compiled; default all)")
    parser.add_argument("--feed", choices=("loader", "synthetic"),
                        help="step only: 'loader' (default) feeds the step from the real "
                        "loader; 'synthetic' (--device gpu) from one batch made on the GPU, "
                        "torch alone (no DALI, PyAV or webdataset): compute-only figures, and "
                        "steady-state steps under torch.cuda.set_sync_debug_mode('error')")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR",
                        help="report directory (report.json, report.md, plots)")
    parser.add_argument(
        "--work",
        type=Path,
        metavar="DIR",
        help="keep the modules' scratch data (synthetic videos and shards, run dirs) here and "
        "reuse it on the next run; default: a temporary directory, deleted at the end",
    )
    args = parser.parse_args(argv)
    if args.seeds is not None and "seeds" not in MODE_ARGS.get(args.mode, ()):
        parser.error(f"--seeds applies to {', '.join(m for m, a in MODE_ARGS.items() if 'seeds' in a)} only, "
                     f"not to {args.mode}")
    for flag in ("variants", "feed", "threads"):
        if getattr(args, flag) is not None and flag not in MODE_ARGS.get(args.mode, ()):
            only = ", ".join(m for m, a in MODE_ARGS.items() if flag in a)
            parser.error(f"--{flag} applies to {only} only, not to {args.mode}")
    return args


def _names(text: str) -> tuple[str, ...]:
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated names, got {text!r}")
    return names


def _integers(text: str, flag: str, example: str, lowest: int) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{flag} takes comma-separated integers like {example}, "
                                         f"got {text!r}") from None
    if len(set(values)) != len(values) or min(values) < lowest:
        raise argparse.ArgumentTypeError(f"{flag} must be distinct integers >= {lowest}, got {text!r}")
    return values


def _seeds(text: str) -> tuple[int, ...]:
    return _integers(text, "--seeds", "0,1,2", 0)


def _threads(text: str) -> tuple[int, ...]:
    return _integers(text, "--threads", "1,2", 1)


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
        context = {"device": args.device, "seeds": args.seeds, "report_dir": args.out,
                   "variants": args.variants, "feed": args.feed, "threads": args.threads}
        results = {mode: run_mode(mode, args.quick, work / mode, context) for mode in modes}
    environment["load_average_at_end"] = env.load_average()
    summaries = {}
    for mode, result in results.items():
        if result.get("records"):
            result["plots"] = report.write_plots(mode, result["records"], args.out)
        block = summarise(mode, result)
        if block is not None:
            block["plots"] = report.write_summary_plots(mode, block, args.out)
            summaries[mode] = block

    full = {
        "format": report.FORMAT,
        "command": command,
        "config": {"mode": args.mode, "modes": modes, "device": args.device, "quick": args.quick,
                   **({"seeds": list(args.seeds)} if args.seeds else {}), "out": str(args.out),
                   "work": str(args.work) if args.work else None},
        "environment": environment,
        "notes": notes(environment),
        "modes": results,
        "targets": targets.evaluate(results, environment),
        **summaries,
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


def run_mode(mode: str, quick: bool, work_dir: Path, context: dict) -> dict:
    """Run one benchmark module in `work_dir`, passing it the keywords of `context` (device,
    seeds, report_dir) that MODE_ARGS names; returns {"status": ok|skipped|failed, ...} with its
    records."""
    device = context["device"]
    reason = unavailable(mode, device)
    if reason:
        print(f"[{mode}] skipped: {reason}")
        return {"status": "skipped", "reason": reason}
    print(f"[{mode}] running{' (quick)' if quick else ''} ...", flush=True)
    work_dir.mkdir(parents=True, exist_ok=True)
    kwargs = {"quick": quick, **{k: context[k] for k in MODE_ARGS[mode] if context[k] is not None}}
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


def summarise(mode: str, result: dict) -> dict | None:
    """The mode's report.json block (its module's `summarise(records)`), or None when it has
    none or did not run. A block that cannot be made marks the mode failed."""
    if result["status"] != "ok":
        return None
    module = importlib.import_module(f"benchmarks.{mode}")
    if not hasattr(module, "summarise"):
        return None
    try:
        return module.summarise(result["records"])
    except Exception as exc:  # the records are kept in the report; the block's failure is stated
        traceback.print_exc()
        result.update(status="failed", error=f"summarising the records: {type(exc).__name__}: {exc}")
        return None


def unavailable(mode: str, device: str) -> str | None:
    """Why `mode` cannot run on `device` here, or None when it can."""
    if device == "gpu" and "device" in MODE_ARGS[mode]:
        import torch

        if not torch.cuda.is_available():
            return "--device gpu asked for, but torch sees no CUDA device on this machine"
    if mode == "storage":
        from importlib.util import find_spec

        lacking = [m for m in ("s3fs", "moto") if find_spec(m) is None]
        if lacking:
            return f"{' and '.join(lacking)} not installed (pip install -e '.[dev]': s3fs and moto[server])"
    return None


if __name__ == "__main__":
    sys.exit(main())
