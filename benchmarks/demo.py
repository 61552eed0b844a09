"""`mvd-bench demo`: the demo's acceptance figure, the held-out top-1 of the distilled student over
the from-scratch student after the same fine-tuning budget, for several seeds.

Each seed is a whole `mvd-demo` run (`mvd.demo.run_demo`): its own synthetic data, both stage-1
teachers, the distillation, both fine-tunings and the evaluation, in `<work>/seed<N>`. The margin
must hold for every seed, so the target judges the lowest one. `--quick` runs one seed on the
demo's `--quick` budgets: it checks that the mode works, and its accuracies mean nothing.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

SEEDS = (0, 1, 2)


def run(out_dir: Path, *, quick: bool = False) -> list[dict]:
    from mvd.demo import QUICK, Budget, quiet, run_demo

    records = []
    for seed in SEEDS[:1] if quick else SEEDS:
        budget = replace(QUICK if quick else Budget(), seed=seed)
        with quiet():
            summary = run_demo(Path(out_dir) / f"seed{seed}", budget)
        tag = {"seed": seed, "budget": "quick" if quick else "default",
               "classes": budget.classes, "heldout": summary["distilled"]["heldout_videos"],
               "finetune_steps": summary["distilled"]["steps"]}
        for student in ("distilled", "scratch"):
            records.append({"name": "demo_top1", "value": summary[student]["top1"], "unit": "%",
                            "student": student, **tag})
        records.append({"name": "demo_margin_top1", "value": summary["margin_top1"],
                        "unit": "points", **tag, "note": "distilled top-1 minus scratch top-1"})
        records.append({"name": "demo_wall_s", "value": summary["wall_s"], "unit": "s", **tag,
                        "note": "the whole demo: data, 2 teachers, distillation, 2 fine-tunings"})
    return records
