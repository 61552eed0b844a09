"""``mvd-train --config FILE --dry-run [overrides]``: the plan of a run, proven on shapes alone.

Needs no data, no checkpoint and no GPU. It makes the decisions the trainer would make for the
target (a GPU node unless ``dist.device=cpu``, ``WORLD_SIZE`` from torchrun or
``dist.world_size_hint``): precision plan, optimizer implementation, DDP / FSDP and compile
wrapping, global batch, lr and steps. It builds every model and teacher on the meta device,
turns their weights into fake tensors (``FakeTensorMode``: shapes, dtypes and devices, no
storage), and runs one real optimizer step of the task's own loss (forward, backward, AdamW) at
the recipe's per-GPU batch on shape-only input, under the recipe's autocast (two steps: the
second one carries the AdamW state, as every step after the first does).

Peak memory per rank is measured on those fake steps: every tensor's storage is counted from the
op that creates it until Python frees it (parameters, teachers, gradients, AdamW state,
activations, temporaries), and the peak of the live total is kept. Under FSDP the trained model
is sharded for real by the trainer's own ``wrap_model`` over torch's fake process group of the
world size (collectives move nothing), so shards, all-gathered blocks and reduce-scatter buffers
are counted as FSDP2 allocates and frees them. DDP is not wrapped (its reducer needs real
tensors); with ``gradient_as_bucket_view`` its buckets are the gradients. Not included: the CUDA context (~0.5 GiB), cuBLAS / flash workspaces, NCCL buffers,
the loader's decode buffers and the caching allocator's fragmentation. CPU autocast casts
the same matmul ops as CUDA autocast, and SDPA runs the fused (flash-style) kernel in both.

Every inconsistent combination is collected and reported together, each naming its config key,
and the command exits 2; otherwise the last stdout line is one JSON object (the plan).
"""

from __future__ import annotations

import json
import os
import weakref
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.weak import WeakIdKeyDictionary

from mvd.config import Config, ConfigError, derive, plan_batch
from mvd.engine import distributed as D
from mvd.engine.optim import IMPLEMENTATIONS, choose_implementation
from mvd.engine.precision import plan_precision
from mvd.engine.tasks import build_task
from mvd.models.flops import count_flops, mvd_step_flops

GIB = 2**30
DEFAULT_CLASSES = 400  # planned with when neither the shards nor model.overrides say
DEFAULT_DETECT_CLASSES = 80  # AVA v2.2's action list, for task detect
PLAN_BOXES_PER_CLIP = 8  # detect: boxes per training clip planned with (AVA keyframes hold a few
# people, each box and its jittered copy; a fake batch holds no values, only this shape)


class LiveBytes(TorchDispatchMode):
    """Counts the bytes of every tensor storage alive, from the op that makes it until it is
    freed, and keeps the peak (works on fake tensors: their storages have sizes, not memory).
    Storages resized in place count at their new size (FSDP2 frees and re-allocates its
    unsharded parameters with ``untyped_storage().resize_``)."""

    def __init__(self):
        super().__init__()
        self.now = self.peak = 0
        self._seen = WeakIdKeyDictionary()  # storage -> [bytes] (a box the finalizer shares)

    def add(self, t: torch.Tensor) -> None:
        st = t.untyped_storage()
        if st in self._seen:
            return
        box = [st.nbytes()]
        self._seen[st] = box
        self._grow(box[0])
        weakref.finalize(st, self._grow, box)

    def _grow(self, n) -> None:
        self.now += n if isinstance(n, int) else -n[0]  # an int: allocated; a box: freed
        self.peak = max(self.peak, self.now)

    def __enter__(self):
        self._resize = resize = torch.UntypedStorage.resize_
        seen, grow = self._seen, self._grow

        def counted_resize(storage, size):
            out = resize(storage, size)
            if storage in seen:
                box = seen[storage]
                grow(size - box[0])
                box[0] = size
            return out

        torch.UntypedStorage.resize_ = counted_resize  # restored in __exit__
        return super().__enter__()

    def __exit__(self, *exc):
        torch.UntypedStorage.resize_ = self._resize
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.add(t)
        return out


def _to_fake(module: nn.Module, mode, device: torch.device) -> None:
    """Replace a meta-device module's parameters and buffers by fake tensors on ``device``."""
    convert = mode.fake_tensor_converter.from_meta_and_device
    for m in module.modules():
        for k, p in list(m._parameters.items()):
            if p is not None:
                m._parameters[k] = nn.Parameter(convert(mode, p.data, device),
                                                requires_grad=p.requires_grad)
        for k, b in list(m._buffers.items()):
            if b is not None:
                m._buffers[k] = convert(mode, b, device)


def _fake_process_group(world: int) -> None:
    """Join a ``world``-rank process group of torch's fake backend (collectives return at once,
    moving nothing), so FSDP2 shards the fake model exactly as it would across real ranks."""
    from torch.testing._internal.distributed.fake_pg import FakeStore

    if dist.is_initialized():
        raise RuntimeError("mvd-train --dry-run runs without a process group; do not start it "
                           "under an initialised one")
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=world)


def _manifest(path: str) -> dict | None:
    p = Path(path) / "manifest.json" if path else None
    return json.loads(p.read_text()) if p is not None and p.is_file() else None


def _fake_batch(task, cfg: Config, mode, device: torch.device, per_gpu: int) -> dict:
    """A batch of the loader's shapes and dtypes at ``per_gpu`` videos (fake tensors: nothing
    is allocated)."""
    d = cfg.data
    B = per_gpu * (d.repeated_aug if cfg.task == "finetune" else 1)
    with mode:
        batch = {"video": torch.empty(B, 3, d.num_frames, d.input_size, d.input_size, device=device),
                 "label": torch.zeros(B, dtype=torch.long, device=device)}
        if cfg.task == "detect":
            k = B * PLAN_BOXES_PER_CLIP
            batch["boxes"] = torch.zeros(k, 5, device=device)
            batch["box_labels"] = torch.zeros(k, len(task.classes), device=device)
        if cfg.task in ("pretrain_mvd", "pretrain_videomae"):
            n = task.model.num_patches
            batch["mask"] = torch.zeros(B, n, dtype=torch.bool, device=device)
            s = d.teacher_input_size or d.input_size
            if cfg.task == "pretrain_mvd" and s != d.input_size:
                batch["teacher_video"] = torch.empty(B, 3, d.num_frames, s, s, device=device)
    return batch


class Plan:
    """Collects the plan's errors (each naming its key) and warnings while it is made."""

    def __init__(self):
        self.errors: list[str] = []
        self.warnings: list[str] = []

    def check(self, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ConfigError as e:
            self.errors.append(str(e))
        except ValueError as e:  # a model refusing its shape arguments
            self.errors.append(f"{e}")
        return None


def _check_grids(cfg: Config, task, plan: Plan) -> None:
    """The teachers' token grids must be the student's: image teacher per frame (H', W'), video
    teacher (T', H', W')."""
    from mvd.models.teachers import unwrap

    student = task.model
    if task.image_teacher is not None:
        got = unwrap(task.image_teacher).grid
        if tuple(got) != tuple(student.grid[1:]):
            plan.errors.append(
                f"config keys 'data.teacher_input_size' / 'teachers.image': the image teacher "
                f"{cfg.teachers.image.name} gives a {got[0]}x{got[1]} token grid per frame at "
                f"{cfg.data.teacher_input_size or cfg.data.input_size} px but the student's is "
                f"{student.grid[1]}x{student.grid[2]}; set data.teacher_input_size to "
                f"{student.grid[1]} x the teacher's patch size")
    if task.video_teacher is not None:
        got = unwrap(task.video_teacher).grid
        if tuple(got) != tuple(student.grid):
            plan.errors.append(
                f"config key 'teachers.video': the video teacher {cfg.teachers.video.name} gives a "
                f"{'x'.join(map(str, got))} token grid but the student's is "
                f"{'x'.join(map(str, student.grid))}; give both the same patch and tubelet size")


def make_plan(cfg: Config, environ: dict | None = None) -> tuple[dict | None, Plan]:
    """(the plan as a JSON-able dict, or None when errors stop it; the Plan with messages)."""
    environ = os.environ if environ is None else environ
    plan = Plan()
    world = int(environ.get("WORLD_SIZE") or cfg.dist.world_size_hint)
    device_type = "cpu" if cfg.dist.device == "cpu" else "cuda"
    fsdp = cfg.dist.fsdp and world > 1
    if cfg.dist.fsdp and world == 1:
        plan.warnings.append("dist.fsdp=true with one process: FSDP only shards across ranks, "
                             "so this run keeps whole copies (as DDP would)")
    precision = plan.check(plan_precision, cfg.train.precision, device_type, fsdp=cfg.dist.fsdp,
                           teacher_weights=cfg.train.teacher_weights)
    training = cfg.task != "eval"
    impl = plan.check(choose_implementation, cfg.optim, device_type, fsdp=fsdp) if training \
        else None
    if cfg.task == "eval" and cfg.eval.batch_size % cfg.eval.num_crops:
        plan.errors.append(f"config key 'eval.batch_size' is {cfg.eval.batch_size}; it must be a "
                           f"multiple of eval.num_crops={cfg.eval.num_crops} (each batch holds "
                           f"whole clips)")

    # What must exist by the time the run starts.
    paths = {"data.dir": cfg.data.dir if training else "", "eval.dir": cfg.eval.dir,
             "model.init": cfg.model.init}
    if cfg.task == "pretrain_mvd":
        for kind in ("image", "video"):
            tc = getattr(cfg.teachers, kind)
            if tc.name:
                paths[f"teachers.{kind}.checkpoint"] = tc.checkpoint
                if not tc.checkpoint:
                    plan.warnings.append(f"teachers.{kind}.checkpoint is empty: the {kind} "
                                         f"teacher would be randomly initialised")
    for key, path in paths.items():
        if path and not Path(path).exists():
            plan.warnings.append(f"{key}={path} does not exist yet")

    data_dir = cfg.data.dir if training else (cfg.eval.dir or cfg.data.dir)
    manifest = _manifest(data_dir)
    samples = manifest["samples"] if manifest else cfg.data.expected_samples
    if manifest and cfg.data.expected_samples and manifest["samples"] != cfg.data.expected_samples:
        plan.warnings.append(f"{data_dir} holds {manifest['samples']} samples, the recipe expects "
                             f"data.expected_samples={cfg.data.expected_samples}")
    if training and not samples:
        plan.errors.append(f"config key 'data.expected_samples': data.dir={data_dir or '(empty)'} "
                           f"has no manifest.json, so the plan needs the number of training "
                           f"videos: set data.expected_samples=N")
    classes = None
    if cfg.task in ("finetune", "eval", "detect"):
        default = DEFAULT_DETECT_CLASSES if cfg.task == "detect" else DEFAULT_CLASSES
        if manifest:
            classes = list(manifest["classes"])
        elif "num_classes" in cfg.model.overrides:
            classes = [str(i) for i in range(int(cfg.model.overrides["num_classes"]))]
        else:
            classes = [str(i) for i in range(default)]
            plan.warnings.append(f"no shards to read the class list from: planned with "
                                 f"{default} classes")
    if plan.errors:
        return None, plan

    derived = None
    if training:
        from dali_pipelines.sampling import steps_per_epoch

        split = plan.check(plan_batch, cfg, world)
        if split is None:
            return None, plan
        batches = steps_per_epoch(samples, split.per_process, world, drop_last=True)
        derived = plan.check(derive, cfg, world, batches)
        if derived is None:
            return None, plan

    # Build every model on the meta device, then give them fake weights.
    from torch._subclasses.fake_tensor import FakeTensorMode

    mode = FakeTensorMode()
    fake_device = torch.device("cpu")  # fake tensors need no memory; CPU autocast casts alike
    with torch.device("meta"):
        if cfg.task == "eval":
            from mvd.models import create_model

            model = plan.check(create_model, cfg.model.name, img_size=cfg.data.input_size,
                               num_frames=cfg.data.num_frames, num_classes=len(classes),
                               **cfg.model.overrides)
            task = None
        else:
            kw = {"classes": classes} if cfg.task in ("finetune", "detect") else {}
            task = plan.check(build_task, cfg, torch.device("meta"), 0, precision=precision,
                              load=False, **kw)
            model = task.model if task is not None else None
    if model is None:
        return None, plan
    if cfg.task == "pretrain_mvd":
        _check_grids(cfg, task, plan)
        if plan.errors:
            return None, plan
    teachers = task.teachers if task is not None else []
    for m in [model, *teachers]:
        _to_fake(m, mode, fake_device)

    params = {"model": sum(p.numel() for p in model.parameters())}
    if task is not None:
        for kind in ("image", "video"):
            t = getattr(task, f"{kind}_teacher", None)
            if t is not None:
                params[f"{kind}_teacher"] = sum(p.numel() for p in t.parameters())

    cpu_precision = type(precision)(precision.name, fake_device.type)
    if fsdp:  # shard for real: FSDP2 over a process group that moves no data
        _fake_process_group(world)
    try:
        flops, peak = _fake_steps(cfg, task, model, teachers, mode, fake_device, cpu_precision,
                                  world if fsdp else 1, derived.per_gpu_batch if derived else 0)
    finally:
        if fsdp:
            dist.destroy_process_group()

    d = derived
    result = {
        "task": cfg.task,
        "model": cfg.model.name,
        "device": device_type,
        "world_size": world,
        "params": params,
        "train_flops_per_clip": flops.get("total"),
        "flops_per_clip": flops,
        "per_gpu_batch": d.per_gpu_batch if d else cfg.eval.batch_size,
        "accum_steps": d.accum_steps if d else None,
        "global_batch": d.global_batch if d else cfg.eval.batch_size * world,
        "clips_per_step": d.clips_per_step if d else None,
        "samples": samples,
        "lr": d.lr if d else None,
        "min_lr": d.min_lr if d else None,
        "steps_per_epoch": d.steps_per_epoch if d else None,
        "total_steps": d.total_steps if d else None,
        "warmup_steps": d.warmup_steps if d else None,
        "peak_memory_gib_per_rank": round(peak / GIB, 3),
        "memory_method": "live storage bytes over two FakeTensorMode steps at the per-GPU batch"
                         + (f", FSDP2 applied over a fake {world}-rank process group"
                            if fsdp else ""),
        "precision": precision.describe(fsdp, teachers=bool(teachers)),
        "optimizer": IMPLEMENTATIONS[impl] if impl else None,
        "fsdp": fsdp,
        "compile": cfg.model.compile,
        "wrapping": D.wrapping(world > 1, cfg.dist.fsdp, cfg.model.compile) if training else
                    "evaluation: the plain model on every rank (no DDP), scores gathered at the end",
        "warnings": plan.warnings,
    }
    return result, plan


def _fake_steps(cfg: Config, task, model: nn.Module, teachers: list[nn.Module], mode,
                device: torch.device, precision, fsdp_world: int, per_gpu: int) -> tuple[dict, int]:
    """(FLOPs per clip, peak live bytes) of two training steps (or one eval forward) on fake
    tensors; with ``fsdp_world`` > 1 the model is first sharded with the trainer's own
    ``wrap_model`` over the fake process group."""
    if fsdp_world > 1:
        info = D.DistInfo(rank=0, world_size=fsdp_world, local_rank=0, device=device)
        model = D.wrap_model(model, info, fsdp=True, precision=precision)  # (mesh: real tensors)
    live = LiveBytes()
    with mode:
        for m in [model, *teachers]:
            for t in [*m.parameters(), *m.buffers()]:
                live.add(getattr(t, "_local_tensor", t))  # a DTensor's shard
        if cfg.task != "eval":
            batch = _fake_batch(task, cfg, mode, device, per_gpu)
            model.train()
            with live:
                optimizer = torch.optim.AdamW(
                    [p for p in model.parameters() if p.requires_grad], foreach=True)
                task.trust_mask_count()  # fake masks hold no values to count
                for step in range(2):  # the second step carries the AdamW state: steady state
                    with precision.autocast():
                        loss, _ = task.loss(model, batch, step)
                    loss.backward()
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
            flops = _train_flops(cfg, task, batch)
        else:
            with torch.no_grad():
                video = torch.empty(cfg.eval.batch_size, 3, cfg.data.num_frames,
                                    cfg.data.input_size, cfg.data.input_size, device=device)
                model.eval()
                with live, precision.autocast():
                    model(video)
                flops = {"forward": count_flops(lambda: model(video[:1]))}
    return flops, live.peak



def _train_flops(cfg: Config, task, batch: dict) -> dict:
    """Per clip: 3 x the trained model's forward (forward + backward at 2x) + the teachers'
    forward; analytical for MVD (``mvd.models.flops``, pinned to torch's counter by the tests),
    torch's counter on one fake forward for the other tasks."""
    if cfg.task == "pretrain_mvd":  # (random masking hides about as many tokens as tube)
        f = mvd_step_flops(task.model, task.image_teacher, task.video_teacher, cfg.data.mask_ratio)
        return {"student_forward": f["student_forward"], "teachers_forward": f["teachers_forward"],
                "total": f["total"]}
    one = {k: v[:2] for k, v in batch.items()}  # two clips: mixup pairs clips
    if cfg.task == "detect":  # the boxes of those two clips
        one["boxes"] = batch["boxes"][: 2 * PLAN_BOXES_PER_CLIP]
        one["box_labels"] = batch["box_labels"][: 2 * PLAN_BOXES_PER_CLIP]
    with torch.no_grad():
        fwd = count_flops(lambda: task.loss(task.model, one, 0)) // 2
    return {"forward": fwd, "total": 3 * fwd}


def render(plan: dict) -> str:
    """The plan for a reader (the JSON line follows it)."""
    p = plan
    lines = [f"dry run: {p['task']} of {p['model']} on {p['world_size']} x {p['device']}"]
    lines.append("  parameters: " + ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in p["params"].items()))
    if p["train_flops_per_clip"]:
        lines.append(f"  training FLOPs per clip: {p['train_flops_per_clip'] / 1e12:.3f} TFLOP "
                     + "(" + ", ".join(f"{k} {v / 1e9:.1f} G" for k, v in p["flops_per_clip"].items()
                                      if k != "total") + ")")
    if p["lr"] is not None:
        lines.append(f"  batch: {p['global_batch']} global = {p['per_gpu_batch']} per GPU x "
                     f"{p['world_size']} GPUs x {p['accum_steps']} accumulation "
                     f"({p['clips_per_step']} clips a step); lr "
                     f"{p['lr']:.3g} (min {p['min_lr']:.3g}); {p['samples']} samples -> "
                     f"{p['steps_per_epoch']} steps/epoch, {p['total_steps']} steps "
                     f"({p['warmup_steps']} warm-up)")
    lines.append(f"  precision: {p['precision']}")
    if p["optimizer"]:
        lines.append(f"  optimizer: {p['optimizer']}")
    lines.append(f"  model wrapping: {p['wrapping']}")
    lines.append(f"  peak memory per rank: {p['peak_memory_gib_per_rank']:.2f} GiB "
                 f"({p['memory_method']})")
    for w in p["warnings"]:
        lines.append(f"  warning: {w}")
    return "\n".join(lines)
