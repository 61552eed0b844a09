"""Shared building blocks: the one patch embedding, position tables, attention and ViT block."""

from mvd.layers.attention import Attention
from mvd.layers.block import LN_EPS, Block
from mvd.layers.patch_embed import PatchEmbed
from mvd.layers.pos_embed import (
    FixedPosEmbed,
    build_table,
    resize_grid_table,
    sincos_1d,
    sincos_2d_table,
    sincos_3d_table,
    sinusoid_1d_table,
)

__all__ = [
    "Attention", "Block", "FixedPosEmbed", "LN_EPS", "PatchEmbed", "build_table", "resize_grid_table",
    "sincos_1d", "sincos_2d_table", "sincos_3d_table", "sinusoid_1d_table",
]
