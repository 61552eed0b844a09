"""`mvd-bench step`: the full MVD training step fed by the real loader. End-to-end,
compute-only (one cached batch) and loader-only clips/s side by side, with the share of the
end-to-end time blocked on the loader (`bound` is "data" from 10 % on, else "compute").

The step is the trainer's own (`mvd.engine.trainer.Trainer.train_step`: teachers' forward under
inference mode, student forward/backward, AdamW, lr schedule) on a `pretrain_mvd` config, fed by
the `dali_pipelines.PretrainLoader` the trainer builds, over synthetic shards. For each batch
size three rates are measured in one run, on the same shards and models:

- end to end: `next(loader)` then the step, with the time blocked on `next(loader)` counted as
  data wait;
- compute only: the same step on one cached batch (no loader in the loop);
- loader only: the loader iterated alone.

A data-wait share near zero, with end-to-end close to compute-only, says the run is compute
bound; a large share says the loader is the bottleneck. Loader-only over compute-only is the
loader's head room (the issue's target: at least 1.5x).

On a GPU (`--device gpu`, and the GPU check, benchmarks/gpu/run.sh) four variants run in one
process: MVD-S and MVD-B with both ViT-B teachers at 16x224, tube 0.9, bf16 autocast, flash
attention forced (`sdpa_kernel`: an error instead of a silent fallback), torch's fused AdamW,
eager then compiled (`model.compile`). A variant that fails is recorded as skipped with its
error and the others still run. MFU is quoted against a ceiling measured in the same run on the
same GPU (`bf16_matmul_ceiling`: a timed 8192^3 bf16 matmul), and also against the data sheet's
peak. Each variant's records are appended to `step-records.jsonl` in the report folder as soon
as they are measured (report.json is written only when every mode has ended: a run cut short
keeps the variants it finished).

`--feed synthetic` (the GPU check's torch-only call: no DALI, PyAV or webdataset there) runs no
loader: the trainer's step parts (the task's loss under autocast on `ModelInputs`, backward,
foreach clipping, the fused AdamW step) on one batch made on the GPU, so only compute-only
figures; after the timed windows, `SYNC_CHECK_STEPS` more steps run under
`torch.cuda.set_sync_debug_mode("error")` (any host sync in the steady state raises; the record
`steady_state_host_syncs` is 0, or the variant says which sync). `--variants` picks variants by
name.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from benchmarks import env
from benchmarks.timing import end_to_end, endless, matmul_ceiling, timed
from mvd.recipes import CONFIGS

# Data-wait share from which a run is called data bound.
DATA_BOUND_SHARE = 0.10


@dataclass(frozen=True)
class StepSettings:
    """A pretrain_mvd config with overrides, the batch sizes to measure, step counts and the
    synthetic shards' options."""

    config: Path
    overrides: tuple[str, ...]
    batch_sizes: tuple[int, ...]
    warmup_steps: int
    steps: int  # per timed window
    rounds: int  # interleaved rounds of the three windows; medians are reported
    synth: dict = field(default_factory=dict)
    name: str = ""  # the variant's name in run dirs and progress lines
    attention: str = "default"  # "flash": the step runs under sdpa_kernel(FLASH_ATTENTION)


FEEDS = ("loader", "synthetic")
# Steady-state steps of the synthetic feed run under set_sync_debug_mode("error")
SYNC_CHECK_STEPS = 2
RECORDS_FILE = "step-records.jsonl"


# Teachers are randomly initialised: their weights do not change the speed.
RANDOM_TEACHERS = ("teachers.image.checkpoint=", "teachers.video.checkpoint=")

# The project's tiny CPU config: seconds per batch size on 2 cores.
QUICK = StepSettings(
    config=CONFIGS / "tiny" / "pretrain_mvd.yaml",
    overrides=(),
    batch_sizes=(4, 8),
    warmup_steps=2,
    steps=8,
    rounds=3,
    synth={"num_videos": 48},
)

# The reference recipe and the target (ViT-B student, ViT-B image and video teachers,
# 16x224, tube masking 0.9, bf16) and its ViT-S sibling, eager and compiled, at the recipes'
# 32 clips per GPU, fed from short-side-240 GOP-16 H.264 clips of 80 frames (the reference
# clip). The shards are few (32 clips, ~3 MiB) so that they travel to a GPU machine without an
# encoder beside the DALI runtime (benchmarks/gpu/pack.py); the loader cycles through them
# epoch after epoch.
GPU_SHARDS = {"num_videos": 32, "num_frames": 80, "width": 320, "height": 240, "codec": "h264",
              "gop": 16}
_GPU_OVERRIDES = (*RANDOM_TEACHERS, "train.precision=bf16", "optim.implementation=fused")


def _gpu_variant(name: str, config: str, compile: bool) -> StepSettings:
    return StepSettings(
        config=CONFIGS / config,
        overrides=(*_GPU_OVERRIDES, f"model.compile={'true' if compile else 'false'}"),
        batch_sizes=(32,),
        warmup_steps=3,  # the first compiled step compiles
        steps=10,
        rounds=2,
        synth=GPU_SHARDS,
        name=name,
        attention="flash",
    )


FULL_GPU = (
    _gpu_variant("mvd_s", "pretrain_mvd_small_k400.yaml", compile=False),
    _gpu_variant("mvd_b", "pretrain_mvd_base_k400.yaml", compile=False),
    _gpu_variant("mvd_b_compiled", "pretrain_mvd_base_k400.yaml", compile=True),
    _gpu_variant("mvd_s_compiled", "pretrain_mvd_small_k400.yaml", compile=True),
)

# Without a GPU the reference takes minutes per step: the ViT-S recipe at half resolution.
FULL_CPU = StepSettings(
    config=CONFIGS / "pretrain_mvd_small_k400.yaml",
    overrides=(*RANDOM_TEACHERS, "data.input_size=112", "data.teacher_input_size=112"),
    batch_sizes=(2,),
    warmup_steps=1,
    steps=3,
    rounds=1,
    synth={"num_videos": 32, "num_frames": 64},
)


def settings_for(device: str, quick: bool, variants: tuple[str, ...] = ()
                 ) -> tuple[StepSettings, ...]:
    """The variants to measure, in order (`variants`: those names only, in that order)."""
    if quick:
        found = (QUICK,)
    else:
        found = FULL_GPU if device == "gpu" else (FULL_CPU,)
    if not variants:
        return found
    by_name = {s.name: s for s in found}
    unknown = [v for v in variants if v not in by_name]
    if unknown:
        raise ValueError(f"unknown step variant(s) {', '.join(unknown)} for --device {device}"
                         f"{' --quick' if quick else ''}; choose from "
                         f"{', '.join(n for n in by_name if n) or '(none: the one default)'}")
    return tuple(by_name[v] for v in variants)


def run(out_dir: Path, *, device: str, quick: bool, variants: tuple[str, ...] = (),
        feed: str = "loader", report_dir: Path | None = None) -> list[dict]:
    """Measure the MVD step for each variant and batch size; returns benchmark records, each
    variant's also appended to `report_dir/step-records.jsonl` as soon as it is measured.

    A variant or batch size that fails (out of memory, a compile error, a kernel flash attention
    cannot run) becomes a skipped record with the error, and the rest still run; when nothing
    could be measured the error is raised."""
    if feed not in FEEDS:
        raise ValueError(f"feed must be one of {FEEDS}, got {feed!r}")
    if feed == "synthetic" and device != "gpu":
        raise ValueError("--feed synthetic measures the step on a GPU; use --device gpu")
    chosen = settings_for(device, quick, variants)
    records, errors, ceiling = [], [], None
    progress = Path(report_dir or out_dir) / RECORDS_FILE

    def keep(new: list[dict]) -> None:
        records.extend(new)
        progress.parent.mkdir(parents=True, exist_ok=True)
        with open(progress, "a") as f:  # one line a record, written as each variant ends
            f.writelines(json.dumps(r) + "\n" for r in new)

    if device == "gpu":
        keep([matmul_ceiling(torch.device("cuda", torch.cuda.current_device()))])
        ceiling = records[-1]["value"]
        print(f"[step] bf16 matmul ceiling {ceiling:.1f} TFLOP/s", flush=True)
    main_figure = "end_to_end" if feed == "loader" else "compute_only"
    for settings in chosen:
        data_dir = synth_shards(out_dir / "shards", settings) if feed == "loader" else None
        for batch_size in settings.batch_sizes:
            run_dir = out_dir / f"run-{settings.name + '-' if settings.name else ''}b{batch_size}"
            try:
                if feed == "loader":
                    keep(measure(settings, data_dir, run_dir, batch_size, device, ceiling))
                else:
                    keep(measure_synthetic(settings, batch_size, ceiling))
            except Exception as exc:  # recorded with its error; the other variants still run
                traceback.print_exc()
                first = (str(exc).splitlines() or [""])[0][:200]
                why = "out of memory" if isinstance(exc, torch.OutOfMemoryError) else "failed"
                # only the text is kept: the exception's traceback holds the variant's models
                errors.append(f"{why}: {type(exc).__name__}: {first}")
                keep([{"name": main_figure, "skipped": errors[-1], "variant": settings.name,
                       "batch_size": batch_size}])
                print(f"[step] {settings.name or 'step'} b{batch_size}: {errors[-1]}", flush=True)
            finally:
                gc.collect()  # the trainer's models and loader go before the next variant's
                if device == "gpu":
                    torch.cuda.empty_cache()
    if errors and not any(r["name"] == main_figure and "value" in r for r in records):
        raise RuntimeError(f"no step could be measured: {'; '.join(errors)}")
    return records


def step_config(settings: StepSettings, batch_size: int, device: str, *extra: str):
    """The variant's pretrain_mvd config at `batch_size` per GPU."""
    from mvd.config import load_config

    return load_config(settings.config, [
        "task=pretrain_mvd", *settings.overrides, f"data.batch_size={batch_size}",
        "train.global_batch=0",  # one micro-batch a step: the recipe's pinned batch would accumulate
        f"data.device={device}", f"dist.device={'cuda' if device == 'gpu' else 'cpu'}",
        "run.progress=false", "checkpoint.resume=none", *extra])


def measure_synthetic(settings: StepSettings, batch_size: int, ceiling: float | None,
                      device: str = "gpu") -> list[dict]:
    """Compute-only rate of one variant on one batch made on the device (no loader: torch
    alone), its peak memory, and SYNC_CHECK_STEPS steady-state steps under
    set_sync_debug_mode("error") (on CUDA; `device="cpu"` runs the same step for the tests)."""
    from mvd.engine import distributed as D
    from mvd.engine.data import ModelInputs
    from mvd.engine.optim import build_optimizer
    from mvd.engine.precision import plan_precision
    from mvd.engine.tasks import build_task
    from mvd.models.flops import mvd_step_flops
    from mvd.models.teachers import unwrap
    from dali_pipelines.masks import tube_mask

    cfg = step_config(settings, batch_size, device, "data.dir=unused", "run.dir=unused")
    info = D.init_distributed(cfg.dist)
    dev = info.device
    cuda = dev.type == "cuda"
    precision = plan_precision(cfg.train.precision, dev.type)
    if cuda:
        torch.cuda.reset_peak_memory_stats(dev)
    task = build_task(cfg, dev, precision=precision, load=False)
    if cfg.model.compile:
        for teacher in task.teachers:
            D.compile_teacher(teacher)
    model = D.wrap_model(task.model.train(), info, fsdp=False, precision=precision,
                         compile=cfg.model.compile, find_unused=task.find_unused_parameters)
    optimizer, _ = build_optimizer(task.model, cfg.optim, dev, lr=1e-4)
    inputs = ModelInputs(dev)
    d = cfg.data
    g = torch.Generator(device=dev).manual_seed(0)
    batch = {"video": torch.randn(batch_size, 3, d.num_frames, d.input_size, d.input_size,
                                  device=dev, generator=g),  # what the float loader yields
             "mask": tube_mask(batch_size, unwrap(task.model).grid, d.mask_ratio, generator=g,
                               device=dev)}
    params = list(task.model.parameters())

    def step() -> None:  # Trainer.train_step with one micro-batch, no schedule: no host sync
        with attention_backend(settings.attention), precision.autocast():
            loss, _ = task.loss(model, inputs(batch), 0)
        loss.backward()
        if cfg.optim.clip_grad > 0:
            torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None],
                                           cfg.optim.clip_grad, foreach=True)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(settings.warmup_steps):
        step()
    clips = settings.steps * batch_size
    rate = median(clips / timed(step, settings.steps, dev) for _ in range(settings.rounds))
    if cuda:
        peak = torch.cuda.max_memory_allocated(dev)
        syncs = steady_state_syncs(step, dev)
    else:
        peak, syncs = None, {"name": "steady_state_host_syncs", "skipped": "no CUDA"}
    flops = mvd_step_flops(unwrap(task.model), task.image_teacher, task.video_teacher,
                           mask_ratio=d.mask_ratio)["total"]
    common = {"variant": settings.name, "feed": "synthetic (one batch on the device, no loader)",
              "model": _named(task.model, bool(cfg.model.overrides)), "batch_size": batch_size,
              "clip": f"{d.num_frames}x{d.input_size}", "mask": f"{d.mask_type} {d.mask_ratio}",
              "precision": precision.name, "attention": settings.attention,
              "optimizer": _optimizer_name(optimizer),
              "compile": "on" if cfg.model.compile else "off"}
    records = [
        {"name": "compute_only", "value": rate, "unit": "clips/s"},
        {"name": "flops_per_clip", "value": flops / 1e9, "unit": "GFLOP"},
        {"name": "achieved_compute_only", "value": flops * rate / 1e12, "unit": "TFLOP/s"},
        *([{"name": "peak_memory", "value": peak / 2**20, "unit": "MiB",
            "note": "torch.cuda.max_memory_allocated over build, warm-up and timed steps"}]
          if peak is not None else []),
        syncs,
    ]
    if ceiling:
        records.append({"name": "mfu_compute_only", "unit": "%",
                        "note": "against this run's bf16_matmul_ceiling",
                        "value": 100.0 * flops * rate / 1e12 / ceiling})
    records = [{**rec, **common} for rec in records]
    print(f"[step] {settings.name or 'step'} b{batch_size} (synthetic feed): " + ", ".join(
        f"{r['name']} {r['value']:.4g} {r['unit']}" for r in records if "value" in r)
        + ("" if "value" in syncs else f"; host syncs: {syncs['skipped']}"), flush=True)
    return records


def steady_state_syncs(step: Callable[[], None], dev: torch.device) -> dict:
    """SYNC_CHECK_STEPS more steps under set_sync_debug_mode("error"): the record says 0 host
    syncs, or (skipped) the first line of the error naming the synchronising call."""
    torch.cuda.synchronize(dev)
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(SYNC_CHECK_STEPS):
            step()
        return {"name": "steady_state_host_syncs", "value": 0, "unit": "syncs",
                "note": f"{SYNC_CHECK_STEPS} steps under set_sync_debug_mode('error')"}
    except RuntimeError as exc:  # the mode's error names the synchronising call
        return {"name": "steady_state_host_syncs", "skipped": "a host sync in the step: "
                + (str(exc).splitlines() or [""])[0][:300]}
    finally:
        torch.cuda.set_sync_debug_mode(0)


def synth_shards(data_dir: Path, settings: StepSettings) -> Path:
    """The synthetic shards the step reads (made once, reused by later runs into the same dir)."""
    from shard_tools.synth import make_synth_dataset

    if not (data_dir / "manifest.json").exists():
        make_synth_dataset(data_dir, **settings.synth)
    return data_dir


def build_trainer(settings: StepSettings, data_dir: Path, run_dir: Path, batch_size: int,
                  device: str):
    """The trainer of a pretrain_mvd run on `data_dir`, nothing written but its run dir."""
    from mvd.engine.trainer import Trainer

    cfg = step_config(settings, batch_size, device, f"data.dir={data_dir}", f"run.dir={run_dir}")
    with _quiet("mvd.train"):  # the loud warning about randomly initialised teachers
        return Trainer(cfg)


def measure(settings: StepSettings, data_dir: Path, run_dir: Path, batch_size: int,
            device: str, ceiling: float | None = None) -> list[dict]:
    """End-to-end, compute-only and loader-only rates for one batch size; MFU against
    `ceiling` (TFLOP/s measured on this GPU) when given."""
    from mvd.models.flops import count_flops, mvd_step_flops
    from mvd.models.teachers import unwrap

    trainer = build_trainer(settings, data_dir, run_dir, batch_size, device)
    dev = trainer.info.device
    task, cfg = trainer.task, trainer.cfg
    batches = endless(trainer.loader)

    def step(batch: dict) -> None:
        with attention_backend(settings.attention):
            trainer.train_step([batch])

    for _ in range(settings.warmup_steps):
        step(next(batches))
    cached = next(batches)

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    # Interleaved rounds, medians reported: other work on the machine hits all three alike.
    e2e_rates, wait_shares, compute_rates, loader_rates = [], [], [], []
    clips = settings.steps * batch_size
    for _ in range(settings.rounds):
        seconds, wait = end_to_end(step, batches, settings.steps, dev)
        e2e_rates.append(clips / seconds)
        wait_shares.append(wait / seconds)
        compute_rates.append(clips / timed(lambda: step(cached), settings.steps, dev))
        loader_rates.append(clips / timed(lambda: next(batches), settings.steps, dev))
    e2e_rate, wait_share = median(e2e_rates), median(wait_shares)
    compute_rate, loader_rate = median(compute_rates), median(loader_rates)

    # FLOPs per clip: the analytical count (mvd.models.flops) and torch's counter on one step.
    flops = mvd_step_flops(unwrap(task.model), task.image_teacher, task.video_teacher,
                           mask_ratio=cfg.data.mask_ratio)["total"]
    # torch's counter traces the eager step; a compiled one would recompile under it
    counted = None if cfg.model.compile else count_flops(lambda: step(cached)) / batch_size
    trainer.metrics.close()

    common = {
        "model": _named(task.model, bool(cfg.model.overrides)),
        "teachers": "+".join(_named(t, bool(c.overrides)) for t, c in (
            (task.image_teacher, cfg.teachers.image), (task.video_teacher, cfg.teachers.video))
            if t is not None),
        "batch_size": batch_size,
        "clip": f"{cfg.data.num_frames}x{cfg.data.input_size}",
        "mask": f"{cfg.data.mask_type} {cfg.data.mask_ratio}",
        "precision": trainer.precision.name,
        "attention": settings.attention,
        "optimizer": _optimizer_name(trainer.optimizer),
        "compile": "on" if cfg.model.compile else "off",
        "loader": f"PretrainLoader({device})",
        "bound": "data" if wait_share >= DATA_BOUND_SHARE else "compute",
    }
    records = [
        {"name": "end_to_end", "value": e2e_rate, "unit": "clips/s"},
        {"name": "compute_only", "value": compute_rate, "unit": "clips/s"},
        {"name": "loader_only", "value": loader_rate, "unit": "clips/s"},
        {"name": "data_wait_share", "value": 100.0 * wait_share, "unit": "%"},
        {"name": "loader_over_compute", "value": loader_rate / compute_rate, "unit": "x"},
        {"name": "flops_per_clip", "value": flops / 1e9, "unit": "GFLOP"},
        *([{"name": "flops_per_clip_counted", "value": counted / 1e9, "unit": "GFLOP"}]
          if counted is not None else []),
        {"name": "achieved_end_to_end", "value": flops * e2e_rate / 1e12, "unit": "TFLOP/s"},
        {"name": "achieved_compute_only", "value": flops * compute_rate / 1e12,
         "unit": "TFLOP/s"},
    ]
    if dev.type == "cuda":
        records.append({"name": "peak_memory", "unit": "MiB",
                        "value": torch.cuda.max_memory_allocated(dev) / 2**20})
        records.append({"name": "peak_memory_reserved", "unit": "MiB",
                        "value": torch.cuda.max_memory_reserved(dev) / 2**20})
        peak = env.bf16_peak_tflops(torch.cuda.get_device_name(dev))
        if ceiling:
            note = "against this run's bf16_matmul_ceiling"
            records.append({"name": "mfu_end_to_end", "unit": "%", "note": note,
                            "value": 100.0 * flops * e2e_rate / 1e12 / ceiling})
            records.append({"name": "mfu_compute_only", "unit": "%", "note": note,
                            "value": 100.0 * flops * compute_rate / 1e12 / ceiling})
        if peak:
            records.append({"name": "mfu_end_to_end_datasheet", "unit": "%",
                            "note": f"against the data sheet's dense bf16 peak, {peak:g} TFLOP/s",
                            "value": 100.0 * flops * e2e_rate / 1e12 / peak})
    records = [{**rec, **common} for rec in records]
    print(f"[step] {settings.name or common['model']} b{batch_size}: " + ", ".join(
        f"{r['name']} {r['value']:.4g} {r['unit']}" for r in records
        if r["name"] in PROGRESS_FIGURES), flush=True)
    return records


# The figures a progress line shows as each variant finishes (a run cut short keeps them).
PROGRESS_FIGURES = ("end_to_end", "compute_only", "loader_only", "data_wait_share",
                    "mfu_end_to_end", "mfu_compute_only", "peak_memory")


def attention_backend(name: str):
    """The SDPA backend the step runs under: "flash" forces flash attention (a shape or dtype it
    cannot take raises instead of falling back to a slower kernel); "default" lets torch pick."""
    if name == "flash":
        return sdpa_kernel(SDPBackend.FLASH_ATTENTION)
    if name == "default":
        return contextlib.nullcontext()
    raise ValueError(f"attention must be 'flash' or 'default', got {name!r}")


def _optimizer_name(optimizer: torch.optim.Optimizer) -> str:
    """e.g. "AdamW (fused)", "AdamW (foreach)", "FusedAdam"."""
    name = type(optimizer).__name__
    for flag in ("fused", "foreach"):
        if optimizer.defaults.get(flag):
            return f"{name} ({flag})"
    return name


def _named(model: torch.nn.Module, overridden: bool) -> str:
    """The registry name, plus width x depth and patch when a config overrides the defaults
    (e.g. `mvd_student_small(32x2,p8)` for the tiny student)."""
    from mvd.models.teachers import unwrap

    model = unwrap(model)
    if not overridden:
        return model.model_name
    return f"{model.model_name}({model.embed_dim}x{model.depth},p{model.patch_embed.patch_size})"


@contextlib.contextmanager
def _quiet(logger_name: str):
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
