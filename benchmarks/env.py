"""What a benchmark ran on: package versions, device name, CPU count, date.

Every report carries this block so that a figure can always be traced to the machine and the
software that produced it.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import sys
from importlib import metadata

# Distribution names whose versions go into every report. DALI ships under a CUDA-specific
# distribution name, so it is matched by prefix.
PACKAGES = ("torch", "timm", "numpy", "av", "webdataset", "matplotlib")
DALI_PREFIX = "nvidia-dali"


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages the suite measures (None when not installed)."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    dali = sorted(
        (dist.metadata["Name"], dist.version)
        for dist in metadata.distributions()
        if (dist.metadata["Name"] or "").lower().startswith(DALI_PREFIX)
    )
    versions["nvidia-dali"] = f"{dali[0][0]} {dali[0][1]}" if dali else None
    return versions


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo, or what `platform` knows elsewhere."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def usable_cpus() -> int:
    """CPUs this process may run on (the affinity mask, which containers restrict)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages: other work on the machine skews CPU figures."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def gpu_info() -> dict | None:
    """Name, memory and CUDA version of the first visible GPU, or None without one."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    return {
        "name": props.name,
        "memory_gib": round(props.total_memory / 2**30, 1),
        "count": torch.cuda.device_count(),
        "cuda": torch.version.cuda,
        "capability": f"{props.major}.{props.minor}",
    }


# Dense bf16 tensor-core peaks from the vendor's data sheets, in TFLOP/s, matched against
# torch.cuda.get_device_name() in order (the first substring found wins).
BF16_PEAK_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),  # SXM ("NVIDIA H100 80GB HBM3")
    ("GH200", 989.0),
    ("H200", 989.0),
    ("A100", 312.0),
    ("L40S", 362.0),
)


def bf16_peak_tflops(gpu_name: str) -> float | None:
    """The dense bf16 peak of a GPU by name, or None when it is not in the table."""
    for key, peak in BF16_PEAK_TFLOPS:
        if key in gpu_name:
            return peak
    return None


def _torch_threads() -> int | None:
    try:
        import torch
    except ImportError:
        return None
    return torch.get_num_threads()


def collect(device: str) -> dict:
    """The environment block of a report. `device` is the suite's --device ("cpu" or "gpu")."""
    gpu = gpu_info()
    cpu = cpu_model()
    return {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "device": device,
        "device_name": gpu["name"] if device == "gpu" and gpu else cpu,
        "cpu_model": cpu,
        "cpu_count": usable_cpus(),
        "cpu_count_total": os.cpu_count(),
        "load_average_at_start": load_average(),
        "torch_threads": _torch_threads(),
        "gpu": gpu,
        "platform": platform.platform(),
        "python_executable": sys.executable,
        "packages": package_versions(),
    }
