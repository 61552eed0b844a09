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
"""

from __future__ import annotations

import contextlib
import gc
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median

import torch

from benchmarks import env

# Data-wait share from which a run is called data bound.
DATA_BOUND_SHARE = 0.10
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


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

# The reference recipe and the target: ViT-B student, ViT-B image and video teachers,
# 16x224, tube masking 0.9, bf16, fed from short-side-240 H.264.
FULL_GPU = StepSettings(
    config=CONFIGS / "pretrain_mvd_base_k400.yaml",
    overrides=RANDOM_TEACHERS,
    batch_sizes=(16, 32, 64),
    warmup_steps=5,
    steps=20,
    rounds=3,
    synth={"num_videos": 640, "num_frames": 64, "width": 320, "height": 240, "codec": "h264"},
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


def settings_for(device: str, quick: bool) -> StepSettings:
    if quick:
        return QUICK
    return FULL_GPU if device == "gpu" else FULL_CPU


def run(out_dir: Path, *, device: str, quick: bool) -> list[dict]:
    """Measure the MVD step for each batch size of the settings; returns benchmark records."""
    settings = settings_for(device, quick)
    data_dir = synth_shards(out_dir / "shards", settings)
    records = []
    for batch_size in settings.batch_sizes:
        try:
            records += measure(settings, data_dir, out_dir / f"run-b{batch_size}", batch_size,
                               device)
        except torch.OutOfMemoryError as exc:  # the larger batch sizes of a full GPU run
            reason = f"out of memory: {str(exc).splitlines()[0][:160]}"
            records.append({"name": "end_to_end", "skipped": reason, "batch_size": batch_size})
        finally:
            gc.collect()  # the trainer's models and loader go before the next batch size's
            if device == "gpu":
                torch.cuda.empty_cache()
    return records


def synth_shards(data_dir: Path, settings: StepSettings) -> Path:
    """The synthetic shards the step reads (made once, reused by later runs into the same dir)."""
    from shard_tools.synth import make_synth_dataset

    if not (data_dir / "manifest.json").exists():
        make_synth_dataset(data_dir, **settings.synth)
    return data_dir


def build_trainer(settings: StepSettings, data_dir: Path, run_dir: Path, batch_size: int,
                  device: str):
    """The trainer of a pretrain_mvd run on `data_dir`, nothing written but its run dir."""
    from mvd.config import load_config
    from mvd.engine.trainer import Trainer

    cfg = load_config(settings.config, [
        "task=pretrain_mvd",
        *settings.overrides,
        f"data.dir={data_dir}",
        f"data.batch_size={batch_size}",
        f"data.device={device}",
        f"dist.device={'cuda' if device == 'gpu' else 'cpu'}",
        f"run.dir={run_dir}",
        "run.progress=false",
        "checkpoint.resume=none",
    ])
    with _quiet("mvd.train"):  # the loud warning about randomly initialised teachers
        return Trainer(cfg)


def measure(settings: StepSettings, data_dir: Path, run_dir: Path, batch_size: int,
            device: str) -> list[dict]:
    """End-to-end, compute-only and loader-only rates for one batch size."""
    from mvd.models.flops import count_flops, mvd_step_flops
    from mvd.models.teachers import unwrap

    trainer = build_trainer(settings, data_dir, run_dir, batch_size, device)
    dev = trainer.info.device
    task, cfg = trainer.task, trainer.cfg
    batches = endless(trainer.loader)

    def step(batch: dict) -> None:
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
    counted = count_flops(lambda: step(cached)) / batch_size
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
        {"name": "flops_per_clip_counted", "value": counted / 1e9, "unit": "GFLOP"},
        {"name": "achieved_end_to_end", "value": flops * e2e_rate / 1e12, "unit": "TFLOP/s"},
    ]
    if dev.type == "cuda":
        records.append({"name": "peak_memory", "unit": "MiB",
                        "value": torch.cuda.max_memory_allocated(dev) / 2**20})
        peak = env.bf16_peak_tflops(torch.cuda.get_device_name(dev))
        if peak:
            records.append({"name": "mfu_end_to_end", "unit": "%",
                            "value": 100.0 * flops * e2e_rate / 1e12 / peak})
    return [{**rec, **common} for rec in records]


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


def endless(loader) -> Iterator[dict]:
    """Batches from epoch after epoch (iterating the loader again yields the next epoch)."""
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise RuntimeError("the loader yielded no batch: too few samples for the batch size")


def end_to_end(step: Callable[[dict], None], batches: Iterator[dict], n: int,
               dev: torch.device) -> tuple[float, float]:
    """(seconds, seconds blocked on next(batches)) for n steps fed by the loader.

    No sync per step: the host waits in next() only when the loader has nothing ready, which
    is when the device starves too.
    """
    wait = 0.0
    synchronize(dev)
    start = time.perf_counter()
    for _ in range(n):
        t = time.perf_counter()
        batch = next(batches)
        wait += time.perf_counter() - t
        step(batch)
    synchronize(dev)
    return time.perf_counter() - start, wait


def timed(fn: Callable[[], object], n: int, dev: torch.device) -> float:
    """Seconds for n calls of fn, with the device synchronised at both ends."""
    synchronize(dev)
    start = time.perf_counter()
    for _ in range(n):
        fn()
    synchronize(dev)
    return time.perf_counter() - start


def synchronize(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)  # host-device sync: only at the ends of a timed window
