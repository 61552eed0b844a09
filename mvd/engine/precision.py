"""The one owner of numeric precision: ``train.precision`` decides, here and nowhere else, the
autocast of the student and the teachers, the teachers' weight dtype, the FSDP
``MixedPrecisionPolicy`` and the grad scaler. Everything else asks a :class:`Precision`.

- bf16 (the default on GPU): bf16 autocast; FSDP gathers bf16 parameters and reduces gradients
  in fp32; no scaler.
- Teacher weights (``train.teacher_weights``): fp32 by default, as the MVD release keeps them
  under its fp16 autocast: the matmuls still run in the autocast dtype, but the residual stream,
  the LayerNorms and the last block's unnormalised features (the targets, with their large
  outlier channels) stay fp32. ``autocast`` casts the weights to bf16 / fp16 instead, which
  halves the teachers' weight reads and keeps the whole forward low-precision (its GPU speed-up
  is not measured yet), and its targets carry the rounding of every block: about twice the
  error at 12-24 blocks (README, "Teacher precision").
- fp16: fp16 autocast with a ``GradScaler``. Under DDP every rank sees the same all-reduced
  gradients, so the scaler's inf check agrees across ranks. Under FSDP each rank holds a shard and
  torch's plain scaler would decide per rank, so fp16 + FSDP is refused (use bf16).
- fp32 (the default on CPU): no autocast, no scaler, fp32 everywhere.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from mvd.config import ConfigError

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
TEACHER_WEIGHTS = ("fp32", "autocast")


def resolve_precision(precision: str, device_type: str) -> str:
    """``train.precision`` -> 'bf16' | 'fp16' | 'fp32' ('auto' = bf16 on GPU, fp32 on CPU)."""
    if precision == "auto":
        return "bf16" if device_type == "cuda" else "fp32"
    if precision not in _DTYPES:
        raise ConfigError(f"config key 'train.precision' is {precision!r}; it must be one of: "
                          f"auto, bf16, fp16, fp32")
    return precision


@dataclass(frozen=True)
class Precision:
    """What ``train.precision`` means on one device type (and with or without FSDP)."""

    name: str  # 'bf16' | 'fp16' | 'fp32'
    device_type: str  # 'cuda' | 'cpu'
    teacher_weights: str = "fp32"  # 'fp32' | 'autocast' (train.teacher_weights)

    @property
    def dtype(self) -> torch.dtype:
        """The autocast dtype (fp32 = no autocast)."""
        return _DTYPES[self.name]

    @property
    def teacher_dtype(self) -> torch.dtype:
        """Frozen teachers' weights: fp32, or the autocast dtype with teacher_weights='autocast'."""
        return self.dtype if self.teacher_weights == "autocast" else torch.float32

    def autocast(self) -> contextlib.AbstractContextManager:
        """A fresh autocast context for the student, the teachers and evaluation."""
        if self.name == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def fsdp_policy(self):
        """FSDP2's MixedPrecisionPolicy: low-precision parameter all-gathers, fp32 reductions."""
        from torch.distributed.fsdp import MixedPrecisionPolicy

        if self.name == "fp32":
            return MixedPrecisionPolicy()
        return MixedPrecisionPolicy(param_dtype=self.dtype, reduce_dtype=torch.float32)

    def grad_scaler(self) -> torch.amp.GradScaler | None:
        return torch.amp.GradScaler(self.device_type) if self.name == "fp16" else None

    def describe(self, fsdp: bool, teachers: bool = True) -> str:
        parts = ["no autocast" if self.name == "fp32" else f"{self.name} autocast"]
        if teachers:
            parts.append(f"teacher weights {str(self.teacher_dtype).removeprefix('torch.')}")
        parts.append("grad scaler" if self.name == "fp16" else "no grad scaler")
        if fsdp:
            parts.append("FSDP params fp32, reduce fp32" if self.name == "fp32" else
                         f"FSDP params {self.name}, reduce fp32")
        return f"{self.name}: " + ", ".join(parts)


def plan_precision(precision: str, device_type: str, *, fsdp: bool = False,
                   teacher_weights: str = "fp32") -> Precision:
    """The precision plan of a run; raises ConfigError for a combination that cannot train."""
    name = resolve_precision(precision, device_type)
    if teacher_weights not in TEACHER_WEIGHTS:
        raise ConfigError(f"config key 'train.teacher_weights' is {teacher_weights!r}; it must be "
                          f"one of: {', '.join(TEACHER_WEIGHTS)}")
    if name == "fp16" and fsdp:
        raise ConfigError("config keys 'train.precision' and 'dist.fsdp': fp16 under FSDP needs a "
                          "sharded grad scaler whose inf check agrees across ranks, which this "
                          "trainer does not have; use train.precision=bf16 (or auto) with FSDP, "
                          "or dist.fsdp=false for fp16")
    return Precision(name, device_type, teacher_weights)
