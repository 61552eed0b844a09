"""Fixed (never learned) position tables and the one module that adds them.

Three tables, each reproducing its release bit for bit (computed in float64, stored in float32):

- ``sincos_3d``  (t, h, w) grid, MVD student / fine-tuning model: D/4 temporal channels (1D sincos
  over t) then 3D/4 spatial channels (2D sincos over (h, w)), concatenated [temporal, spatial].
- ``sincos_2d``  (h, w) grid, MAE: the first D/2 channels encode the column (w), the last D/2 the
  row (h) (MAE's ``meshgrid(w, h)`` convention); optional all-zero row in front for the cls token.
- ``sinusoid_1d`` (n,) flattened positions, VideoMAE: interleaved sin (even channels) / cos (odd).

Tables live in non-persistent buffers: they are a function of the grid, so state dicts never
carry them and a model built at another size simply rebuilds its own.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

KINDS = ("sincos_3d", "sincos_2d", "sinusoid_1d")


def sincos_1d(pos: torch.Tensor, dim: int) -> torch.Tensor:
    """MAE's 1D sincos: (M,) positions -> (M, dim) = [sin(pos * w), cos(pos * w)], w_i = 1e4^(-2i/dim)."""
    if dim % 2:
        raise ValueError(f"sincos dim must be even, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0))
    out = pos.to(torch.float64).reshape(-1, 1) * omega  # (M, dim/2)
    return torch.cat([out.sin(), out.cos()], dim=1)


def sincos_2d_table(grid_h: int, grid_w: int, dim: int, cls_token: bool = False) -> torch.Tensor:
    """(grid_h*grid_w [+1], dim) float32, rows in raster (h, w) order; row 0 zeros if cls_token."""
    hh, ww = torch.meshgrid(torch.arange(grid_h), torch.arange(grid_w), indexing="ij")
    table = torch.cat([sincos_1d(ww, dim // 2), sincos_1d(hh, dim // 2)], dim=1)
    if cls_token:
        table = torch.cat([torch.zeros(1, dim, dtype=table.dtype), table], dim=0)
    return table.float()


def sincos_3d_table(grid_t: int, grid_h: int, grid_w: int, dim: int) -> torch.Tensor:
    """(grid_t*grid_h*grid_w, dim) float32 in raster (t, h, w) order: [temporal D/4 | spatial 3D/4]."""
    if dim % 16:
        raise ValueError(f"3D sincos needs embed dim divisible by 16, got {dim}")
    d_t = dim // 4
    temporal = sincos_1d(torch.arange(grid_t), d_t)  # (T, D/4)
    spatial = sincos_2d_table(grid_h, grid_w, dim - d_t).double()  # (H*W, 3D/4)
    n_s = grid_h * grid_w
    table = torch.cat(
        [temporal[:, None].expand(grid_t, n_s, d_t), spatial[None].expand(grid_t, n_s, dim - d_t)],
        dim=-1,
    )
    return table.reshape(grid_t * n_s, dim).float()


def sinusoid_1d_table(n: int, dim: int) -> torch.Tensor:
    """VideoMAE's table: (n, dim) float32, angle(p, j) = p / 1e4^(2*(j//2)/dim), sin on even j, cos on odd."""
    j = torch.arange(dim, dtype=torch.float64)
    angle = torch.arange(n, dtype=torch.float64)[:, None] / 10000 ** (2 * torch.div(j, 2, rounding_mode="floor") / dim)
    table = torch.where(j.long() % 2 == 0, angle.sin(), angle.cos())
    return table.float()


def build_table(kind: str, grid: tuple[int, ...], dim: int, cls_token: bool = False) -> torch.Tensor:
    """The (1, L, dim) table of ``kind`` for ``grid``; L = prod(grid), +1 zero row in front with cls_token."""
    if kind == "sincos_3d":
        table = sincos_3d_table(*grid, dim)
    elif kind == "sincos_2d":
        table = sincos_2d_table(*grid, dim)
    elif kind == "sinusoid_1d":
        table = sinusoid_1d_table(math.prod(grid), dim)
    else:
        raise ValueError(f"unknown position table kind {kind!r}; expected one of {KINDS}")
    if cls_token:
        table = torch.cat([torch.zeros(1, dim), table], dim=0)
    return table.unsqueeze(0)


def resize_grid_table(table: torch.Tensor, src_grid: tuple[int, ...], dst_grid: tuple[int, ...]) -> torch.Tensor:
    """Interpolate a (1, prod(src_grid), D) table onto dst_grid (trilinear in 3D, bicubic in 2D)."""
    d = table.shape[-1]
    x = table.reshape(1, *src_grid, d).movedim(-1, 1).float()  # (1, D, *grid)
    mode = {1: "linear", 2: "bicubic", 3: "trilinear"}[len(src_grid)]
    x = F.interpolate(x, size=tuple(dst_grid), mode=mode, align_corners=False)
    return x.movedim(1, -1).reshape(1, math.prod(dst_grid), d)


class FixedPosEmbed(nn.Module):
    """Holds the fixed position table of a token grid: ``table`` (1, L, D), L = prod(grid) (+1 cls slot).

    Models add (gathered rows of) ``table`` to their tokens themselves, since most keep only the
    visible ones. ``mvd.models.load_checkpoint`` may overwrite the table with a non-standard one
    from a checkpoint (copied, or interpolated from another grid); that lasts until the model is
    rebuilt.
    """

    def __init__(self, kind: str, grid: tuple[int, ...], dim: int, cls_token: bool = False):
        super().__init__()
        self.kind, self.grid, self.dim, self.cls_token = kind, tuple(grid), dim, cls_token
        self.register_buffer("table", build_table(kind, self.grid, dim, cls_token), persistent=False)

    def extra_repr(self) -> str:
        return f"kind={self.kind}, grid={self.grid}, dim={self.dim}, cls_token={self.cls_token}"
