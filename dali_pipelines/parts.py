"""The parts of a loader, built by plain functions before the loader exists and passed to it:
the shard table checked, the decoder chosen, the CPU split, the decode pipelines' plans and their
runner, the failure log and the batch builder (`build_parts`).

A CPU loader (`device="cpu"`) never touches torch.cuda here: its batches, its failure vote and
its pipelines stay on the host (a vote over an NCCL-only group asks for the device only when it
runs, see `failures.FailureLog`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
import torch

from dali_pipelines import sampling
from dali_pipelines.batches import BatchBuilder
from dali_pipelines.budget import CpuBudget, cpu_budget, nvdec_engines
from dali_pipelines.failures import FailureLog
from dali_pipelines.manifest import DALI_CODECS, SampleTable, ShardDir, check_gpu_decodable
from dali_pipelines.options import LoaderOptions
from dali_pipelines.reader import ClipReader
from dali_pipelines.reader_config import ReaderConfig
from dali_pipelines.runner import PipelineRunner, plan_pipelines
from video_caps.decoders import gpu_target


@dataclass(frozen=True)
class LoaderParts:
    """What a loader is made of (see `build_parts`)."""

    shards: ShardDir
    table: SampleTable  # the table the readers sample from (DetectLoader's carries keyframes)
    cfg: ReaderConfig  # with the decoder chosen
    options: LoaderOptions
    batch_size: int  # as the loader counts it (EvalLoader: views)
    steps: int  # batches per epoch on this rank
    device: torch.device
    budget: CpuBudget
    runner: PipelineRunner
    failures: FailureLog
    builder: BatchBuilder
    planner: ClipReader  # the epoch plans (cached), and the reader's draws for a loader's extras


def build_parts(shards: ShardDir, table: SampleTable, cfg: ReaderConfig, options: LoaderOptions,
                batch_size: int, *, process_group=None, teacher_input_size: int | None = None,
                views: Callable | None = None) -> LoaderParts:
    """Check the table against `cfg`, choose the decoder, split the CPU, plan and make (not yet
    build) the pipelines. `teacher_input_size`: a second view size (PretrainLoader); `views`:
    how the torch path cuts a sample's views (default `batches.roi_views`; EvalLoader's crops)."""
    o = options
    if o.device == "gpu" and not torch.cuda.is_available():
        raise ValueError("device='gpu' but torch sees no CUDA device; use device='cpu'")
    if cfg.sampling == "keyframe" and table.keyframe is None:
        raise ValueError(f"{shards.path}: sampling='keyframe' needs the AVA keyframes of the "
                         f"samples (DetectLoader reads them)")
    check_videos(shards)
    device = torch.device("cuda", torch.cuda.current_device()) if o.device == "gpu" \
        else torch.device("cpu")
    cfg = replace(cfg, decode=choose_decoder(shards, o.device, o.decoder))
    steps = sampling.steps_per_epoch(cfg.num_items(len(table)), cfg.batch_size, cfg.num_shards,
                                     cfg.drop_last)
    if steps == 0:
        raise ValueError(
            f"{shards.path}: {len(table)} samples give no full batch of {cfg.batch_size} per rank "
            f"over {cfg.num_shards} ranks; lower batch_size or set drop_last=False"
        )
    # the samples this rank reads per epoch: the base of max_failure_fraction
    failures = FailureLog(table, cfg.split, o.max_failure_fraction, len(table) / cfg.num_shards,
                          group=process_group, vote_device=device if o.device == "gpu" else None,
                          codecs=shards.codecs)
    pipelines = o.gpu_decoders or (nvdec_engines(torch.cuda.get_device_name(device))
                                   if o.device == "gpu" else 1)  # NVDEC engines; one on CPU
    host_decode = choose_decoder(shards, "cpu", "auto")
    pyav = cfg.decode == "pyav" or (o.cpu_decode_share > 0 and host_decode == "pyav")
    budget = cpu_budget(loader_device=o.device, decoder="pyav" if pyav else "dali",
                        step_device=o.step_device, torch_threads=o.torch_threads,
                        dali_threads=o.dali_threads, reader_workers=o.reader_workers)
    plans = plan_pipelines(
        cfg.batch_size, device_pipelines=pipelines, device_decode=cfg.decode,
        device_decode_on="gpu" if o.device == "gpu" and cfg.decode == "dali" else "cpu",
        host_share=o.cpu_decode_share, host_decode=host_decode,
        dali_threads=budget.dali_threads, reader_workers=budget.reader_workers,
    )
    # who crops and resizes the views: DALI on GPU; torch on CPU (see dali_pipelines.tensors)
    resize = "dali" if o.device == "gpu" else "torch"
    runner = PipelineRunner(
        cfg, table, steps, plans, device=o.device,
        device_id=device.index if o.device == "gpu" else None, input_size=cfg.input_size,
        teacher_input_size=teacher_input_size, prefetch=o.prefetch, normalize=o.normalize,
        resize=resize,
    )
    builder = BatchBuilder(cfg, table, device, resize=resize, normalize=o.normalize,
                           teacher_input_size=teacher_input_size, views=views)
    planner = ClipReader(cfg, table, 0, 0, steps)
    return LoaderParts(shards, table, cfg, o, batch_size, steps, device, budget, runner,
                       failures, builder, planner)


def check_videos(shards: ShardDir) -> None:
    """Samples whose recorded frame count or size makes any clip impossible."""
    t = shards.table
    bad = np.nonzero((t.num_frames < 1) | (t.width < 1) | (t.height < 1))[0]
    if len(bad):
        raise ValueError(
            f"{shards.path}: samples with no frames or zero size in their .meta: "
            f"{', '.join(t.where(i) for i in bad[:10])}"
        )


def choose_decoder(shards: ShardDir, device: str, decoder: str) -> str:
    """"dali" or "pyav" for `decoder` ("auto" | "dali" | "pyav") on `device`, given the codecs
    the manifest counts (DALI_CODECS); "dali" for a codec DALI cannot decode there is an error,
    and so is DALI on the GPU for a folder NVDEC cannot read every sample of (before step one)."""
    unsupported = {c for c, n in shards.codecs.items() if n and c not in DALI_CODECS[device]}
    if decoder == "dali" and unsupported:
        raise ValueError(
            f"{shards.path}: codecs {sorted(unsupported)} cannot be decoded by DALI on {device} "
            f"(it decodes {sorted(DALI_CODECS[device])}); use decoder='auto' or 'pyav' for the "
            f"PyAV fallback"
        )
    chosen = ("pyav" if unsupported else "dali") if decoder == "auto" else decoder
    if device == "gpu" and chosen == "dali":  # NVDEC's limits, checked before the first step
        check_gpu_decodable(shards, gpu_target(torch.cuda.get_device_capability()))
    return chosen
