"""The frozen teachers: MAE image ViT and VideoMAE video ViT, both giving last-block tokens."""

from __future__ import annotations

import torch
from torch import nn

from mvd.models.vit import ViTEncoder


def residual_dtype(teacher: ViTEncoder) -> torch.dtype:
    """The teacher's residual stream runs in its weights' dtype: fp32 weights under autocast keep
    it fp32 (the matmuls still run in the autocast dtype), so the unnormalised last-block targets
    carry no low-precision rounding of the sum; bf16 weights give a bf16 stream. The release's
    MAE teacher adds its fp32 table to the fp16 patch tokens, which promotes the stream to fp32;
    its video teacher casts the table to fp16 (``type_as``) and runs an fp16 stream. Under bf16,
    8x coarser than fp16, both of ours stay fp32 (``train.teacher_weights``)."""
    return teacher.patch_embed.proj.weight.dtype


class MAETeacher(ViTEncoder):
    """``teacher(frames (B, 3, H, W)) -> (B, L, D)``: patch tokens of the last block, no final norm,
    cls dropped; L = (H/p)^2 in raster (h, w) order. 2D sincos table with a cls slot, as MAE.

    ``num_frames`` / ``tubelet_size`` are accepted for a uniform constructor and ignored: the image
    teacher sees single frames (the distillation step picks every tubelet-th frame).
    """

    def __init__(self, *, img_size: int = 224, patch_size: int = 16, num_frames: int | None = None,
                 tubelet_size: int = 2, embed_dim: int = 768, depth: int = 12, num_heads: int = 12,
                 mlp_ratio: float = 4.0, drop_path_rate: float = 0.0, in_chans: int = 3,
                 grad_checkpointing: bool = False):
        super().__init__(img_size=img_size, patch_size=patch_size, num_frames=None, tubelet_size=tubelet_size,
                         embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio,
                         drop_path_rate=drop_path_rate, pos_kind="sincos_2d", cls_token=True, final_norm=False,
                         in_chans=in_chans, grad_checkpointing=grad_checkpointing)
        self.init_weights("xavier", patch_init="xavier")  # as MAE (weights are loaded anyway)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = self.prepend_cls(self.embed(frames, residual_dtype(self)))  # (B, 1 + L, D)
        return self.forward_blocks(x)[:, 1:]  # (B, L, D)


class VideoMAETeacher(ViTEncoder):
    """``teacher(video (B, 3, T, H, W)) -> (B, N, D)``: last-block tokens, no final norm, raster
    (t, h, w) order; VideoMAE's 1D sinusoid table over the N flattened positions."""

    def __init__(self, *, img_size: int = 224, patch_size: int = 16, num_frames: int = 16, tubelet_size: int = 2,
                 embed_dim: int = 768, depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0,
                 drop_path_rate: float = 0.0, in_chans: int = 3, grad_checkpointing: bool = False):
        super().__init__(img_size=img_size, patch_size=patch_size, num_frames=num_frames, tubelet_size=tubelet_size,
                         embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio,
                         drop_path_rate=drop_path_rate, pos_kind="sinusoid_1d", final_norm=False,
                         in_chans=in_chans, grad_checkpointing=grad_checkpointing)
        self.init_weights("xavier")

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.forward_blocks(self.embed(video, residual_dtype(self)))  # (B, N, D)


class Frozen(nn.Module):
    """A teacher that stays frozen: no grads, and ``train()`` cannot take it out of eval mode.

    The wrapped model is ``.module``; calling the wrapper calls it. State dicts carry a
    ``module.`` prefix, which ``load_checkpoint`` strips.
    """

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module.requires_grad_(False).eval()

    def train(self, mode: bool = True) -> Frozen:
        return super().train(False)

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)


def freeze(model: nn.Module) -> Frozen:
    """Wrap a teacher so it is frozen for good (see ``Frozen``)."""
    return model if isinstance(model, Frozen) else Frozen(model)


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a ``Frozen`` wrapper (or the model itself)."""
    return model.module if isinstance(model, Frozen) else model
