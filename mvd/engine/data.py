"""What every dali_pipelines loader takes from the data config and the process's rank (each task
module builds its own loaders with these), and turning their batches into the models' inputs on
the device.

The training loaders yield uint8 clips (``normalize=False``: a quarter of the bytes of float32
to copy and move); :class:`ModelInputs` normalises them on the device inside the step and then
applies the loader's erase boxes in normalised space (timm's order: erasing after Normalize,
mixup in the task after both). The eval loaders keep float32 clips (``mvd.engine.evaluate`` and
``mvd.engine.detect_eval`` feed them to the model as they are).
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.distributed as dist

from dali_pipelines.normalize import Normalize, erase_
from mvd.config import Config
from mvd.engine.distributed import DistInfo, all_gather_objects

log = logging.getLogger("mvd.train")


def loader_device(cfg: Config, info: DistInfo) -> str:
    if cfg.data.device != "auto":
        return cfg.data.device
    return "gpu" if info.device.type == "cuda" else "cpu"


def failure_group(info: DistInfo):
    """The process group over which a loader's ranks agree to stop on decode failures: None
    (the default group) when it is gloo or there is none; else a new gloo group, so the
    per-batch vote is a host all-reduce and never syncs with the GPU. A collective: every rank
    calls it, in the same order."""
    if not info.distributed or dist.get_backend() == "gloo":
        return None
    return dist.new_group(backend="gloo")


def loader_options(cfg: Config, info: DistInfo) -> dict:
    """The keywords every loader takes from the data config and this process's rank: where it
    decodes, its share of the samples, the clip geometry, the decode pipelines and the CPU split
    (``dali_pipelines.budget.cpu_budget``: this process's training step beside). Each task's
    loader function (in ``mvd.engine.tasks``) adds its own and calls the loader. Each rank reads
    its own share of the samples.

    Decode failures past data.max_failure_fraction stop every rank at the same step: the
    training loader votes over a gloo group (:func:`train_loader_options`, one per trainer); an
    eval loader, built at every validation, over the default group (on NCCL a small device
    tensor per eval batch, rather than a new group per validation)."""
    d = cfg.data
    return dict(device=loader_device(cfg, info), shard_id=info.rank,
                num_shards=info.world_size, num_frames=d.num_frames,
                sampling_rate=d.sampling_rate, input_size=d.input_size,
                gpu_decoders=d.gpu_decoders or None, cpu_decode_share=d.cpu_decode_share,
                max_failure_fraction=d.max_failure_fraction,
                step_device=info.device.type, torch_threads=cfg.dist.cpu_threads,
                num_threads=d.dali_threads or None,
                num_workers=None if d.reader_workers < 0 else d.reader_workers)


def train_loader_options(cfg: Config, info: DistInfo) -> dict:
    """:func:`loader_options` of a training loader: seeded, uint8 clips (normalised by
    :class:`ModelInputs` in the step), its failure vote over :func:`failure_group`. A collective
    (the group): every rank calls it, in the same order."""
    return dict(loader_options(cfg, info), seed=cfg.seed, normalize=False,
                process_group=failure_group(info))


class ModelInputs:
    """A loader batch as the task's loss takes it, on ``device``: uint8 ``video`` (and
    ``teacher_video``) normalised with one fused op each; the host ``erase_boxes`` (finetune)
    then erased in normalised space with noise from the device's default generator (its state
    is in the checkpoints, so a resumed run draws the same noise). Float batches pass as they
    are. Reads nothing back from the device: no host sync."""

    def __init__(self, device: torch.device):
        self.normalize = Normalize(device)

    def __call__(self, batch: dict) -> dict:
        video = batch["video"]
        if video.dtype != torch.uint8:
            return batch
        out = dict(batch)
        out["video"] = self.normalize(video)  # (B, 3, T, S, S) float32
        teacher = batch.get("teacher_video")
        if teacher is not None:
            out["teacher_video"] = out["video"] if teacher is video else self.normalize(teacher)
        boxes = out.pop("erase_boxes", None)
        if boxes is not None:
            erase_(out["video"], np.asarray(boxes))
        return out


def log_cpu_budgets(loader, info: DistInfo) -> None:
    """Log what each rank's loader got of the node's cores (rank 0 logs every rank's line; a
    collective when distributed). Loaders without a budget (test stand-ins) log nothing."""
    budget = getattr(loader, "budget", None)
    lines = all_gather_objects(None if budget is None else budget.describe())
    if info.is_main:
        for rank, line in enumerate(lines):
            if line is not None:
                log.info("rank %d CPU budget: %s", rank, line)
