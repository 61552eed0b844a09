"""Process group set-up and model wrapping (DDP, or FSDP2 ``fully_shard`` for L/H).

Works under ``torchrun`` (reads RANK / WORLD_SIZE / LOCAL_RANK) and as a single plain process.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from dali_pipelines.budget import cpu_budget
from mvd.config import DistConfig
from mvd.engine.precision import Precision


@dataclass
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(cfg: DistConfig) -> DistInfo:
    """Join the torchrun process group (NCCL on GPU, gloo on CPU) or run as one process."""
    use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("dist.device=cuda but CUDA is not available; use dist.device=auto")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
        torch.set_num_threads(cpu_threads(cfg.cpu_threads, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
    if world > 1 and not dist.is_initialized():
        backend = cfg.backend if cfg.backend != "auto" else ("nccl" if use_cuda else "gloo")
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=cfg.timeout_s),
                                device_id=device if use_cuda else None)
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=device)


def cpu_threads(configured: int, local_world_size: int) -> int:
    """torch's intra-op threads for one CPU training process: `configured` when set, else half of
    the usable cores per process on this node, at least 1; the loader gets the rest. The split is
    decided in one place, dali_pipelines.budget.cpu_budget (plain Python, no DALI): on 2 cores,
    one torch thread made the demo's fine-tuning 17 % faster than two, and under other load two
    threads slowed a tiny step a hundredfold."""
    return cpu_budget(step_device="cpu", torch_threads=configured,
                      local_world_size=local_world_size).torch_threads


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_gather_objects(obj) -> list:
    """Every rank's ``obj``, in rank order (a list of one without a process group)."""
    if not dist.is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, src: int = 0):
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def transformer_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """Every transformer block of the model (encoder and decoders), the FSDP / compile unit."""
    return [block for m in model.modules()
            if isinstance(getattr(m, "blocks", None), torch.nn.ModuleList) for block in m.blocks]


def wrapping(distributed: bool, fsdp: bool, compile: bool) -> str:
    """How :func:`wrap_model` wraps the trained model, in words (logged; in the dry-run plan)."""
    if not distributed:
        how = "single process"
        return how + (", whole model compiled (fullgraph)" if compile else "")
    if fsdp:
        how = "FSDP2 fully_shard per block + root"
        return ("each block compiled (fullgraph), then " + how) if compile else how
    how = "DDP (broadcast_buffers=False, gradient_as_bucket_view)"
    return how + (", then compiled whole (DDPOptimizer keeps bucketed all-reduce overlap)"
                  if compile else "")


def wrap_model(model: torch.nn.Module, info: DistInfo, *, fsdp: bool, precision: Precision,
               compile: bool = False, find_unused: bool = False) -> torch.nn.Module:
    """Compile and parallelise the trained model in torchtitan's order (see :func:`wrapping`):

    - FSDP2: each block is compiled in place (``fullgraph``: a graph break is an error), then
      sharded per block and at the root with ``precision``'s MixedPrecisionPolicy; compiling
      after ``fully_shard`` would break the graph at every FSDP hook.
    - DDP: wrapped first, then compiled whole, so dynamo's DDPOptimizer splits the graph at the
      bucket boundaries and gradient all-reduce still overlaps backward. The fixed position tables
      are buffers that never change: ``broadcast_buffers=False`` saves a broadcast every forward.
    - One process: the whole model compiled (``fullgraph``).
    Compiling in place (``Module.compile``) keeps the state-dict keys free of ``_orig_mod.``.
    """
    if not info.distributed:
        if compile:
            model.compile(fullgraph=True)
        return model
    if fsdp:
        from torch.distributed.fsdp import fully_shard

        mp = precision.fsdp_policy()
        for block in transformer_blocks(model):
            if compile:
                block.compile(fullgraph=True)
            fully_shard(block, mp_policy=mp)
        fully_shard(model, mp_policy=mp)
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [info.local_rank] if info.device.type == "cuda" else None
    ddp = DDP(model, device_ids=ids, find_unused_parameters=find_unused, broadcast_buffers=False,
              gradient_as_bucket_view=True)
    return torch.compile(ddp) if compile else ddp


def compile_teacher(teacher: torch.nn.Module) -> torch.nn.Module:
    """Compile a frozen teacher in place (``fullgraph``); teachers are most of a step's FLOPs."""
    inner = getattr(teacher, "module", teacher)  # the Frozen wrapper's model
    inner.compile(fullgraph=True)
    return teacher


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module under DDP / torch.compile wrappers (FSDP2 modules are their own)."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            return model
        model = inner


def all_gather_rows(t: torch.Tensor) -> torch.Tensor:
    """Every rank's rows of ``t`` (N_r, C), concatenated in rank order: (sum of N_r, C).

    N_r may differ between ranks (C and the dtype may not); ``t`` itself without a process group.
    The tensors stay on ``t``'s device: CUDA under NCCL, CPU under gloo. Collective."""
    if not dist.is_initialized():
        return t
    world = dist.get_world_size()
    n = torch.tensor([t.shape[0]], dtype=torch.long, device=t.device)
    counts = [torch.empty_like(n) for _ in range(world)]
    dist.all_gather(counts, n)
    counts = torch.cat(counts).tolist()  # host sync: the row counts, to pad to and trim back
    most = max(counts)
    if most == 0:
        return t
    padded = t.new_zeros((most, *t.shape[1:]))  # all_gather needs one shape on every rank
    padded[: t.shape[0]] = t
    out = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(out, padded)
    return torch.cat([part[:c] for part, c in zip(out, counts)])  # (sum N_r, C)
