"""Patch embeddings: Conv3d tubelets for clips, Conv2d patches for MAE frames (kernel = stride)."""

from __future__ import annotations

import torch
from torch import nn


class PatchEmbed(nn.Module):
    """Clip (B, C, T, H, W) -> tokens (B, T/tubelet * H/p * W/p, D) in raster (t, h, w) order.

    With ``num_frames=None`` it embeds single images instead: (B, C, H, W) -> (B, H/p * W/p, D).
    The convolution is ``proj`` in both cases, as in the VideoMAE / MAE releases.
    """

    def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int,
                 num_frames: int | None = None, tubelet_size: int = 2):
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not divisible by patch_size {patch_size}")
        if num_frames is not None and num_frames % tubelet_size:
            raise ValueError(f"num_frames {num_frames} is not divisible by tubelet_size {tubelet_size}")
        self.img_size, self.patch_size, self.in_chans = img_size, patch_size, in_chans
        self.num_frames, self.tubelet_size = num_frames, tubelet_size
        side = img_size // patch_size
        if num_frames is None:
            self.grid = (side, side)
            self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        else:
            self.grid = (num_frames // tubelet_size, side, side)
            kernel = (tubelet_size, patch_size, patch_size)
            self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=kernel, stride=kernel)
        self.num_patches = 1
        for g in self.grid:
            self.num_patches *= g

    def check_input(self, x: torch.Tensor) -> None:
        """Raise a clear error unless x is (B, C, T, H, W) (or (B, C, H, W)) of the built size."""
        video = self.num_frames is not None
        layout = "(B, C, T, H, W)" if video else "(B, C, H, W)"
        if x.dim() != (5 if video else 4):
            raise ValueError(f"expected input {layout}, got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_chans:
            raise ValueError(f"expected {self.in_chans} channels at dim 1 of {layout}, got shape {tuple(x.shape)}")
        h, w = x.shape[-2:]
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"frame size {h}x{w} is not divisible by patch_size {self.patch_size}")
        if video and x.shape[2] % self.tubelet_size:
            raise ValueError(f"{x.shape[2]} frames is not divisible by tubelet_size {self.tubelet_size}")
        expected = (self.num_frames, self.img_size, self.img_size) if video else (self.img_size, self.img_size)
        if tuple(x.shape[2:]) != expected:
            raise ValueError(
                f"model was built for {'x'.join(map(str, expected))} input, got {tuple(x.shape)}; "
                "create it with matching img_size / num_frames (position tables are rebuilt on load)"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, N, D)
