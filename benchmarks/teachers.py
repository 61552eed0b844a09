"""`mvd-bench teachers`: which teacher helps which task, the paper's central claim measured on
synthetic clips: students distilled from an image teacher transfer better to a spatial task,
students distilled from a video teacher to a temporal task, and co-teaching beats either alone.

The design was fixed on pilot seeds (100 and up, never reported) before seeds 0-2 ran. Every clip
(`shard_tools.synth`, shading cue, 8 classes = 4 lit sides x 2 directions) shows one object of
random shape, colour, size, speed and start moving right or left over a random noisy background;
one half of the object (top, bottom, left or right) is lit, the other dark.

- The image teacher (MAE on single frames) sees an object's appearance and where it is, never how
  it moves. The video teacher (VideoMAE on tube-masked clips) must also model the motion.
- Spatial task: 4 classes by the lit half; every class sees both directions equally often. The
  cue is the sign of one brightness edge across the object, which a patch embedding reads
  linearly wherever the object sits on the 4 x 4 token grid. The earlier cues failed there: a
  shape's outline (the first design, `2026-12-02-cpu-2core-teachers/`) is cut into pieces that
  depend on where it sits, and stripes of random phase (pilot seed 100) give a linear filter no
  mean response; no arm learnt either when fine-tuned, nor stripes when probed.
- Temporal task: 2 classes by direction (right or left); every class sees every lit side equally
  often, and no single frame tells the class. The first pilot's 4 directions were learnt by no
  arm within the budget; the demo's 2 are.
- Both tasks label the same clips (`label_by` relabels clip i, it does not redraw it) and pretrain
  on one unlabelled pool whose clips vary in both factors, so the tasks differ only in which
  factor the label names.

Per seed, in `<work>/seed<N>`, with one budget for every arm (the demo's recipe, `mvd.demo`):
stage 1 trains both teachers once; stage 2 distils three students (image-only, video-only,
both: the same student, steps and data; a single-teacher student is the same model with one
decoder); each student and a from-scratch model are fine-tuned on both tasks and evaluated on
the task's held-out clips (softmax averaged over 2 clips per video). Two readouts of the frozen
models follow, on one centre clip per video with every token visible:
- the linear probe (`benchmarks.linear_probe`) on each student's encoder tokens pooled over space
  per time slice (the slices kept in order, so motion can show as change between them), fitted on
  the task's labelled clips and scored on its held-out clips; arm `scratch` is the same encoder at
  its random initialisation. It reads what the representation holds without the fine-tuning
  budget deciding the result;
- how static each student's and teacher's tokens are: the cosine similarity of the tokens at one
  spatial position in two time slices, averaged over positions and clips, per temporal distance.
Every stage is an ordinary `mvd-train` run; its resolved config lands in `<report>/configs/seed<N>/`.
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
# 8 synthetic classes: 4 lit sides x 2 directions (right, left); each task labels one factor
BUDGET = replace(Budget(), classes=8)
QUICK = replace(demo.QUICK, classes=8)
SPATIAL_CUE = "shading"
CLASSES = {"spatial": 4, "temporal": 2}  # each task's balanced classes
CHANCE = {task: 100.0 / n for task, n in CLASSES.items()}  # top-1 % of a guess
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
        sims, probes = probe(out, b)
    timed("probe", time.perf_counter() - t, load)
    for task, arms in probes.items():
        console.print(f"linear probe, {task} task, held-out top-1: " +
                      ", ".join(f"{arm} {p['top1']:.1f}%" for arm, p in arms.items()))
        records += [{"name": "teachers_probe_top1", "value": p["top1"], "unit": "%", "task": task, "arm": arm,
                     **tag, "heldout": p["heldout"], "train": p["train"], "train_top1": p["train_top1"],
                     "strength": p["strength"]} for arm, p in arms.items()]
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


def _dataset_pass(cfg_path: Path, data_dir: Path, info, encoders: dict[str, nn.Module],
                  extra=None) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Every clip of `data_dir` once (one centre clip, all tokens visible) through each encoder:
    {name: tokens pooled over space, time slices in order (N, T' * D)} and the labels (N,).
    `extra(video, tokens)` sees each batch."""
    from mvd.config import load_config
    from mvd.engine.tasks.finetune import eval_loader

    cfg = load_config(cfg_path, [f"eval.dir={data_dir}", "eval.num_clips=1", "eval.num_crops=1",
                                 f"eval.batch_size={PROBE_BATCH}"])
    pooled: dict[str, list[torch.Tensor]] = {name: [] for name in encoders}
    labels = []
    loader = eval_loader(cfg, info)
    try:
        for batch in loader:
            keep = batch["valid"]  # the last batch's padding repeats left out
            video = batch["video"][keep]
            labels.append(batch["label"][keep].cpu())
            tokens = {name: student_tokens(enc, video) for name, enc in encoders.items()}
            for name, t in tokens.items():
                pooled[name].append(t.mean(dim=(2, 3)).flatten(1).float().cpu())  # (B, T' * D)
            if extra is not None:
                extra(video, tokens)
    finally:
        loader.close()
    return {name: torch.cat(v) for name, v in pooled.items()}, torch.cat(labels)


def probe(out: Path, b: Budget) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, dict]]]:
    """The two probes of one seed's frozen models:
    - (T', T') time-similarity matrices over the spatial task's held-out clips of each pretrained
      student (`student_<arm>`) and, for reference, of the two teachers (`teacher_<kind>`, loaded
      by the co-taught student's run);
    - per task and arm, the linear probe (`benchmarks.linear_probe`) fitted on the task's
      labelled clips and scored on its held-out clips; arm `scratch` is the same student
      encoder at its random initialisation (seeded by the seed), the probe's floor."""
    from benchmarks.linear_probe import linear_probe
    from mvd.config import load_config
    from mvd.engine.distributed import init_distributed
    from mvd.engine.tasks import build_task
    from mvd.engine.weights import load_weights

    encoders, teachers_of_both = {}, None
    for arm in ARMS:  # built outside inference mode: their weights are ordinary tensors
        run = out / f"student_{'both' if arm == 'scratch' else arm}"
        cfg = load_config(run / "config.yaml")
        info = init_distributed(cfg.dist)
        torch.manual_seed(b.seed)
        task = build_task(cfg, info.device)  # the teachers load their stage-1 checkpoints
        if arm != "scratch":
            load_weights(task.model, str(run), what=str(run))
        encoders[arm] = task.model.eval()
        if arm == "both":
            teachers_of_both = task
    cfg_path = out / "student_both" / "config.yaml"
    sums: dict[str, tuple[torch.Tensor, int]] = {}  # name -> (similarity summed over clips, clips)
    tubelet = encoders["both"].patch_embed.tubelet_size

    def similarity(video: torch.Tensor, tokens: dict[str, torch.Tensor]) -> None:
        named = {f"student_{arm}": tokens[arm] for arm in STUDENTS}
        named["teacher_image"] = image_teacher_tokens(teachers_of_both.image_teacher, video, tubelet)
        named["teacher_video"] = video_teacher_tokens(teachers_of_both.video_teacher, video)
        for name, t in named.items():
            total, clips = sums.get(name, (0.0, 0))
            sums[name] = (total + time_similarity(t) * len(video), clips + len(video))

    probes: dict[str, dict[str, dict]] = {}
    for task_name in TASKS:
        data = out / "data"
        with torch.inference_mode():
            train, train_y = _dataset_pass(cfg_path, data / f"{task_name}-train", info, encoders)
            held, held_y = _dataset_pass(cfg_path, data / f"{task_name}-heldout", info, encoders,
                                         similarity if task_name == "spatial" else None)
        # out of inference mode: the probe's fit differentiates through them
        train, held = ({k: v.clone() for k, v in d.items()} for d in (train, held))
        train_y, held_y = train_y.clone(), held_y.clone()
        probes[task_name] = {arm: linear_probe(train[arm], train_y, held[arm], held_y, CLASSES[task_name])
                             for arm in ARMS}
    sims = {name: total / clips for name, (total, clips) in sums.items()}
    return sims, probes


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


def _chance(top1: dict, heldout: int, seeds: int) -> dict:
    """How far each arm's mean top-1 is above its task's chance, against the standard error of a
    mean of guesses over `seeds` x `heldout` clips (binomial: 100 * sqrt(p (1 - p) / clips))."""
    se = {task: 100 * math.sqrt(CHANCE[task] / 100 * (1 - CHANCE[task] / 100) / (heldout * seeds))
          for task in top1}
    arms = {task: {arm: {"margin": statistics.fmean(v) - CHANCE[task],
                         "above": statistics.fmean(v) - CHANCE[task] > 2 * se[task]}
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


# readout -> (its records' name, what it measures)
READOUTS = {
    "finetune": ("teachers_top1", "held-out top-1 after fine-tuning the whole model (softmax over 2 clips a video)"),
    "probe": ("teachers_probe_top1", "held-out top-1 of a linear probe on the frozen encoder's tokens pooled over "
                                     "space per time slice, the slices concatenated in order (one centre clip a "
                                     "video; L2 strength by 4-fold stratified cross-validation on the labelled "
                                     "clips)"),
}
LEARNT_MARGIN = 15.0  # points above chance the best arm needs for a task to count as learnt


def readout(records: list[dict], name: str, seeds: list[int]) -> dict:
    """One readout's analysis: top-1 per task x arm x seed with mean and spread, the paper's
    ordering checked claim by claim, the chance check, whether each task was learnt (its best arm's
    mean at least LEARNT_MARGIN points above chance), and each student's mean over scratch."""
    n = f"{len(seeds)} seed{'s' * (len(seeds) > 1)}"
    top1 = {task: {arm: _by_seed(records, name, seeds, task=task, arm=arm) for arm in ARMS} for task in TASKS}
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
    heldout = next(r["heldout"] for r in records if r["name"] == name)
    chance = _chance(top1, heldout, len(seeds))
    for task, arms in chance["arms"].items():
        if not any(arm["above"] for arm in arms.values()):
            verdict += (f" No arm is more than two standard errors ({2 * chance['se'][task]:.1f} points) above chance "
                        f"on the {task} task: it was not learnt, and its comparisons are noise.")
    means = {task: {arm: statistics.fmean(v) for arm, v in arms.items()} for task, arms in top1.items()}
    best = {task: max(m, key=m.get) for task, m in means.items()}
    return {
        "what": READOUTS[next(k for k, (rec, _) in READOUTS.items() if rec == name)][1],
        "heldout_videos": heldout,
        "top1": top1,
        "summary": {task: {arm: _stats(v) for arm, v in arms.items()} for task, arms in top1.items()},
        "ordering": ordering,
        "verdict": verdict,
        "above_chance": chance,
        "learnt": {task: {"best": best[task], "margin": means[task][best[task]] - CHANCE[task],
                          "learnt": means[task][best[task]] - CHANCE[task] >= LEARNT_MARGIN} for task in TASKS},
        "over_scratch": {task: {arm: means[task][arm] - means[task]["scratch"] for arm in STUDENTS}
                         for task in TASKS},
    }


def summarise(records: list[dict]) -> dict:
    """The `teachers` block of report.json from the mode's records: per readout (fine-tuning and
    the linear probe) its analysis (`readout`), with `top1` and `probe` the per-seed values of
    each; the feature similarity; per-stage seconds with the 1-minute load average at each
    stage's start."""
    seeds = sorted({r["seed"] for r in records if r["name"] == "teachers_top1"})
    readouts = {key: readout(records, name, seeds) for key, (name, _) in READOUTS.items()}
    verdict = " ".join(f"{label}: {readouts[key]['verdict']}"
                       for key, label in (("finetune", "Fine-tuned"), ("probe", "Linear probe")))

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
    probe_first = next(r for r in records if r["name"] == "teachers_probe_top1")
    budget = asdict(QUICK if first["budget"] == "quick" else BUDGET)
    budget.pop("seed")
    return {
        "seeds": seeds,
        "budget": first["budget"],
        "budget_sizes": budget,
        "heldout_videos": first["heldout"],
        "probe_train_videos": probe_first["train"],
        "finetune_steps": first["finetune_steps"],
        "chance_top1": CHANCE,
        "learnt_margin": LEARNT_MARGIN,
        "tasks": {"spatial": "4 classes by the lit half of the object (every class sees both directions "
                             "equally often)",
                  "temporal": "2 classes by the motion direction, right or left (every class sees every lit "
                              "side equally often)"},
        "arms": {"image": "MVD student distilled from the image teacher (MAE) alone",
                 "video": "MVD student distilled from the video teacher (VideoMAE) alone",
                 "both": "MVD student co-taught by both teachers",
                 "scratch": "no pretraining (random init; for the probe, the student's encoder at its "
                            "random initialisation)"},
        "top1": readouts["finetune"]["top1"],
        "probe": readouts["probe"]["top1"],
        "readouts": readouts,
        "verdict": verdict,
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
