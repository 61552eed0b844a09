"""The dry run's memory estimate for the step variants the GPU check measures: for each variant
(benchmarks/step.py), `mvd-train --dry-run`'s `peak_memory_gib_per_rank` at the variant's
per-GPU batch on one GPU, into OUT/dryrun.json, {variant: {"per_gpu_batch",
"peak_memory_gib_per_rank", "memory_method"} or {"error"}}. The summary sets it next to the
step's torch.cuda.max_memory_allocated at the same batch.

    python -m benchmarks.gpu.memory_plan --variants mvd_s,mvd_b --out OUT

Fake tensors only (no GPU, no data): it runs in the CPU rehearsal as it does on the GPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from pathlib import Path

from benchmarks import step as step_bench
from mvd.engine.dryrun import make_plan

# The dry run asks for the training set's size to plan steps; memory does not depend on it
PLANNED_SAMPLES = 1000


def plan_variant(settings: step_bench.StepSettings) -> dict:
    batch = settings.batch_sizes[0]
    cfg = step_bench.step_config(settings, batch, "gpu", "data.dir=unused", "run.dir=unused",
                                 f"data.expected_samples={PLANNED_SAMPLES}")
    plan, checked = make_plan(cfg, {"WORLD_SIZE": "1"})
    if plan is None:
        return {"per_gpu_batch": batch, "error": "; ".join(checked.errors)}
    return {"per_gpu_batch": batch, "peak_memory_gib_per_rank": plan["peak_memory_gib_per_rank"],
            "memory_method": plan["memory_method"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu.memory_plan",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", required=True, help="comma-separated step variants")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    variants = tuple(v for v in args.variants.split(",") if v)
    results = {}
    for settings in step_bench.settings_for("gpu", False, variants):
        try:
            results[settings.name] = plan_variant(settings)
        except Exception as exc:  # one variant's failure is its result; the others still run
            traceback.print_exc()
            results[settings.name] = {"error": f"{type(exc).__name__}: {exc}"}
        print(f"[dryrun] {settings.name}: {json.dumps(results[settings.name])}", flush=True)
        (args.out / "dryrun.json").write_text(json.dumps(results, indent=1) + "\n")
    return 1 if any("error" in r for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
