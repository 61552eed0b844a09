"""Analytical forward FLOPs (matmuls and convolutions, 2 per multiply-add; norms, softmax and
activations are left out, as torch's FlopCounterMode does). Per clip unless ``batch`` is given."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.utils import flop_counter

from mvd.models.vit import MaskedDecoder, ViTEncoder


def linear_flops(n: int, d_in: int, d_out: int) -> int:
    return 2 * n * d_in * d_out


def block_flops(n: int, dim: int, mlp_ratio: float = 4.0) -> int:
    """One pre-norm block over n tokens: qkv, QK^T, AV, proj, MLP."""
    hidden = int(dim * mlp_ratio)
    return (linear_flops(n, dim, 3 * dim) + 2 * 2 * n * n * dim + linear_flops(n, dim, dim)
            + linear_flops(n, dim, hidden) + linear_flops(n, hidden, dim))


def patch_embed_flops(enc: ViTEncoder) -> int:
    pe = enc.patch_embed
    return linear_flops(pe.num_patches, pe.proj.weight[0].numel(), enc.embed_dim)


def encoder_flops(enc: ViTEncoder, n_tokens: int | None = None) -> int:
    """Patch embedding of every patch + the blocks over n_tokens (default all, plus any cls token)."""
    n = enc.num_patches + enc.num_prefix_tokens if n_tokens is None else n_tokens
    return patch_embed_flops(enc) + enc.depth * block_flops(n, enc.embed_dim, enc.mlp_ratio)


def decoder_flops(dec: MaskedDecoder, in_dim: int, n_visible: int, n_masked: int, mlp_ratio: float = 4.0) -> int:
    n_in = dec.num_prefix_tokens + n_visible
    n = n_in + n_masked
    return (linear_flops(n_in, in_dim, dec.embed_dim) + dec.depth * block_flops(n, dec.embed_dim, mlp_ratio)
            + linear_flops(n_masked, dec.embed_dim, dec.out_dim))


def student_flops(student: nn.Module, num_masked: int) -> int:
    """Forward FLOPs of one clip through an MVDStudent with ``num_masked`` masked tokens."""
    n_vis = student.num_patches - num_masked
    total = encoder_flops(student, n_vis)
    for dec in (student.decoder_img, student.decoder_vid):
        if dec is not None:
            total += decoder_flops(dec, student.embed_dim, n_vis, num_masked, student.mlp_ratio)
    return total


def teacher_flops(teacher: nn.Module, frames_per_clip: int = 1) -> int:
    """Forward FLOPs of one clip through a teacher (an image teacher runs on ``frames_per_clip`` frames)."""
    teacher = getattr(teacher, "module", teacher)  # Frozen wrapper
    return frames_per_clip * encoder_flops(teacher)


def mvd_step_flops(student: nn.Module, image_teacher: nn.Module | None, video_teacher: nn.Module | None,
                   mask_ratio: float = 0.9, batch: int = 1) -> dict[str, int]:
    """FLOPs of one MVD training step: student forward, backward (taken as 2x forward), teachers.

    ``mask_ratio`` is applied as tube masking (per spatial slice, floored), as the recipe does.
    """
    t, h, w = student.grid
    num_masked = t * math.floor(mask_ratio * h * w + 1e-9)
    fwd = student_flops(student, num_masked)
    teachers = 0
    if image_teacher is not None:
        teachers += teacher_flops(image_teacher, frames_per_clip=t)
    if video_teacher is not None:
        teachers += teacher_flops(video_teacher)
    return {"student_forward": batch * fwd, "student_backward": batch * 2 * fwd,
            "teachers_forward": batch * teachers, "total": batch * (3 * fwd + teachers)}


def _attention_ops() -> dict:
    """FLOP formulas for the fused SDPA kernels torch's counter does not know (it covers the CUDA
    flash / efficient / cuDNN kernels): the CPU flash kernel, forward and backward, which torch
    >= 2.14 selects for ``F.scaled_dot_product_attention`` on CPU. Same formulas as the CUDA ones."""
    ops = {}
    fwd = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    bwd = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)
    if fwd is not None:
        ops[fwd] = lambda q, k, v, *args, out_shape=None, **kw: flop_counter.sdpa_flop_count(q, k, v)
    if bwd is not None:
        ops[bwd] = lambda g, q, k, v, *args, out_shape=None, **kw: \
            flop_counter.sdpa_backward_flop_count(g, q, k, v)
    return ops


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs torch's FlopCounterMode counts while ``fn()`` runs, with the fused CPU attention
    kernels counted too (see :func:`_attention_ops`); the measured twin of the analytical count."""
    with flop_counter.FlopCounterMode(display=False, custom_mapping=_attention_ops()) as counter:
        fn()
    return counter.get_total_flops()
