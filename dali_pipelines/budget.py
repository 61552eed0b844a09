"""What one training process may use for its data: NVDEC engines and CPU cores.

Plain Python (no DALI): the trainer imports it to set torch's threads and to log the split.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

# NVDEC engines per GPU, from NVIDIA's "Video Encode and Decode GPU Support Matrix" (Video Codec
# SDK, https://developer.nvidia.com/video-encode-and-decode-gpu-support-matrix-new): H100 and
# H200 (and GH200) 7, A100 5, L4 4. DALI issue #6387: one video pipeline kept 1 of 7 engines
# busy; parallel pipelines reached ~89 % of all of them.
NVDEC_ENGINES = ((r"\bG?H(100|200)\b", 7), (r"\bA100\b", 5), (r"\bL4\b", 4))
NVDEC_UNKNOWN = 2  # a GPU not in the table


def nvdec_engines(device_name: str) -> int:
    """The NVDEC engine count of a GPU by its name (torch.cuda.get_device_name), 2 when the
    name is not in the table."""
    for pattern, engines in NVDEC_ENGINES:
        if re.search(pattern, device_name):
            return engines
    return NVDEC_UNKNOWN


@dataclass(frozen=True)
class CpuBudget:
    """One process's share of the node's CPU cores and how it is spent."""

    cores: int  # usable cores (os.sched_getaffinity) / LOCAL_WORLD_SIZE, at least 1
    local_world_size: int
    torch_threads: int  # the training step's share (0: no step in this process)
    dali_threads: int
    reader_workers: int  # reader worker processes (the decoders on the PyAV path)

    @property
    def asked(self) -> int:
        """Cores asked for: torch threads + DALI threads + reader workers."""
        return self.torch_threads + self.dali_threads + self.reader_workers

    def describe(self) -> str:
        return (f"{self.cores} of the node's cores for this process (usable / {self.local_world_size}"
                f" local processes): {self.torch_threads} torch threads, {self.dali_threads} DALI "
                f"threads, {self.reader_workers} reader workers")


def node_cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0))


def cpu_budget(*, loader_device: str = "cpu", decoder: str = "dali", step_device: str | None = None,
               torch_threads: int = 0, dali_threads: int = 0, reader_workers: int = -1,
               local_world_size: int | None = None, cores: int | None = None) -> CpuBudget:
    """The split of this process's cores between the training step and its loader: the one
    place that decides it (mvd's torch threads, the loaders' DALI threads and reader workers).

    The process's cores are the usable cores (`cores`, default os.sched_getaffinity) over
    `local_world_size` (default LOCAL_WORLD_SIZE, which torchrun sets), at least 1. A training
    step on "cpu" takes half of them (`torch_threads`, 0 = auto; one thread made a 2-core demo
    fine-tune 17 % faster than two), on "cuda" one (the thread that launches its kernels); None
    means no step in this process. The loader takes the rest:
    - DALI decodes on the CPU: every core as a DALI thread, no reader workers (workers would only
      compete with the decoding threads for the cores);
    - DALI decodes on the GPU: up to two reader workers read the bytes off the training thread;
    - PyAV decodes: one DALI thread (it only forwards frames), the other cores as reader workers
      (they decode), 0 of them when there is no other core (the reads then run in this process).
    So the asks add up to the process's cores (a floor of one thread each aside); explicit
    `dali_threads` (> 0) and `reader_workers` (>= 0) win.
    """
    lws = local_world_size or int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    share = max(1, (cores or node_cores()) // max(1, lws))
    if step_device is None:
        torch_n = 0
    elif step_device == "cpu":
        torch_n = torch_threads or max(1, share // 2)
    else:
        torch_n = torch_threads or 1
    left = max(1, share - torch_n)
    if decoder == "pyav":
        workers, threads = left - 1, 1
    elif loader_device == "gpu":
        workers = min(2, left // 2)
        threads = left - workers
    else:
        workers, threads = 0, left
    return CpuBudget(
        cores=share, local_world_size=lws, torch_threads=torch_n,
        dali_threads=dali_threads if dali_threads > 0 else max(1, threads),
        reader_workers=reader_workers if reader_workers >= 0 else workers,
    )
