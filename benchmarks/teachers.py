"""`mvd-bench teachers`: which teacher helps which task, the paper's central claim measured on
synthetic clips: students distilled from an image teacher transfer better to a spatial task,
students distilled from a video teacher to a temporal task, and co-teaching beats either alone.

The design follows from what each teacher can see, fixed before any run. Every clip
(`shard_tools.synth`, shape cue, 16 = 4 shapes x 4 directions) shows one object of random colour,
size, speed and start moving in a straight line over a random noisy background.

- The image teacher (MAE on single frames) sees an object's appearance and where it is, never how
  it moves. The video teacher (VideoMAE on tube-masked clips) must also model the motion.
- Spatial task: 4 classes by the object's shape; every class sees every direction equally
  often. Shape, not colour: colour is read off one pixel (in the demo every arm, scratch
  included, learns it in a few steps), while shape needs the layout of the object's pixels.
- Temporal task: 4 classes by direction; every class sees every shape equally often, and no
  single frame tells the class.
- Both tasks label the same clips (`label_by` relabels clip i, it does not redraw it) and pretrain
  on one unlabelled pool whose clips vary in both factors, so the tasks differ only in which
  factor the label names.

Per seed, in `<work>/seed<N>`, with one budget for every arm (the demo's recipe, `mvd.demo`):
stage 1 trains both teachers once; stage 2 distils three students (image-only, video-only,
both: the same student, steps and data; a single-teacher student is the same model with one
decoder); each student and a from-scratch model are fine-tuned on both tasks and evaluated on
the task's held-out clips (softmax averaged over 2 clips per video). The probe then reads each
pretrained student's encoder tokens on the held-out clips (all tokens visible, one centre clip
per video) and measures how static they are: the cosine similarity of the tokens at one spatial
position in two time slices, averaged over positions and clips, per temporal distance. Every
stage is an ordinary `mvd-train` run; its resolved config lands in `<report>/configs/seed<N>/`.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.env import load_average
from mvd import demo
from mvd.demo import Budget, Stage, finetune_stage, student_stage, teacher_stages

SEEDS = (0, 1, 2)
# task -> the synth factor its labels name
TASKS = {"spatial": "cue", "temporal": "direction"}
# student -> the teachers it is distilled from
STUDENTS = {"image": ("image",), "video": ("video",), "both": ("image", "video")}
ARMS = (*STUDENTS, "scratch")
# 16 synthetic classes: 4 shapes x 4 directions, each task labels one factor (4 classes)
BUDGET = replace(Budget(), classes=16)
QUICK = replace(demo.QUICK, classes=16)
SPATIAL_CUE = "shape"
PROBE_BATCH = 16


# ---------------------------------------------------------------------------------------------
# The runs


def data_recipes(b: Budget) -> dict[str, dict]:
    """Keyword arguments of `make_synth_dataset` for each data directory under `<seed dir>/data`:
    the pool, and per task its labelled clips (the pool's first ones) and held-out clips."""
    common = dict(**demo.VIDEOS, num_classes=b.classes, spatial_cue=SPATIAL_CUE, seed=b.seed)
    recipes = {"pool": dict(common, num_videos=b.pool, split="train")}
    for task, label_by in TASKS.items():
        recipes[f"{task}-train"] = dict(common, num_videos=b.labeled, split="train", label_by=label_by)
        recipes[f"{task}-heldout"] = dict(common, num_videos=b.heldout, split="heldout", label_by=label_by)
    return recipes


def make_data(out: Path, b: Budget) -> None:
    from shard_tools.synth import make_synth_dataset

    for name, recipe in data_recipes(b).items():
        make_synth_dataset(out / "data" / name, workers=None, **recipe)


def stages(out: Path, b: Budget) -> list[Stage]:
    """The training runs of one seed, in order: 2 teachers, 3 students, 8 fine-tunes."""
    pool = out / "data" / "pool"
    runs = teacher_stages(out, pool, b)
    runs += [student_stage(out, pool, b, name=f"student_{arm}", teachers=teachers)
             for arm, teachers in STUDENTS.items()]
    for task in TASKS:
        for arm in ARMS:
            init = None if arm == "scratch" else out / f"student_{arm}"
            start = "from scratch" if init is None else f"the {arm}-taught student"
            what = f"fine-tune {start} on the {task} task"
            runs.append(finetune_stage(out, f"{task}_{arm}", what, out / "data" / f"{task}-train",
                                       out / "data" / f"{task}-heldout", b, init))
    return runs


def run_seed(out: Path, b: Budget, console, report_dir: Path | None = None) -> list[dict]:
    """Data, every stage and the probe of one seed in `out`; returns its records. With
    `report_dir`, each stage's resolved config and the data recipes are copied to
    `report_dir/configs/seed<N>/` (the run directories may be temporary)."""
    tag = {"seed": b.seed}
    records = []
    start = time.perf_counter()

    def timed(stage: str, seconds: float, load: list[float] | None) -> None:
        records.append({"name": "teachers_stage_s", "value": seconds, "unit": "s", "stage": stage, **tag,
                        "load_1min_at_start": (load or [None])[0]})

    load = load_average()
    with console.status("synthesising the clips"):
        t = time.perf_counter()
        make_data(out, b)
    timed("data", time.perf_counter() - t, load)
    console.print(f"seed {b.seed}: {b.pool} pool clips, {b.labeled} labelled and {b.heldout} held-out clips per "
                  f"task, in {time.perf_counter() - t:.0f} s")
    for stage in stages(out, b):
        load = load_average()
        result, seconds = demo.run_stage(out, stage, console)
        timed(stage.name, seconds, load)
        if "eval" in result:
            task, arm = stage.name.split("_")
            records.append({"name": "teachers_top1", "value": result["eval"]["top1"], "unit": "%", "task": task,
                            "arm": arm, **tag, "heldout": result["eval"]["videos"],
                            "finetune_steps": result["step"]})
    load = load_average()
    with console.status("probing the students' features"):
        t = time.perf_counter()
        sims = probe(out, out / "data" / "spatial-heldout")
    timed("probe", time.perf_counter() - t, load)
    console.print("features' cosine similarity across time slices (all pairs): " +
                  ", ".join(f"{model} {pair_mean(sim):.4f}" for model, sim in sims.items()))
    for model, sim in sims.items():
        records.append({"name": "teachers_similarity", "value": pair_mean(sim), "unit": "cosine",
                        "model": model, **tag, "note": "mean over all pairs of time slices"})
        records += [{"name": "teachers_similarity_at", "value": v, "unit": "cosine", "model": model, **tag,
                     "distance": d} for d, v in enumerate(distance_profile(sim), start=1)]
    records.append({"name": "teachers_seed_wall_s", "value": time.perf_counter() - start, "unit": "s", **tag,
                    "note": "data, 2 teachers, 3 students, 8 fine-tunes with evaluation, the probe"})
    if report_dir is not None:
        keep_configs(out, b, Path(report_dir) / "configs" / f"seed{b.seed}")
    return records


def keep_configs(out: Path, b: Budget, dest: Path) -> None:
    """Each stage's resolved config as `dest/<stage>.yaml` (replay: `mvd-train --config FILE`,
    after remaking the data with `dest/data.json`'s `make_synth_dataset` arguments at the paths
    the configs name)."""
    demo.keep_configs(out, stages(out, b), {str(out / "data" / name): recipe
                                            for name, recipe in data_recipes(b).items()}, dest)


def run(out_dir: Path, *, quick: bool = False, seeds: tuple[int, ...] | None = None,
        report_dir: Path | None = None) -> list[dict]:
    from rich.console import Console

    console = Console(stderr=True)
    base = QUICK if quick else BUDGET
    records = []
    for seed in seeds or (SEEDS[:1] if quick else SEEDS):
        b = replace(base, seed=seed)
        with demo.quiet():
            records += run_seed(Path(out_dir) / f"seed{seed}", b, console, report_dir)
    budget = "quick" if quick else "default"
    return [{**r, "budget": budget} for r in records]


# ---------------------------------------------------------------------------------------------
# The probe


def time_similarity(tokens: torch.Tensor) -> torch.Tensor:
    """tokens (B, T, H, W, D) -> (T, T): entry (t, s) is the cosine similarity of the tokens at the
    same (h, w) in time slices t and s, averaged over the batch and the positions."""
    B, T, H, W, D = tokens.shape
    x = F.normalize(tokens.float(), dim=-1)
    return torch.einsum("bthwd,bshwd->ts", x, x) / (B * H * W)


def distance_profile(sim: torch.Tensor) -> list[float]:
    """(T, T) -> the mean similarity at each temporal distance 1 .. T-1."""
    return [torch.diagonal(sim, offset=d).mean().item() for d in range(1, sim.shape[0])]


def pair_mean(sim: torch.Tensor) -> float:
    """(T, T) -> the mean over every pair of distinct time slices (t < s)."""
    t, s = torch.triu_indices(*sim.shape, offset=1)
    return sim[t, s].mean().item()


def student_tokens(student: nn.Module, video: torch.Tensor) -> torch.Tensor:
    """The student's encoder over every token of video (B, 3, T, S, S) -> (B, T', H', W', D)."""
    B, N = video.shape[0], student.num_patches
    ids = torch.arange(N, device=video.device).expand(B, N)
    return student.forward_encoder(video, ids).reshape(B, *student.grid, -1)


def image_teacher_tokens(teacher: nn.Module, video: torch.Tensor, tubelet: int) -> torch.Tensor:
    """The image teacher's features of frames 0, tubelet, ... (what an image-taught student
    regresses) -> (B, T', H', W', D)."""
    from mvd.distill import image_teacher_features
    from mvd.models.teachers import unwrap

    feats = image_teacher_features(teacher, video, tubelet)  # (B, T' * L, D)
    return feats.reshape(video.shape[0], -1, *unwrap(teacher).grid, feats.shape[-1])


def video_teacher_tokens(teacher: nn.Module, video: torch.Tensor) -> torch.Tensor:
    from mvd.models.teachers import unwrap

    feats = teacher(video)  # (B, N, D)
    return feats.reshape(video.shape[0], *unwrap(teacher).grid, feats.shape[-1])


@torch.inference_mode()
def probe(out: Path, heldout: Path) -> dict[str, torch.Tensor]:
    """(T', T') time-similarity matrices over `heldout` of each pretrained student
    (`student_<arm>`) and, for reference, of the two teachers (`teacher_<kind>`, loaded by the
    co-taught student's run)."""
    from mvd.config import load_config
    from mvd.engine.distributed import init_distributed
    from mvd.engine.tasks import build_task
    from mvd.engine.tasks.finetune import eval_loader
    from mvd.engine.weights import load_weights

    sums: dict[str, tuple[torch.Tensor, int]] = {}  # name -> (similarity summed over clips, clips)
    for arm in STUDENTS:
        run = out / f"student_{arm}"
        cfg = load_config(run / "config.yaml", [f"eval.dir={heldout}", "eval.num_clips=1", "eval.num_crops=1",
                                                f"eval.batch_size={PROBE_BATCH}"])
        info = init_distributed(cfg.dist)
        task = build_task(cfg, info.device)  # the teachers load their stage-1 checkpoints
        load_weights(task.model, str(run), what=str(run))
        student = task.model.eval()
        loader = eval_loader(cfg, info)
        try:
            for batch in loader:
                video = batch["video"][batch["valid"]]  # the last batch's padding repeats left out
                tokens = {f"student_{arm}": student_tokens(student, video)}
                if arm == "both":
                    tokens["teacher_image"] = image_teacher_tokens(task.image_teacher, video,
                                                                   student.patch_embed.tubelet_size)
                    tokens["teacher_video"] = video_teacher_tokens(task.video_teacher, video)
                for name, t in tokens.items():
                    total, clips = sums.get(name, (0.0, 0))
                    sums[name] = (total + time_similarity(t) * len(video), clips + len(video))
        finally:
            loader.close()
    return {name: total / clips for name, (total, clips) in sums.items()}


# ---------------------------------------------------------------------------------------------
# The report block


def _stats(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "n": len(values)}


def _by_seed(records: list[dict], name: str, seeds: list[int], **match) -> list[float]:
    found = {r["seed"]: r["value"] for r in records
             if r["name"] == name and all(r.get(k) == v for k, v in match.items())}
    missing = [s for s in seeds if s not in found]
    if missing:
        raise ValueError(f"no {name} record with {match} for seeds {missing}")
    return [found[s] for s in seeds]


# (task, the arm the paper puts ahead, the arms it should beat, the paper's claim)
CLAIMS = (
    ("spatial", "image", ("video",), "image-taught beats video-taught on the spatial task"),
    ("temporal", "video", ("image",), "video-taught beats image-taught on the temporal task"),
    ("spatial", "both", ("image", "video"), "co-teaching beats either teacher alone on the spatial task"),
    ("temporal", "both", ("image", "video"), "co-teaching beats either teacher alone on the temporal task"),
)


CHANCE = 100.0 / 4  # top-1 % of a guess: each task has 4 balanced classes


def _chance(top1: dict, heldout: int, seeds: int) -> dict:
    """How far each arm's mean top-1 is above chance, against the standard error of a mean of
    guesses over `seeds` x `heldout` clips (binomial: 100 * sqrt(p (1 - p) / clips))."""
    p = CHANCE / 100
    se = 100 * math.sqrt(p * (1 - p) / (heldout * seeds))
    arms = {task: {arm: {"margin": statistics.fmean(v) - CHANCE, "above": statistics.fmean(v) - CHANCE > 2 * se}
                   for arm, v in per_arm.items()} for task, per_arm in top1.items()}
    return {"se": se, "clips": heldout * seeds, "arms": arms}


def _comparison(claim: str, better: list[float], rivals: dict[str, list[float]], unit: str,
                digits: int) -> dict:
    """`better` > every rival, judged on the means over seeds against the best rival's mean;
    per seed against the best rival on that seed (each list holds one value per seed)."""
    means = {name: statistics.fmean(v) for name, v in rivals.items()}
    best = max(means, key=means.get)
    mean = statistics.fmean(better)
    margin = mean - means[best]
    per_seed = [b - max(vals) for b, vals in zip(better, zip(*rivals.values()))]
    ahead = sum(d > 0 for d in per_seed)
    verdict = (f"{'holds' if margin > 0 else 'does not hold'}: {margin:+.{digits}f} {unit} on the mean "
               f"({mean:.{digits}f} vs {best} {means[best]:.{digits}f}), ahead on {ahead} of {len(per_seed)} "
               f"seed{'s' * (len(per_seed) > 1)}")
    return {"claim": claim, "holds": margin > 0, "margin": margin, "against": best, "per_seed": per_seed,
            "seeds_ahead": ahead, "verdict": verdict}


def summarise(records: list[dict]) -> dict:
    """The `teachers` block of report.json from the mode's records: top-1 per task x arm x seed
    with mean and spread, the paper's ordering checked claim by claim, the feature similarity,
    and per-stage seconds with the 1-minute load average at each stage's start."""
    seeds = sorted({r["seed"] for r in records if r["name"] == "teachers_top1"})
    n = f"{len(seeds)} seed{'s' * (len(seeds) > 1)}"
    top1 = {task: {arm: _by_seed(records, "teachers_top1", seeds, task=task, arm=arm) for arm in ARMS}
            for task in TASKS}
    ordering = [{"task": task, "better": better, "rivals": list(rivals),
                 **_comparison(claim, top1[task][better], {r: top1[task][r] for r in rivals}, "points", 1)}
                for task, better, rivals, claim in CLAIMS]
    failed = [row["claim"] for row in ordering if not row["holds"]]
    if failed:
        verdict = (f"The paper's ordering does not hold at this scale: {len(ordering) - len(failed)} of "
                   f"{len(ordering)} comparisons hold on the means over {n}; not: {'; '.join(failed)}.")
    else:
        verdict = (f"The paper's ordering holds at this scale: all {len(ordering)} comparisons hold on the "
                   f"means over {n}.")
    heldout = next(r["heldout"] for r in records if r["name"] == "teachers_top1")
    chance = _chance(top1, heldout, len(seeds))
    for task, arms in chance["arms"].items():
        if not any(arm["above"] for arm in arms.values()):
            verdict += (f" No arm is more than two standard errors ({2 * chance['se']:.1f} points) above chance "
                        f"on the {task} task: it was not learnt, and its comparisons are noise.")

    models = list(dict.fromkeys(r["model"] for r in records if r["name"] == "teachers_similarity"))
    distances = sorted({r["distance"] for r in records if r["name"] == "teachers_similarity_at"})
    mean_sim = {m: _by_seed(records, "teachers_similarity", seeds, model=m) for m in models}
    similarity = {
        "what": "cosine similarity of a model's tokens at the same spatial position in two time slices, on the "
                "held-out clips (one centre clip each), averaged over positions, clips and pairs of slices",
        "distances": distances,
        "mean": mean_sim,
        "summary": {m: _stats(v) for m, v in mean_sim.items()},
        "by_distance": {m: [_by_seed(records, "teachers_similarity_at", seeds, model=m, distance=d)
                            for d in distances] for m in models},
        "claim": _comparison("the image-taught student's features are more static than the video-taught one's",
                             mean_sim["student_image"], {"student_video": mean_sim["student_video"]},
                             "in cosine", 4),
    }
    similarity["by_distance_summary"] = {m: [_stats(v) for v in per_distance]
                                         for m, per_distance in similarity["by_distance"].items()}
    stage_names = list(dict.fromkeys(r["stage"] for r in records if r["name"] == "teachers_stage_s"))
    first = next(r for r in records if r["name"] == "teachers_top1")
    budget = asdict(QUICK if first["budget"] == "quick" else BUDGET)
    budget.pop("seed")
    return {
        "seeds": seeds,
        "budget": first["budget"],
        "budget_sizes": budget,
        "heldout_videos": heldout,
        "finetune_steps": first["finetune_steps"],
        "chance_top1": CHANCE,
        "above_chance": chance,
        "tasks": {"spatial": "4 classes by the object's shape (every class sees every direction equally often)",
                  "temporal": "4 classes by the motion direction (every class sees every shape equally often)"},
        "arms": {"image": "MVD student distilled from the image teacher (MAE) alone",
                 "video": "MVD student distilled from the video teacher (VideoMAE) alone",
                 "both": "MVD student co-taught by both teachers",
                 "scratch": "no pretraining (random init)"},
        "top1": top1,
        "top1_summary": {task: {arm: _stats(v) for arm, v in arms.items()} for task, arms in top1.items()},
        "ordering": ordering,
        "verdict": verdict,
        "over_scratch": {task: {arm: statistics.fmean(top1[task][arm]) - statistics.fmean(top1[task]["scratch"])
                                for arm in STUDENTS} for task in TASKS},
        "similarity": similarity,
        "stage_s": {s: _by_seed(records, "teachers_stage_s", seeds, stage=s) for s in stage_names},
        "load_1min_at_stage_start": {s: _field_by_seed(records, "load_1min_at_start", seeds, stage=s)
                                     for s in stage_names},
        "seed_wall_s": _by_seed(records, "teachers_seed_wall_s", seeds),
    }


def _field_by_seed(records: list[dict], field: str, seeds: list[int], **match) -> list:
    found = {r["seed"]: r.get(field) for r in records
             if r["name"] == "teachers_stage_s" and all(r.get(k) == v for k, v in match.items())}
    return [found.get(s) for s in seeds]
