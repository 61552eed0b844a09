"""What the dali_pipelines loaders take from the config and the process's rank (each task module
builds its own loaders from these options), and turning their batches into the models' inputs on
the device.

Each rank reads its own share of the samples. Decode failures past data.max_failure_fraction
stop every rank at the same step: a training loader votes over a gloo group
(:func:`failure_group`, one per trainer); an eval loader, built at every validation, over the
default group (on NCCL a small device tensor per eval batch, rather than a new group per
validation).

The training loaders yield uint8 clips (``normalize=False``: a quarter of the bytes of float32
to copy and move); :class:`ModelInputs` normalises them on the device inside the step and then
applies the loader's erase boxes in normalised space (timm's order: erasing after Normalize,
mixup in the task after both). The eval loaders keep float32 clips (``mvd.engine.evaluate`` and
``mvd.engine.detect_eval`` feed them to the model as they are).
"""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
import torch
import torch.distributed as dist

from dali_pipelines.normalize import Normalize, erase_
from dali_pipelines.options import LoaderOptions
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


def loader_options(cfg: Config, info: DistInfo, patch: tuple[int, int] = (16, 2)) -> LoaderOptions:
    """The config's ``data``, ``eval`` and ``detect`` fields onto the loaders' one options
    object, field for field (the same names), with this rank and the step beside the loader;
    ``patch`` = (patch_size, tubelet_size) of the trained model (the pretrain mask's grid)."""
    d, e, x = cfg.data, cfg.eval, cfg.detect
    return LoaderOptions(
        device=loader_device(cfg, info), shard_id=info.rank, num_shards=info.world_size,
        num_frames=d.num_frames, sampling_rate=d.sampling_rate, sampling=d.sampling,
        input_size=d.input_size, teacher_input_size=d.teacher_input_size,
        mask_type=d.mask_type, mask_ratio=d.mask_ratio, patch_size=patch[0],
        tubelet_size=patch[1], repeated_aug=d.repeated_aug, flip=d.flip,
        rand_augment=tuple(d.rand_augment), erase_prob=d.erase_prob,
        num_clips=e.num_clips, num_crops=e.num_crops,
        min_crop=x.min_crop, min_visible=x.min_visible, jitter=tuple(x.jitter),
        eval_boxes=x.eval_boxes, proposal_min_score=x.proposal_min_score,
        test_extend=tuple(x.test_extend),
        gpu_decoders=d.gpu_decoders, cpu_decode_share=d.cpu_decode_share,
        max_failure_fraction=d.max_failure_fraction, dali_threads=d.dali_threads,
        reader_workers=d.reader_workers,
        # the CPU split (dali_pipelines.budget.cpu_budget): this process's step beside
        step_device=info.device.type, torch_threads=cfg.dist.cpu_threads)


def train_options(cfg: Config, info: DistInfo, patch: tuple[int, int] = (16, 2)) -> LoaderOptions:
    """:func:`loader_options` of a training loader: seeded, uint8 clips (normalised by
    :class:`ModelInputs` in the step), then ``data.loader_options`` by option name."""
    return LoaderOptions.of(replace(loader_options(cfg, info, patch), seed=cfg.seed, normalize=False),
                            cfg.data.loader_options, where="data.loader_options")


def eval_options(cfg: Config, info: DistInfo) -> LoaderOptions:
    """:func:`loader_options` of an eval loader (float clips, fixed views), then
    ``eval.loader_options`` by option name."""
    return LoaderOptions.of(loader_options(cfg, info), cfg.eval.loader_options,
                            where="eval.loader_options")


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
