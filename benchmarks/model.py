"""`mvd-bench model`: the MVD training step of the models alone (no loader), forward + backward.

One timed step = both teachers' forward (inference mode) + student forward + backward + optimizer
step, on a batch kept on the device. Per configuration it records clips/s, peak memory, achieved
TFLOP/s from the analytical FLOP count (mvd.models.flops) and, on GPUs with a known bf16 peak,
MFU. On a GPU the SDPA backends (flash / efficient / math) and the optimizer implementations
(apex FusedAdam when importable, torch fused AdamW, foreach AdamW) are measured side by side.

    python -m benchmarks.model --device cpu --quick --out runs/bench
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from benchmarks import env


@dataclass(frozen=True)
class ModelCase:
    """One measured configuration."""

    student: str
    image_teacher: str
    video_teacher: str
    batch_size: int
    num_frames: int = 16
    img_size: int = 224
    mask_ratio: float = 0.9
    sdpa: str = "default"  # default | flash | efficient | math
    optimizer: str = "foreach"  # foreach | fused | apex
    warmup: int = 2
    steps: int = 5


_B_TEACHERS = dict(image_teacher="mae_teacher_base", video_teacher="videomae_teacher_base")
_L_TEACHERS = dict(image_teacher="mae_teacher_large", video_teacher="videomae_teacher_large")


def cases(device: str, quick: bool) -> list[ModelCase]:
    """The configurations of a run (see the module docstring)."""
    if device == "cpu":
        # quick: 8 frames at 112 px (392 -> 4x7x7 = 196 tokens) so that a loaded 2-core machine
        # finishes in about a minute; full: the reference 16x224 clip, batch 2
        shape = dict(num_frames=8, img_size=112, warmup=1, steps=2) if quick else dict(warmup=1, steps=3)
        return [ModelCase(s, batch_size=2, **_B_TEACHERS, **shape) for s in ("mvd_student_small", "mvd_student_base")]
    steps = dict(warmup=2, steps=3) if quick else dict(warmup=3, steps=10)
    sizes = [("mvd_student_small", 64, _B_TEACHERS), ("mvd_student_base", 32, _B_TEACHERS)]
    if not quick:
        sizes.append(("mvd_student_large", 16, _L_TEACHERS))
    out = [ModelCase(s, batch_size=b, **t, sdpa=k, optimizer="fused", **steps)
           for s, b, t in sizes for k in ("flash", "efficient", "math")]
    base = next(c for c in out if c.student == "mvd_student_base" and c.sdpa == "flash")
    out += [replace(base, optimizer=o) for o in ("apex", "foreach")]
    return out


def make_optimizer(kind: str, params) -> torch.optim.Optimizer:
    """AdamW of the recipe (betas 0.9/0.95, wd 0.05) in the asked implementation."""
    kw = dict(lr=1.5e-4, betas=(0.9, 0.95), weight_decay=0.05)
    if kind == "apex":
        from apex.optimizers import FusedAdam  # ImportError -> the case is recorded as skipped

        return FusedAdam(params, adam_w_mode=True, **kw)
    return torch.optim.AdamW(params, fused=kind == "fused", foreach=kind == "foreach", **kw)


def sdpa_context(kind: str):
    from contextlib import nullcontext

    from torch.nn.attention import SDPBackend, sdpa_kernel

    backends = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
                "math": SDPBackend.MATH}
    return nullcontext() if kind == "default" else sdpa_kernel(backends[kind])


def measure(case: ModelCase, dev: torch.device) -> list[dict]:
    """Time one case; returns its records (or one skipped record saying why)."""
    from mvd.distill import mvd_forward
    from mvd.engine.precision import plan_precision
    from dali_pipelines.masks import masked_tokens, tube_mask
    from mvd.models import create_model, freeze
    from mvd.models.flops import mvd_step_flops

    precision = plan_precision("auto", dev.type)  # the trainer's default: bf16 on GPU, fp32 on CPU
    shape = dict(img_size=case.img_size, num_frames=case.num_frames)
    student = create_model(case.student, **shape).to(dev).train()
    image_teacher = freeze(create_model(case.image_teacher, img_size=case.img_size)).to(
        dev, precision.teacher_dtype)
    video_teacher = freeze(create_model(case.video_teacher, **shape)).to(dev, precision.teacher_dtype)
    optimizer = make_optimizer(case.optimizer, student.parameters())
    g = torch.Generator(device=dev).manual_seed(0)
    video = torch.randn(case.batch_size, 3, case.num_frames, case.img_size, case.img_size, device=dev, generator=g)
    mask = tube_mask(case.batch_size, student.grid, case.mask_ratio, generator=g, device=dev)
    num_masked = masked_tokens(student.grid, case.mask_ratio, "tube")

    def step():
        with sdpa_context(case.sdpa):
            with precision.autocast():
                loss, _ = mvd_forward(student, image_teacher, video_teacher, video, video, mask,
                                      num_masked=num_masked)
            loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(case.warmup):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)  # host sync: only at the ends of the timed window
        torch.cuda.reset_peak_memory_stats(dev)
    start = time.perf_counter()
    for _ in range(case.steps):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    seconds = time.perf_counter() - start

    flops = mvd_step_flops(student, image_teacher, video_teacher, case.mask_ratio, case.batch_size)["total"]
    rate = case.steps * case.batch_size / seconds
    tflops = flops * case.steps / seconds / 1e12
    records = [
        {"name": "fwd_bwd", "value": rate, "unit": "clips/s"},
        {"name": "step_time", "value": 1e3 * seconds / case.steps, "unit": "ms"},
        {"name": "achieved", "value": tflops, "unit": "TFLOP/s"},
    ]
    if dev.type == "cuda":
        records.append({"name": "peak_memory", "value": torch.cuda.max_memory_allocated(dev) / 2**20, "unit": "MiB"})
        peak = env.bf16_peak_tflops(torch.cuda.get_device_name(dev))
        if peak:
            records.append({"name": "mfu", "value": 100.0 * tflops / peak, "unit": "%"})
    else:
        # process high-water mark (it never goes down, so later cases include earlier ones)
        records.append({"name": "peak_rss", "value": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                        "unit": "MiB"})
    return [{**r, **describe(case, dev)} for r in records]


def describe(case: ModelCase, dev: torch.device) -> dict:
    from mvd.engine.precision import plan_precision

    precision = plan_precision("auto", dev.type)
    return {"model": case.student, "teachers": f"{case.image_teacher}+{case.video_teacher}",
            "batch_size": case.batch_size, "clip": f"{case.num_frames}x{case.img_size}",
            "mask": f"tube {case.mask_ratio}", "dtype": precision.name,
            "sdpa": case.sdpa, "optimizer": case.optimizer, "steps": case.steps}


def run(out_dir: Path, *, device: str, quick: bool) -> list[dict]:
    """Measure every case for ``device`` ("cpu" or "gpu"); returns benchmark records."""
    dev = torch.device("cuda" if device == "gpu" else "cpu")
    records = []
    for case in cases(device, quick):
        try:
            records += measure(case, dev)
        except (ImportError, RuntimeError) as exc:  # apex missing, a backend unsupported, out of memory
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            records.append({"name": "fwd_bwd", "skipped": reason, **describe(case, dev)})
        finally:
            gc.collect()
            if dev.type == "cuda":
                torch.cuda.empty_cache()
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    (Path(out_dir) / "model.json").write_text(json.dumps(
        {"command": " ".join(sys.argv), "environment": env.collect(device), "records": records}, indent=1))
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--quick", action="store_true", help="small clip / few steps (see cases())")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-model"))
    args = parser.parse_args(argv)
    for rec in run(args.out, device=args.device, quick=args.quick):
        fields = {k: v for k, v in rec.items() if k not in ("name", "value", "unit", "skipped")}
        value = f"{rec['value']:.4g} {rec['unit']}" if "value" in rec else f"skipped: {rec['skipped']}"
        print(f"{rec['name']} = {value}  {fields}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
