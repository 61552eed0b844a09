"""``mvd-demo [--out DIR]``: the whole method on a CPU in minutes, with no download.

1. synthesise the demo data (shard_tools.synth, 8 classes = 4 object colours x 2 motion
   directions, so the spatial half is easy and the motion half is what pretraining must bring):
   an unlabelled pool to pretrain on, a labelled subset of it to fine-tune on, and a held-out
   split to evaluate on;
2. stage 1: train a tiny image teacher (MAE on frames) and video teacher (VideoMAE on clips);
3. stage 2: distil a tiny student from both (MVD);
4. fine-tune the distilled student, and the same model from random init with the same budget;
5. evaluate both on the held-out split and print the accuracies side by side.

Every stage is an ordinary ``mvd-train`` run of a configs/tiny/ recipe with the overrides below
(see ``stages()``), so ``OUT/<stage>/config.yaml`` replays it. Writes OUT/summary.json:
``{"distilled": {"top1", "top5"}, "scratch": {...}, "wall_s", ...}`` (accuracies in percent).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny"


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


QUICK = Budget(pool=64, labeled=32, heldout=16, teacher_epochs=1, student_epochs=1,
               finetune_epochs=1)

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
# it room on every seed tried, and a higher lr makes its lead depend on the seed.
FINETUNE = ["data.batch_size=16", "data.repeated_aug=1", "optim.base_lr=0.032", "optim.layer_decay=1.0",
            "finetune.label_smoothing=0", "model.head_init_scale=1.0",
            "schedule.warmup_epochs=1", "data.flip=false", "data.loader_options={crop: multiscale}",
            "data.rand_augment=[]", "data.erase_prob=0", "finetune.mixup=0", "finetune.cutmix=0",
            "eval.batch_size=16", "eval.num_clips=2", "eval.num_crops=1"]


def _json(d: dict) -> str:
    return json.dumps(d, separators=(",", ":"))


def stages(out: Path, b: Budget) -> list[tuple[str, str, str, list[str]]]:
    """(name, what, tiny config, overrides) of each training run, in order."""
    common = [f"seed={b.seed}", "run.progress=false", "run.log_every=20",
              "checkpoint.every_steps=0", *CLIP]
    pool, labeled, heldout = out / "data" / "pool", out / "data" / "labeled", out / "data" / "heldout"
    pre = [f"data.dir={pool}", *PRETRAIN, *common]
    teacher = _json(ENCODER)
    ft = [f"data.dir={labeled}", f"eval.dir={heldout}", f"schedule.epochs={b.finetune_epochs}",
          f"model.overrides={teacher}", *FINETUNE, *common]
    return [
        ("image_teacher", "stage 1: MAE image teacher", "pretrain_mae",
         [*pre, f"schedule.epochs={b.teacher_epochs}", f"model.overrides={_json({**ENCODER, **DECODER})}",
          f"run.dir={out / 'image_teacher'}"]),
        ("video_teacher", "stage 1: VideoMAE video teacher", "pretrain_videomae",
         [*pre, f"schedule.epochs={b.teacher_epochs}", f"model.overrides={_json({**ENCODER, **DECODER})}",
          f"run.dir={out / 'video_teacher'}"]),
        ("student", "stage 2: MVD student from both teachers", "pretrain_mvd",
         [*pre, f"schedule.epochs={b.student_epochs}", f"model.overrides={_json({**ENCODER, **DECODER})}",
          f"teachers.image.checkpoint={out / 'image_teacher'}", f"teachers.image.overrides={teacher}",
          f"teachers.video.checkpoint={out / 'video_teacher'}", f"teachers.video.overrides={teacher}",
          *STUDENT, f"run.dir={out / 'student'}"]),
        ("distilled", "fine-tune the distilled student", "finetune",
         [*ft, f"model.init={out / 'student'}", f"run.dir={out / 'distilled'}"]),
        ("scratch", "fine-tune from scratch (same budget)", "finetune",
         [*ft, "model.init=", f"run.dir={out / 'scratch'}"]),
    ]


def make_data(out: Path, b: Budget) -> None:
    from shard_tools.synth import make_synth_dataset

    # The class is (object colour, motion direction): colour is learnt from a few labels either way,
    # so the margin is the motion the distilled student brings (shapes are not learnable at the
    # demo's 4 x 4 token grid, even by the teachers).
    common = dict(num_frames=40, width=64, height=64, num_classes=b.classes, spatial_cue="colour",
                  seed=b.seed, workers=None)
    # Clips are a function of (seed, split, index): the labelled set is the pool's first clips.
    make_synth_dataset(out / "data" / "pool", num_videos=b.pool, split="train", **common)
    make_synth_dataset(out / "data" / "labeled", num_videos=b.labeled, split="train", **common)
    make_synth_dataset(out / "data" / "heldout", num_videos=b.heldout, split="heldout", **common)


def run_demo(out: Path, budget: Budget = Budget(), console=None) -> dict:
    """Run every stage into ``out``; returns (and writes to out/summary.json) the summary."""
    from rich.console import Console

    from mvd.config import load_config
    from mvd.engine.trainer import Trainer

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
    for name, what, config, overrides in stages(out, budget):
        with console.status(what):
            t = time.perf_counter()
            results[name] = Trainer(load_config(TINY / f"{config}.yaml", overrides)).train()
            timings[name] = time.perf_counter() - t
        last = json.loads((out / name / "metrics.jsonl").read_text().splitlines()[-1])
        extra = f", held-out top-1 {results[name]['eval']['top1']:.1f}%" if "eval" in results[name] else ""
        console.print(f"{what}: {results[name]['step']} steps in {timings[name]:.0f} s, "
                      f"final loss {last['loss']:.3f}{extra}")
    summary = {name: {"top1": results[name]["eval"]["top1"], "top5": results[name]["eval"]["top5"],
                      "steps": results[name]["step"], "heldout_videos": results[name]["eval"]["videos"]}
               for name in ("distilled", "scratch")}
    summary.update(margin_top1=summary["distilled"]["top1"] - summary["scratch"]["top1"],
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
    for col in ("student", "pretraining", "top-1 %", "top-5 %", "fine-tune steps"):
        table.add_column(col, justify="right" if "%" in col or "steps" in col else "left")
    table.add_row("distilled", "MAE + VideoMAE teachers -> MVD",
                  f"{summary['distilled']['top1']:.1f}", f"{summary['distilled']['top5']:.1f}",
                  str(summary["distilled"]["steps"]))
    table.add_row("scratch", "none (random init)", f"{summary['scratch']['top1']:.1f}",
                  f"{summary['scratch']['top5']:.1f}", str(summary["scratch"]["steps"]))
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
    parser.add_argument("--quick", action="store_true",
                        help="a seconds-long smoke run with tiny budgets (its numbers mean nothing)")
    args = parser.parse_args(argv)
    from rich.console import Console

    console = Console(stderr=True)
    out = args.out or Path("runs") / time.strftime("demo-%Y%m%d-%H%M%S")
    budget = QUICK if args.quick else Budget()
    budget = Budget(**{**vars(budget), "seed": args.seed})
    logging.basicConfig(format="%(message)s", force=True)
    console.print(f"mvd-demo: writing everything under {out}")
    with quiet():
        summary = run_demo(out, budget, console)
    print_table(summary, console)
    print(json.dumps({k: summary[k] for k in ("distilled", "scratch", "wall_s", "out")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
