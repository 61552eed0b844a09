"""``python -m benchmarks.teacher_precision --out DIR``: the targets' error of each teacher
precision against an fp32 forward, and the forward's time.

Each frozen teacher (the MAE image teacher on every second frame, the VideoMAE video teacher)
runs the same clips four ways, every one planned by :func:`mvd.engine.precision.plan_precision`:

- ``fp32``: fp32 weights, no autocast: the reference;
- ``bf16, teacher weights fp32``: the trainer's default on GPU (``train.teacher_weights=fp32``);
- ``bf16, teacher weights bf16``: ``train.teacher_weights=autocast``;
- ``fp16, teacher weights fp32``: the MVD release's setting (fp16 autocast, fp32 weights).

For each it reports the error of the last block's tokens (the targets) against the reference:
relative RMS ``||t - ref|| / ||ref||``, the largest absolute error in units of the reference's RMS,
and the SmoothL1 loss (beta 1, the distillation loss) between the two, which is the floor that
rounding alone puts under the student's loss. Times are the median of ``--repeats`` forwards.

The weights are the models' own random init (xavier): this machine has no released MAE /
VideoMAE checkpoint (the tests' release-format checkpoints are random models saved in the
release's layout), so trained features' outlier channels are not represented.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks import env
from mvd.distill import image_teacher_features
from mvd.engine.precision import plan_precision
from mvd.models import create_model
from mvd.models.teachers import freeze

TINY = {"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}  # configs/tiny teachers
SIZES = {  # name -> (image teacher, video teacher, create_model kwargs, frames, side)
    "tiny": ("mae_teacher_base", "videomae_teacher_small", TINY, 8, 32),
    "base": ("mae_teacher_base", "videomae_teacher_base", {}, 16, 224),
    "large": ("mae_teacher_large", "videomae_teacher_large", {}, 16, 224),
}
CHOICES = (  # (label, train.precision, train.teacher_weights)
    ("bf16, teacher weights fp32", "bf16", "fp32"),
    ("bf16, teacher weights bf16", "bf16", "autocast"),
    ("fp16, teacher weights fp32 (the release)", "fp16", "fp32"),
)


def teacher_forward(kind: str, teacher, video: torch.Tensor) -> torch.Tensor:
    """The targets as the distillation step computes them: (B, N, D) float32."""
    if kind == "image":
        return image_teacher_features(teacher, video, 2).float()
    return teacher(video).float()


def errors(got: torch.Tensor, ref: torch.Tensor) -> dict:
    diff = got - ref
    rms = ref.pow(2).mean().sqrt()
    return {"rel_rms": float(diff.norm() / ref.norm()),
            "max_abs_over_rms": float(diff.abs().max() / rms),
            "smooth_l1": float(F.smooth_l1_loss(got, ref, beta=1.0))}


def timed(fn, repeats: int) -> tuple[torch.Tensor, float]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        with torch.no_grad():
            out = fn()
        times.append(time.perf_counter() - t0)
    return out, statistics.median(times)


def measure(size: str, clips: int, repeats: int, seed: int = 0) -> list[dict]:
    image_name, video_name, kw, frames, side = SIZES[size]
    g = torch.Generator().manual_seed(seed)
    video = torch.randn(clips, 3, frames, side, side, generator=g)
    rows = []
    for kind, name in (("image", image_name), ("video", video_name)):
        torch.manual_seed(seed)
        shape = {"img_size": side} if kind == "image" else {"img_size": side, "num_frames": frames}
        base = freeze(create_model(name, **shape, **kw))
        ref, ref_s = timed(lambda: teacher_forward(kind, base, video), repeats)
        depth = base.module.depth
        rows.append({"size": size, "teacher": name, "kind": kind, "depth": depth,
                     "choice": "fp32 (reference)", "seconds": ref_s,
                     "rel_rms": 0.0, "max_abs_over_rms": 0.0, "smooth_l1": 0.0})
        for label, precision, weights in CHOICES:
            plan = plan_precision(precision, "cpu", teacher_weights=weights)
            teacher = freeze(create_model(name, **shape, **kw))
            teacher.load_state_dict(base.state_dict())
            teacher = teacher.to(plan.teacher_dtype)

            def run(teacher=teacher, plan=plan):
                with plan.autocast():
                    return teacher_forward(kind, teacher, video)

            got, seconds = timed(run, repeats)
            rows.append({"size": size, "teacher": name, "kind": kind, "depth": depth,
                         "choice": label, "seconds": seconds, **errors(got, ref)})
    return rows


def render(rows: list[dict], meta: dict) -> str:
    lines = ["# Teacher precision: targets against an fp32 forward", "",
             f"Command: `{meta['command']}`  ", f"Commit: {meta['commit']}  ",
             f"Device: CPU ({meta['env'].get('cpu')}, {meta['env'].get('usable_cpus')} cores), "
             f"load average at start {meta['load_start']}, at end {meta['load_end']}; random "
             f"(xavier) teacher weights, {meta['clips']} clip(s).", "",
             "| teacher | depth | choice | rel. RMS error | max abs / RMS | SmoothL1 to fp32 | "
             "forward s |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['teacher']} ({r['size']}) | {r['depth']} | {r['choice']} | "
                     f"{r['rel_rms']:.2e} | {r['max_abs_over_rms']:.2e} | {r['smooth_l1']:.2e} | "
                     f"{r['seconds']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.teacher_precision",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, type=Path, help="folder for report.json / report.md")
    ap.add_argument("--sizes", default="tiny,base", help=f"comma list of {', '.join(SIZES)}")
    ap.add_argument("--clips", type=int, default=1, help="clips per forward")
    ap.add_argument("--repeats", type=int, default=3, help="forwards timed per choice (median)")
    ap.add_argument("--commit", default="", help="the commit measured, written into the report")
    argv = sys.argv[1:] if argv is None else argv
    args = ap.parse_args(argv)
    sizes = [s for s in args.sizes.split(",") if s]
    unknown = [s for s in sizes if s not in SIZES]
    if unknown:
        ap.error(f"--sizes: unknown {', '.join(unknown)}; choose from {', '.join(SIZES)}")
    meta = {"command": "python -m benchmarks.teacher_precision " + " ".join(argv),
            "commit": args.commit or "(not given)", "clips": args.clips,
            "env": {"cpu": env.cpu_model(), "usable_cpus": env.usable_cpus(),
                    "torch_threads": torch.get_num_threads(), **env.package_versions()},
            "load_start": env.load_average()}
    rows = [r for s in sizes for r in measure(s, args.clips, args.repeats)]
    meta["load_end"] = env.load_average()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    (args.out / "report.md").write_text(render(rows, meta))
    print(render(rows, meta))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
