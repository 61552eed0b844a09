"""`mvd-bench detect`: AVA-style action detection on synthetic data, a detector fine-tuned from the
distilled student against one fine-tuned from random init with the same budget (frame mAP@0.5 on
the held-out keyframes' proposals, the official AVA protocol of `mvd-ava-eval`), for several seeds.

Each seed, in `<work>/seed<N>`:

1. pretraining, as the demo runs it (`mvd.demo`): its unlabelled synthetic pool, the stage-1 MAE
   and VideoMAE teachers, the stage-2 MVD student from both. The pool is not the detection data,
   as the paper's AVA models start from encoders pretrained on Kinetics-400, but like Kinetics it
   holds the motions the actions name and varied appearance: its 16-class grid moves objects in
   all four directions (the demo's 8 classes only left and right), and its objects take random
   colours (the shape-cue clips; the demo's colour-cue clips use four palette colours);
2. synthetic AVA-like train and held-out sets (`shard_tools.synth_ava`: movies, the v2.2 CSVs,
   label maps, excluded timestamps and person proposals, packed by `mvd-shard ava`'s code): up to
   three moving "persons" per movie whose multi-label actions are their motion around the
   keyframe (move left / right / up / down, grow, shrink, stand still);
3. two `task: detect` fine-tunes of configs/tiny/detect.yaml with the same overrides (`DETECT`),
   from the student and from scratch, each scored on the held-out proposals at the end.

The margin must hold for every seed, so the target judges the lowest one. `--quick` runs one seed
on tiny budgets: it checks that the mode works, and its figures mean nothing.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

from mvd import demo

SEEDS = (0, 1, 2)


@dataclass(frozen=True)
class DetectBudget:
    """The detection half of a seed (the pretraining half is the demo's `mvd.demo.Budget`)."""

    train_movies: int = 24  # 15 keyframes each, about 350 packed (excluded ones are skipped)
    heldout_movies: int = 8
    seconds: int = 16  # per movie: keyframes at seconds 1 .. 15
    epochs: int = 30
    pretrain: demo.Budget = replace(demo.Budget(), classes=16)


QUICK = DetectBudget(train_movies=2, heldout_movies=1, seconds=6, epochs=1,
                     pretrain=replace(demo.QUICK, classes=16))

# One budget for both detectors: the demo's tiny encoder at 64 px, 8 frames every second frame of
# the 16-frame keyframe clips (1.3 s around the keyframe at 12 fps, which covers the labelled
# second). No flip: the synthetic actions name directions, and a flipped "move left" is a "move
# right". The demo's plain fine-tuning settings (no layer decay, a full-scale head) for a 4-block
# model on a few hundred keyframes.
DETECT = ["data.input_size=64", "data.num_frames=8", "data.sampling_rate=2", "data.batch_size=8",
          "data.flip=false", "eval.batch_size=8", "optim.base_lr=0.032", "optim.layer_decay=1.0",
          "model.head_init_scale=1.0", "schedule.warmup_epochs=1"]


def detect_stage(out: Path, name: str, what: str, b: DetectBudget, init: Path | None) -> demo.Stage:
    """Fine-tune a detector on ``out/data/ava-train`` from the run ``init`` (None: random init),
    scored on ``out/data/ava-heldout`` at the end."""
    data = out / "data"
    return demo.Stage(name, what, "detect",
                      [*demo.common_overrides(b.pretrain), *DETECT, f"data.dir={data / 'ava-train'}",
                       f"eval.dir={data / 'ava-heldout'}", f"schedule.epochs={b.epochs}",
                       f"model.overrides={demo.inline_json(demo.ENCODER)}", f"model.init={init or ''}",
                       f"run.dir={out / name}"])


def stages(out: Path, b: DetectBudget) -> list[demo.Stage]:
    """Every training run of one seed, in order."""
    pool = out / "data" / "pool"
    return [*demo.teacher_stages(out, pool, b.pretrain),
            demo.student_stage(out, pool, b.pretrain, what="stage 2: MVD student from both teachers"),
            detect_stage(out, "distilled", "detect: fine-tune the distilled student", b, out / "student"),
            detect_stage(out, "scratch", "detect: fine-tune from scratch (same budget)", b, None)]


def data_recipes(b: DetectBudget) -> dict[str, tuple[str, dict]]:
    """Each data directory under ``<seed dir>/data``: (the function that makes it, its keyword
    arguments): the pretraining pool (``shard_tools.synth.make_synth_dataset``) and the AVA-like
    train and held-out sets (``shard_tools.synth_ava.make_synth_ava_shards``)."""
    p = b.pretrain
    recipes = {"pool": ("make_synth_dataset", {**demo.data_options(p), "spatial_cue": "shape",
                                               "num_videos": p.pool, "split": "train"})}
    for split, movies in (("train", b.train_movies), ("heldout", b.heldout_movies)):
        recipes[f"ava-{split}"] = ("make_synth_ava_shards",
                                   {"movies": movies, "seconds": b.seconds, "seed": p.seed, "split": split})
    return recipes


def make_data(out: Path, b: DetectBudget) -> dict:
    """Every data directory of one seed; returns their sizes."""
    from shard_tools.synth import make_synth_dataset
    from shard_tools.synth_ava import make_synth_ava_shards

    makers = {"make_synth_dataset": make_synth_dataset, "make_synth_ava_shards": make_synth_ava_shards}
    sizes = {}
    for name, (maker, kwargs) in data_recipes(b).items():
        made = makers[maker](out / "data" / name, **kwargs)
        manifest = made if maker == "make_synth_dataset" else made.manifest
        sizes[name] = {"samples": manifest["samples"], "boxes": manifest.get("detection", {}).get("boxes")}
    return sizes


def run_seed(out: Path, b: DetectBudget, console, report_dir: Path | None = None) -> dict:
    """One seed into ``out``; returns (and writes to out/summary.json) its summary. With
    ``report_dir``, each run's resolved config and the data recipes go to
    ``report_dir/configs/seed<N>/`` (see ``mvd.demo.keep_configs``)."""
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    t = time.perf_counter()
    sizes = make_data(out, b)
    timings = {"data": time.perf_counter() - t}
    results = {}
    for stage in stages(out, b):
        results[stage.name], timings[stage.name] = demo.run_stage(out, stage, console)
    summary = {arm: {"map": 100 * results[arm]["eval"]["mAP"], "steps": results[arm]["step"],
                     "keyframes": results[arm]["eval"]["keyframes"]} for arm in ("distilled", "scratch")}
    summary.update(margin_map=summary["distilled"]["map"] - summary["scratch"]["map"], data=sizes,
                   wall_s=time.perf_counter() - start, stage_s=timings, out=str(out))
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    if report_dir is not None:
        recipes = {str(out / "data" / name): {"function": maker, **kwargs}
                   for name, (maker, kwargs) in data_recipes(b).items()}
        demo.keep_configs(out, stages(out, b), recipes, Path(report_dir) / "configs" / f"seed{b.pretrain.seed}")
    return summary


def run(out_dir: Path, *, quick: bool = False, seeds: tuple[int, ...] | None = None,
        report_dir: Path | None = None) -> list[dict]:
    from rich.console import Console

    console = Console(stderr=True)
    records = []
    base = QUICK if quick else DetectBudget()
    for seed in seeds or (SEEDS[:1] if quick else SEEDS):
        budget = replace(base, pretrain=replace(base.pretrain, seed=seed))
        with demo.quiet():
            summary = run_seed(Path(out_dir) / f"seed{seed}", budget, console, report_dir)
        tag = {"seed": seed, "budget": "quick" if quick else "default",
               "heldout_keyframes": summary["distilled"]["keyframes"],
               "finetune_steps": summary["distilled"]["steps"]}
        for arm in ("distilled", "scratch"):
            records.append({"name": "detect_map", "value": summary[arm]["map"], "unit": "%",
                            "student": arm, **tag})
        records.append({"name": "detect_margin_map", "value": summary["margin_map"], "unit": "points",
                        **tag, "note": "distilled frame mAP minus scratch frame mAP"})
        records.append({"name": "detect_wall_s", "value": summary["wall_s"], "unit": "s", **tag,
                        "note": "data, 2 teachers, distillation, 2 detection fine-tunings"})
    return records
