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

import os
import weakref
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.weak import WeakIdKeyDictionary

from dali_pipelines import shard_files
from dali_pipelines.manifest import ShardDirError, read_manifest
from mvd.config import Config, ConfigError, derive, per_process_config, plan_batch
from mvd.engine import distributed as D
from mvd.engine.optim import IMPLEMENTATIONS, choose_implementation
from mvd.engine.precision import plan_precision
from mvd.engine.tasks import Task, task_class
from mvd.models.flops import count_flops

GIB = 2**30


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


def make_plan(cfg: Config, environ: dict | None = None) -> tuple[dict | None, Plan]:
    """(the plan as a JSON-able dict, or None when errors stop it; the Plan with messages)."""
    environ = os.environ if environ is None else environ
    plan = Plan()
    cls = plan.check(task_class, cfg)  # the task's own config checks
    if cls is None:
        return None, plan
    world = int(environ.get("WORLD_SIZE") or cfg.dist.world_size_hint)
    device_type = "cpu" if cfg.dist.device == "cpu" else "cuda"
    fsdp = cfg.dist.fsdp and world > 1
    if cfg.dist.fsdp and world == 1:
        plan.warnings.append("dist.fsdp=true with one process: FSDP only shards across ranks, "
                             "so this run keeps whole copies (as DDP would)")
    precision = plan.check(plan_precision, cfg.train.precision, device_type, fsdp=cfg.dist.fsdp,
                           teacher_weights=cfg.train.teacher_weights)
    training = cls.trains
    impl = plan.check(choose_implementation, cfg.optim, device_type, fsdp=fsdp) if training \
        else None

    # What must exist by the time the run starts.
    plan.warnings += cls.plan_warnings(cfg)
    for key, path in cls.inputs(cfg).items():
        if path and shard_files.is_remote(path):  # the dry run reads no object store
            plan.warnings.append(f"{key}={path} is in object storage: not checked by the dry run")
        elif path and not Path(path).exists():
            plan.warnings.append(f"{key}={path} does not exist yet")

    key, data_dir = cls.shard_dir(cfg)
    manifest = plan.check(_manifest, data_dir, key)
    samples = manifest["samples"] if manifest else cfg.data.expected_samples
    if manifest and cfg.data.expected_samples and manifest["samples"] != cfg.data.expected_samples:
        plan.warnings.append(f"{data_dir} holds {manifest['samples']} samples, the recipe expects "
                             f"data.expected_samples={cfg.data.expected_samples}")
    if training and not samples:
        plan.errors.append(f"config key 'data.expected_samples': data.dir={data_dir or '(empty)'} "
                           f"has no manifest.json, so the plan needs the number of training "
                           f"videos: set data.expected_samples=N")
    classes = plan.check(cls.plan_classes, cfg, manifest, plan.warnings)
    if plan.errors:
        return None, plan

    derived = None
    if training:
        from dali_pipelines.sampling import steps_per_epoch

        split = plan.check(plan_batch, cfg, world, cls.batch_multiple(cfg))
        if split is None:
            return None, plan
        cfg = per_process_config(cfg, split)  # the task's loader and fake batch at the plan's batch
        batches = steps_per_epoch(samples, cfg.data.batch_size, world, drop_last=True)
        derived = plan.check(derive, cfg, world, batches, views=cls.clip_views(cfg))
        if derived is None:
            return None, plan

    # Build every model on the meta device, then give them fake weights.
    from torch._subclasses.fake_tensor import FakeTensorMode

    mode = FakeTensorMode()
    fake_device = torch.device("cpu")  # fake tensors need no memory; CPU autocast casts alike
    with torch.device("meta"):
        task = plan.check(cls.build, cfg, torch.device("meta"), 0, precision=precision, load=False,
                          classes=classes)
    if task is None:
        return None, plan
    plan.errors += task.plan_errors()
    if plan.errors:
        return None, plan
    model, teachers = task.model, task.teachers
    for m in [model, *teachers]:
        _to_fake(m, mode, fake_device)

    params = {"model": sum(p.numel() for p in model.parameters())}
    for name, t in task.named_teachers.items():
        params[name] = sum(p.numel() for p in t.parameters())

    cpu_precision = type(precision)(precision.name, fake_device.type, precision.teacher_weights)
    if fsdp:  # shard for real: FSDP2 over a process group that moves no data
        _fake_process_group(world)
    try:
        flops, peak = _fake_steps(task, model, mode, fake_device, cpu_precision,
                                  world if fsdp else 1)
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


def _manifest(path: str, key: str) -> dict | None:
    """The shards' manifest (``dali_pipelines.manifest``), None where there is none yet."""
    if not path or shard_files.is_remote(path):  # the dry run reads no object store
        return None
    try:
        manifest = read_manifest(path, missing_ok=True)
    except ShardDirError as e:
        raise ConfigError(f"config key '{key}': {e}") from None
    missing = [f for f in ("samples", "classes") if manifest is not None and f not in manifest]
    if missing:
        raise ConfigError(f"config key '{key}': {path}/manifest.json has no {' or '.join(missing)}")
    return manifest


def _fake_steps(task: Task, model: nn.Module, mode, device: torch.device, precision,
                fsdp_world: int) -> tuple[dict, int]:
    """(FLOPs per clip, peak live bytes) of two training steps (or one eval forward) on fake
    tensors; with ``fsdp_world`` > 1 the model is first sharded with the trainer's own
    ``wrap_model`` over the fake process group."""
    if fsdp_world > 1:
        info = D.DistInfo(rank=0, world_size=fsdp_world, local_rank=0, device=device)
        model = D.wrap_model(model, info, fsdp=True, precision=precision)  # (mesh: real tensors)
    live = LiveBytes()
    with mode:
        for m in [model, *task.teachers]:
            for t in [*m.parameters(), *m.buffers()]:
                live.add(getattr(t, "_local_tensor", t))  # a DTensor's shard
        batch = task.fake_batch(mode, device)
        if task.trains:
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
            flops = task.train_flops(batch)
        else:
            with torch.no_grad():
                model.eval()
                with live, precision.autocast():
                    task.scores(model, batch)
                one = task.clips(batch, 1)
                flops = {"forward": count_flops(lambda: task.scores(model, one))}
    return flops, live.peak


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
