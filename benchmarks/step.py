"""`mvd-bench step`: the full MVD training step fed by the real loader.

For each batch size three rates are measured in one run, on the same shards and models:

- end to end: `next(loader)` + teachers' forward + student forward/backward + AdamW step, with
  the time blocked on `next(loader)` counted as data wait;
- compute only: the same step on one cached batch (no loader in the loop);
- loader only: the loader iterated alone.

A data-wait share near zero and end-to-end close to compute-only say the run is compute bound;
a large share says the loader is the bottleneck. The loader-only rate over the compute-only rate
is the loader's head room (the issue's target: at least 1.5x).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks import env

# Data-wait share from which a run is called data bound.
DATA_BOUND_SHARE = 0.10


@dataclass(frozen=True)
class StepSettings:
    """One benchmark configuration: models, clip shape, batch sizes and step counts."""

    student: str
    image_teacher: str
    video_teacher: str
    num_frames: int
    input_size: int
    batch_sizes: tuple[int, ...]
    warmup_steps: int
    steps: int
    synth: dict = field(default_factory=dict)  # options of the synthetic shards
    student_overrides: dict = field(default_factory=dict)
    image_teacher_overrides: dict = field(default_factory=dict)
    video_teacher_overrides: dict = field(default_factory=dict)
    mask_ratio: float = 0.9
    sampling_rate: int = 4


# Tiny models on small clips: seconds on a 2-core CPU.
_TINY_VIT = {"img_size": 64, "embed_dim": 64, "depth": 2, "num_heads": 2}
QUICK = StepSettings(
    student="mvd_student_small",
    image_teacher="mae_teacher_base",
    video_teacher="videomae_teacher_small",
    num_frames=8,
    input_size=64,
    batch_sizes=(2, 4),
    warmup_steps=2,
    steps=6,
    synth={"num_videos": 48},
    student_overrides={
        **_TINY_VIT,
        "num_frames": 8,
        "decoder_depth": 1,
        "decoder_embed_dim": 64,
        "decoder_num_heads": 2,
        "image_target_dim": 64,
        "video_target_dim": 64,
    },
    image_teacher_overrides=_TINY_VIT,
    video_teacher_overrides={**_TINY_VIT, "num_frames": 8},
)

# The reference configuration of the target: ViT-B student, ViT-B image and video
# teachers, 16x224, tube masking 0.9.
FULL_GPU = StepSettings(
    student="mvd_student_base",
    image_teacher="mae_teacher_base",
    video_teacher="videomae_teacher_base",
    num_frames=16,
    input_size=224,
    batch_sizes=(16, 32, 64),
    warmup_steps=5,
    steps=20,
    synth={"num_videos": 512},
)

# Without a GPU the reference configuration takes minutes per step; this keeps the student
# real-sized at half the resolution.
FULL_CPU = StepSettings(
    student="mvd_student_small",
    image_teacher="mae_teacher_base",
    video_teacher="videomae_teacher_small",
    num_frames=16,
    input_size=112,
    batch_sizes=(2,),
    warmup_steps=1,
    steps=3,
    synth={"num_videos": 32},
    student_overrides={"img_size": 112, "image_target_dim": 768, "video_target_dim": 384},
    image_teacher_overrides={"img_size": 112},
    video_teacher_overrides={"img_size": 112},
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
        records += measure(settings, data_dir, batch_size, device)
    return records


def synth_shards(data_dir: Path, settings: StepSettings) -> Path:
    """The synthetic shards the step reads (made once, reused by later runs into the same dir)."""
    from shard_tools.synth import make_synth_dataset

    if not (data_dir / "manifest.json").exists():
        make_synth_dataset(data_dir, **settings.synth)
    return data_dir


def measure(settings: StepSettings, data_dir: Path, batch_size: int, device: str) -> list[dict]:
    """End-to-end, compute-only and loader-only rates for one batch size."""
    from dali_pipelines import PretrainLoader

    dev = torch.device("cuda" if device == "gpu" else "cpu")
    loader = PretrainLoader(
        data_dir,
        batch_size,
        device=device,
        seed=0,
        num_frames=settings.num_frames,
        sampling_rate=settings.sampling_rate,
        input_size=settings.input_size,
        teacher_input_size=settings.input_size,
        mask_type="tube",
        mask_ratio=settings.mask_ratio,
    )
    batches = endless(loader)
    step, flop_step = build_step(settings, dev)

    for _ in range(settings.warmup_steps):
        step(next(batches))
    cached = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in next(batches).items()}

    # End to end: the time blocked on next(loader) is data wait. No sync per step: the host only
    # waits in next() when the loader has nothing ready, which is when the device starves too.
    wait = 0.0
    synchronize(dev)
    start = time.perf_counter()
    for _ in range(settings.steps):
        t = time.perf_counter()
        batch = next(batches)
        wait += time.perf_counter() - t
        step(batch)
    synchronize(dev)
    end_to_end = time.perf_counter() - start

    compute = timed(lambda: step(cached), settings.steps, dev)
    loader_only = timed(lambda: next(batches), settings.steps, dev)
    flops_per_clip = flop_step(cached) / batch_size

    clips = settings.steps * batch_size
    wait_share = wait / end_to_end
    e2e_rate = clips / end_to_end
    common = {
        "model": settings.student,
        "teachers": f"{settings.image_teacher}+{settings.video_teacher}",
        "batch_size": batch_size,
        "clip": f"{settings.num_frames}x{settings.input_size}",
        "mask": f"tube {settings.mask_ratio}",
        "dtype": "bf16" if dev.type == "cuda" else "fp32",
        "loader": f"PretrainLoader({device})",
        "bound": "data" if wait_share >= DATA_BOUND_SHARE else "compute",
    }
    records = [
        {"name": "end_to_end", "value": e2e_rate, "unit": "clips/s"},
        {"name": "compute_only", "value": clips / compute, "unit": "clips/s"},
        {"name": "loader_only", "value": clips / loader_only, "unit": "clips/s"},
        {"name": "data_wait_share", "value": 100.0 * wait_share, "unit": "%"},
        {"name": "loader_over_compute", "value": compute / loader_only, "unit": "x"},
        {"name": "step_flops_per_clip", "value": flops_per_clip / 1e9, "unit": "GFLOP"},
        {"name": "achieved_end_to_end", "value": flops_per_clip * e2e_rate / 1e12,
         "unit": "TFLOP/s"},
    ]
    peak = env.bf16_peak_tflops(torch.cuda.get_device_name(dev)) if dev.type == "cuda" else None
    if peak:
        records.append({"name": "mfu_end_to_end",
                        "value": 100.0 * flops_per_clip * e2e_rate / 1e12 / peak, "unit": "%"})
    return [{**rec, **common} for rec in records]


def build_step(settings: StepSettings, dev: torch.device) -> tuple[Callable, Callable]:
    """The training step (teachers' forward, student forward/backward, AdamW) and a function
    that counts one step's FLOPs with torch's FLOP counter."""
    from mvd.distill import mvd_forward
    from mvd.models import create_model

    student = create_model(settings.student, **settings.student_overrides).to(dev)
    image_teacher = create_model(settings.image_teacher, **settings.image_teacher_overrides)
    video_teacher = create_model(settings.video_teacher, **settings.video_teacher_overrides)
    image_teacher = image_teacher.to(dev).eval().requires_grad_(False)
    video_teacher = video_teacher.to(dev).eval().requires_grad_(False)
    student.train()
    optimizer = torch.optim.AdamW(
        student.parameters(),
        lr=1.5e-4,
        betas=(0.9, 0.95),
        weight_decay=0.05,
        fused=dev.type == "cuda",
    )

    def step(batch: dict) -> None:
        loss, _ = mvd_forward(
            student,
            image_teacher,
            video_teacher,
            batch["video"].to(dev, non_blocking=True),
            batch["teacher_video"].to(dev, non_blocking=True),
            batch["mask"].to(dev, non_blocking=True),
        )
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def count_flops(batch: dict) -> float:
        with FlopCounterMode(display=False) as counter:
            step(batch)
        return float(counter.get_total_flops())

    return step, count_flops


def endless(loader) -> Iterator[dict]:
    """Batches from epoch after epoch (iterating the loader again yields the next epoch)."""
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise RuntimeError("the loader yielded no batch: too few samples for the batch size")


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
