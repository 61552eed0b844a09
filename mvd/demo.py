"""``mvd-demo [--out DIR]``: the whole method on a CPU in minutes, with no download.

1. synthesise the demo data (shard_tools.synth, 8 classes = 4 object colours x 2 motion
   directions, so the spatial half is easy and the motion half is what pretraining must bring):
   an unlabelled pool to pretrain on, a labelled subset of it to fine-tune on, and a held-out
   split to evaluate on;
2. stage 1: train a tiny image teacher (MAE on frames) and video teacher (VideoMAE on clips);
3. stage 2: distil a tiny student from both (MVD);
4. fine-tune the distilled student, and the same model from random init with the same budget;
5. evaluate both on the held-out split, every 3 epochs and at the end, and print the final
   accuracies and the mean over the validations side by side.

Every stage is an ordinary ``mvd-train`` run of a configs/tiny/ recipe with the overrides below
(see ``stages()``), so ``OUT/<stage>/config.yaml`` replays it. Writes OUT/summary.json:
``{"distilled": {"top1", "top5", "curve", "curve_top1"}, "scratch": {...}, "margin_top1",
"margin_curve_top1", "wall_s", ...}`` (accuracies in percent; ``curve`` holds the held-out top-1 of
each validation during fine-tuning, ``curve_top1`` their mean).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from mvd.recipes import CONFIGS

TINY = CONFIGS / "tiny"


@dataclass(frozen=True)
class Budget:
    """Sizes and epochs of the demo (the defaults run in a few minutes on 2 CPU cores)."""

    pool: int = 480  # unlabelled clips the teachers and the student pretrain on
    labeled: int = 480  # the first `labeled` clips of the pool, with labels, for fine-tuning
    heldout: int = 160  # held-out clips for evaluation
    classes: int = 8  # synthetic classes: 4 object colours x 2 motion directions
    teacher_epochs: int = 12  # stage 1, each teacher
    student_epochs: int = 20  # stage 2
    finetune_epochs: int = 30  # stage 3, both students
    seed: int = 0
    threads: int = 0  # torch threads of every stage (dist.cpu_threads; 0: mvd-train's choice)


QUICK = Budget(pool=64, labeled=32, heldout=16, teacher_epochs=1, student_epochs=1,
               finetune_epochs=1)

# The synthetic videos (shard_tools.synth): 40 frames of 64 x 64, of which a clip samples 8.
VIDEOS = {"num_frames": 40, "width": 64, "height": 64}
# The demo's model and clip: 64 px, patch 16, 8 frames -> 4 x 4 x 4 tokens, width 64, 4 blocks.
ENCODER = {"patch_size": 16, "embed_dim": 64, "depth": 4, "num_heads": 4}
DECODER = {"decoder_embed_dim": 64, "decoder_depth": 1, "decoder_num_heads": 4}
CLIP = ["data.input_size=64", "data.num_frames=8", "data.sampling_rate=4"]
# A 4 x 4 grid leaves 2 visible patches per frame at the recipe's 90%: 75% keeps 4.
PRETRAIN = ["data.batch_size=16", "optim.base_lr=1.6e-2", "schedule.warmup_epochs=1",
            "data.mask_ratio=0.75"]
# The student sees half its tokens (at 75% its encoder learns too little of the video teacher's
# motion features on this grid), and the tiny teachers' features are normalised per token.
STUDENT = ["data.mask_ratio=0.5", "loss.norm_target=true"]
# The synthetic classes name directions (no flip) and need the whole object (multi-scale crop).
# Plain fine-tuning suits a 4-block model on 480 clips better than the ViT-B recipe: no layer-wise
# decay, no label smoothing, a full-scale head, and 16 distinct clips per step (one view each:
# direction is learnt from distinct videos, and two views of 8 halve them). With the recipe's
# settings neither student learns direction within the budget (both end near 55%, colour alone).
# Direction arrives abruptly during fine-tuning, earlier for the distilled student; 30 epochs leave
# it room on every seed tried, and a higher lr makes its lead depend on the seed. The scratch
# student sometimes gets there too before the end (pilot seeds 100-102: at step ~660 on one, never
# on another), so the final top-1 alone cannot show the head start: the demo validates both
# students every VALIDATE_EVERY epochs (`evals.jsonl`), and the mean over those validations (the
# area under the held-out curve) is its figure beside the final top-1.
FINETUNE = ["data.batch_size=16", "data.repeated_aug=1", "optim.base_lr=0.032", "optim.layer_decay=1.0",
            "finetune.label_smoothing=0", "model.head_init_scale=1.0",
            "schedule.warmup_epochs=1", "data.flip=false", "data.loader_options={crop: multiscale}",
            "data.rand_augment=[]", "data.erase_prob=0", "finetune.mixup=0", "finetune.cutmix=0",
            "eval.batch_size=16", "eval.num_clips=2", "eval.num_crops=1"]
VALIDATE_EVERY = 3  # epochs between the demo's validations during fine-tuning


class Stage(NamedTuple):
    """One training run: ``mvd-train --config configs/tiny/<config>.yaml <overrides>``."""

    name: str  # its run directory under the output directory
    what: str  # its line on the console
    config: str  # the configs/tiny/ recipe
    overrides: list[str]


IMAGE_TEACHER, VIDEO_TEACHER = "image_teacher", "video_teacher"  # stage-1 run directories


def inline_json(d: dict) -> str:
    """``d`` as one-line JSON, for a config override's value (``model.overrides={...}``)."""
    return json.dumps(d, separators=(",", ":"))


def common_overrides(b: Budget) -> list[str]:
    """The overrides every stage takes: the seed, the torch threads, quiet logging, no checkpoints
    but the last, the clip."""
    return [f"seed={b.seed}", f"dist.cpu_threads={b.threads}", "run.progress=false", "run.log_every=20",
            "checkpoint.every_steps=0", *CLIP]


def _pretrain(pool: Path, b: Budget) -> list[str]:
    return [f"data.dir={pool}", *PRETRAIN, *common_overrides(b)]


def teacher_stages(out: Path, pool: Path, b: Budget) -> list[Stage]:
    """Stage 1 on ``pool``: the MAE image teacher and the VideoMAE video teacher, into
    ``out/image_teacher`` and ``out/video_teacher``."""
    pre = [*_pretrain(pool, b), f"schedule.epochs={b.teacher_epochs}",
           f"model.overrides={inline_json({**ENCODER, **DECODER})}"]
    return [Stage(IMAGE_TEACHER, "stage 1: MAE image teacher", "pretrain_mae",
                  [*pre, f"run.dir={out / IMAGE_TEACHER}"]),
            Stage(VIDEO_TEACHER, "stage 1: VideoMAE video teacher", "pretrain_videomae",
                  [*pre, f"run.dir={out / VIDEO_TEACHER}"])]


def student_stage(out: Path, pool: Path, b: Budget, name: str = "student",
                  teachers: tuple[str, ...] = ("image", "video"), what: str | None = None) -> Stage:
    """Stage 2 on ``pool``: the MVD student from the stage-1 teachers in ``out`` named by
    ``teachers``; a teacher left out is switched off (``teachers.<kind>.name=``), so a
    single-teacher student is the same model with one decoder."""
    taught = []
    for kind, run in (("image", IMAGE_TEACHER), ("video", VIDEO_TEACHER)):
        taught += ([f"teachers.{kind}.checkpoint={out / run}", f"teachers.{kind}.overrides={inline_json(ENCODER)}"]
                   if kind in teachers else [f"teachers.{kind}.name="])
    what = what or f"stage 2: MVD student from {' and '.join(teachers)} teacher{'s' * (len(teachers) > 1)}"
    return Stage(name, what, "pretrain_mvd",
                 [*_pretrain(pool, b), f"schedule.epochs={b.student_epochs}",
                  f"model.overrides={inline_json({**ENCODER, **DECODER})}", *taught, *STUDENT,
                  f"run.dir={out / name}"])


def finetune_stage(out: Path, name: str, what: str, labeled: Path, heldout: Path, b: Budget,
                   init: Path | None, validate_every: int = 0) -> Stage:
    """Fine-tune on ``labeled`` from the run ``init`` (None: random init), evaluated on
    ``heldout`` at the end (and every ``validate_every`` epochs when > 0)."""
    return Stage(name, what, "finetune",
                 [f"data.dir={labeled}", f"eval.dir={heldout}", f"schedule.epochs={b.finetune_epochs}",
                  f"model.overrides={inline_json(ENCODER)}", *FINETUNE, f"eval.every_epochs={validate_every}",
                  *common_overrides(b), f"model.init={init or ''}", f"run.dir={out / name}"])


def stages(out: Path, b: Budget) -> list[Stage]:
    """The demo's training runs, in order."""
    pool, labeled, heldout = out / "data" / "pool", out / "data" / "labeled", out / "data" / "heldout"
    return [
        *teacher_stages(out, pool, b),
        student_stage(out, pool, b, what="stage 2: MVD student from both teachers"),
        finetune_stage(out, "distilled", "fine-tune the distilled student", labeled, heldout, b, out / "student",
                       VALIDATE_EVERY),
        finetune_stage(out, "scratch", "fine-tune from scratch (same budget)", labeled, heldout, b, None,
                       VALIDATE_EVERY),
    ]


def data_options(b: Budget) -> dict:
    """``make_synth_dataset``'s options for the demo's clips (pool, labelled and held-out sets)."""
    return dict(**VIDEOS, num_classes=b.classes, spatial_cue="colour", seed=b.seed, workers=None)


def make_data(out: Path, b: Budget) -> None:
    from shard_tools.synth import make_synth_dataset

    # The class is (object colour, motion direction): colour is learnt from a few labels either way,
    # so the margin is the motion the distilled student brings (shapes are not learnable at the
    # demo's 4 x 4 token grid, even by the teachers).
    common = data_options(b)
    # Clips are a function of (seed, split, index): the labelled set is the pool's first clips.
    make_synth_dataset(out / "data" / "pool", num_videos=b.pool, split="train", **common)
    make_synth_dataset(out / "data" / "labeled", num_videos=b.labeled, split="train", **common)
    make_synth_dataset(out / "data" / "heldout", num_videos=b.heldout, split="heldout", **common)


def run_stage(out: Path, stage: Stage, console) -> tuple[dict, float]:
    """Train ``stage`` (its run directory is ``out/<name>``); prints one line, returns
    (``Trainer.train()``'s result, seconds)."""
    from mvd.config import load_config
    from mvd.engine.trainer import Trainer

    with console.status(stage.what):
        t = time.perf_counter()
        result = Trainer(load_config(TINY / f"{stage.config}.yaml", stage.overrides)).train()
        seconds = time.perf_counter() - t
    last = json.loads((out / stage.name / "metrics.jsonl").read_text().splitlines()[-1])
    scores = result.get("eval", {})
    extra = (f", held-out top-1 {scores['top1']:.1f}%" if "top1" in scores else
             f", held-out frame mAP {100 * scores['mAP']:.1f}%" if scores.get("mAP") is not None else "")
    console.print(f"{stage.what}: {result['step']} steps in {seconds:.0f} s, final loss {last['loss']:.3f}{extra}")
    return result, seconds


def keep_configs(out: Path, runs: list[Stage], data: dict, dest: Path) -> None:
    """Each run's resolved config as ``dest/<name>.yaml`` and ``data`` (data directory -> the
    keyword arguments that made it) as ``dest/data.json``: replay with ``mvd-train --config FILE``
    after remaking the data at the paths the configs name (the run directories may be gone)."""
    dest.mkdir(parents=True, exist_ok=True)
    for stage in runs:
        shutil.copyfile(out / stage.name / "config.yaml", dest / f"{stage.name}.yaml")
    (dest / "data.json").write_text(json.dumps(data, indent=1) + "\n")


def held_out_curve(run_dir: Path) -> dict:
    """A fine-tuning's validations (``evals.jsonl``): ``curve`` [[step, top-1], ...] and
    ``curve_top1``, their mean (the area under the held-out curve over the budget, in percent)."""
    rows = [json.loads(line) for line in (run_dir / "evals.jsonl").read_text().splitlines() if line.strip()]
    curve = [[r["step"], r["top1"]] for r in rows]
    return {"curve": curve, "curve_top1": sum(top1 for _, top1 in curve) / len(curve)}


def run_demo(out: Path, budget: Budget = Budget(), console=None) -> dict:
    """Run every stage into ``out``; returns (and writes to out/summary.json) the summary."""
    from rich.console import Console

    console = console or Console(stderr=True)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    timings = {}
    with console.status("synthesising the demo data"):
        t = time.perf_counter()
        make_data(out, budget)
        timings["data"] = time.perf_counter() - t
    console.print(f"data: {budget.pool} pool clips ({budget.labeled} labelled), "
                  f"{budget.heldout} held out, in {timings['data']:.0f} s")
    results = {}
    for stage in stages(out, budget):
        results[stage.name], timings[stage.name] = run_stage(out, stage, console)
    summary = {name: {"top1": results[name]["eval"]["top1"], "top5": results[name]["eval"]["top5"],
                      "steps": results[name]["step"], "heldout_videos": results[name]["eval"]["videos"],
                      **held_out_curve(out / name)}
               for name in ("distilled", "scratch")}
    summary.update(margin_top1=summary["distilled"]["top1"] - summary["scratch"]["top1"],
                   margin_curve_top1=summary["distilled"]["curve_top1"] - summary["scratch"]["curve_top1"],
                   wall_s=time.perf_counter() - start, stage_s=timings, out=str(out),
                   budget=vars(budget))
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


@contextlib.contextmanager
def quiet():
    """The demo's stages log only errors and no deprecation warnings (DALI's auto_aug raises
    them on every pipeline build); the stage lines and the table say what happens."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            yield
    finally:
        root.setLevel(level)


def print_table(summary: dict, console) -> None:
    from rich.table import Table

    table = Table(title="MVD demo: held-out accuracy after the same fine-tuning budget")
    for col in ("student", "pretraining", "top-1 %", "top-5 %", "mean top-1 % over the fine-tuning",
                "fine-tune steps"):
        table.add_column(col, justify="right" if "%" in col or "steps" in col else "left")
    for name, pretraining in (("distilled", "MAE + VideoMAE teachers -> MVD"), ("scratch", "none (random init)")):
        s = summary[name]
        table.add_row(name, pretraining, f"{s['top1']:.1f}", f"{s['top5']:.1f}",
                      f"{s['curve_top1']:.1f} ({len(s['curve'])} validations)", str(s["steps"]))
    console.print(table)
    console.print(f"chance is {100 / summary['budget']['classes']:.1f}%; everything is under {summary['out']} "
                  f"(summary.json, one run directory per stage); {summary['wall_s']:.0f} s in all")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="mvd-demo", description="Run the whole MVD method on synthetic data on a CPU: "
        "teachers, distillation, fine-tuning, and a from-scratch baseline.")
    parser.add_argument("--out", type=Path, default=None,
                        help="run directory (default: runs/demo-YYYYmmdd-HHMMSS)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data and every stage")
    parser.add_argument("--threads", type=int, default=0, metavar="N",
                        help="torch threads of every stage (dist.cpu_threads; default 0: half the cores, "
                        "1 on 2 cores); the accuracies depend a little on it, see README")
    parser.add_argument("--quick", action="store_true",
                        help="a seconds-long smoke run with tiny budgets (its numbers mean nothing)")
    args = parser.parse_args(argv)
    from rich.console import Console

    console = Console(stderr=True)
    out = args.out or Path("runs") / time.strftime("demo-%Y%m%d-%H%M%S")
    budget = QUICK if args.quick else Budget()
    if args.threads < 0:
        parser.error(f"--threads must be >= 0, got {args.threads}")
    budget = Budget(**{**vars(budget), "seed": args.seed, "threads": args.threads})
    logging.basicConfig(format="%(message)s", force=True)
    console.print(f"mvd-demo: writing everything under {out}")
    with quiet():
        summary = run_demo(out, budget, console)
    print_table(summary, console)
    print(json.dumps({k: summary[k] for k in ("distilled", "scratch", "wall_s", "out")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
