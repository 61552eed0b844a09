"""`mvd-bench demo`: the demo's acceptance figure, the held-out top-1 of the distilled student over
the from-scratch student after the same fine-tuning budget, for several seeds and torch thread
counts.

Each (seed, threads) is a whole `mvd-demo` run (`mvd.demo.run_demo`): its own synthetic data, both
stage-1 teachers, the distillation, both fine-tunings and the evaluation, in
`<work>/seed<N>-threads<T>`. The thread count changes the float reductions, and through them
every stage's numbers, so each is a run of its own. Two margins per run: at the end of the
fine-tuning, and over it (the mean of the validations every 3 epochs). The targets
(`benchmarks.targets`) judge the final margin's mean over the runs and its lowest (the distilled
student never behind): a 10-point margin on every run did not hold on the committed seeds, by
either margin (README). `demo_thread_shift` records, per seed, how far each accuracy and
the margin move between the thread counts. `--quick` runs seed 0 on one thread on the demo's
`--quick` budgets: it checks that the mode works, and its accuracies mean nothing.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

SEEDS = (0, 1, 2, 3, 4)
THREADS = (1, 2)
STUDENTS = ("distilled", "scratch")


def run(out_dir: Path, *, quick: bool = False, seeds: tuple[int, ...] | None = None,
        threads: tuple[int, ...] | None = None) -> list[dict]:
    from mvd.demo import QUICK, Budget, quiet, run_demo

    seeds = seeds or (SEEDS[:1] if quick else SEEDS)
    threads = threads or (THREADS[:1] if quick else THREADS)
    records, results = [], {}
    for seed in seeds:
        for n in threads:
            budget = replace(QUICK if quick else Budget(), seed=seed, threads=n)
            with quiet():
                summary = run_demo(Path(out_dir) / f"seed{seed}-threads{n}", budget)
            results[seed, n] = summary
            tag = {"seed": seed, "threads": n, "budget": "quick" if quick else "default",
                   "classes": budget.classes, "heldout": summary["distilled"]["heldout_videos"],
                   "finetune_steps": summary["distilled"]["steps"]}
            for student in STUDENTS:
                records.append({"name": "demo_top1", "value": summary[student]["top1"], "unit": "%",
                                "student": student, **tag})
                records.append({"name": "demo_curve_top1", "value": summary[student]["curve_top1"], "unit": "%",
                                "student": student, **tag, "validations": len(summary[student]["curve"]),
                                "curve": summary[student]["curve"],
                                "note": "mean held-out top-1 over the fine-tuning's validations"})
            records.append({"name": "demo_margin_top1", "value": summary["margin_top1"],
                            "unit": "points", **tag, "note": "distilled top-1 minus scratch top-1, at the end"})
            records.append({"name": "demo_margin_curve_top1", "value": summary["margin_curve_top1"],
                            "unit": "points", **tag,
                            "note": "distilled minus scratch mean held-out top-1 over the fine-tuning"})
            records.append({"name": "demo_wall_s", "value": summary["wall_s"], "unit": "s", **tag,
                            "note": "the whole demo: data, 2 teachers, distillation, 2 fine-tunings"})
    if len(threads) > 1:
        records += thread_shifts(results, seeds, threads)
    return records


def thread_shifts(results: dict, seeds: tuple[int, ...], threads: tuple[int, ...]) -> list[dict]:
    """Per seed, the largest minus the smallest figure over the thread counts, for each student's
    top-1 and for the margin: how much the outcome moves with the thread count alone."""
    records = []
    for seed in seeds:
        figures = {f"{s}_top1": [results[seed, n][s]["top1"] for n in threads] for s in STUDENTS}
        figures["margin_top1"] = [results[seed, n]["margin_top1"] for n in threads]
        figures["margin_curve_top1"] = [results[seed, n]["margin_curve_top1"] for n in threads]
        for figure, values in figures.items():
            records.append({"name": "demo_thread_shift", "value": max(values) - min(values), "unit": "points",
                            "figure": figure, "seed": seed, "threads": ",".join(map(str, threads)),
                            "note": "largest minus smallest over the thread counts"})
    return records
