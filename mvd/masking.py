"""What the models do with a token mask: check it, count it, split and gather the tokens by it.

A mask is (B, N) bool, True = masked, N tokens in raster (t, h, w) order, every sample masking the
same number of tokens; masks are drawn by ``dali_pipelines.masks`` (``tube_mask``,
``random_mask``, and ``masked_tokens``, the count the training step takes as a host int).
"""

from __future__ import annotations

import torch


def check_mask_shape(mask: torch.Tensor, batch: int, num_tokens: int) -> None:
    """A (B, N) bool mask of the right shape; no host sync (shapes and dtypes live on the host)."""
    if mask.dtype != torch.bool or mask.dim() != 2:
        raise ValueError(f"mask must be a (B, N) bool tensor, got {mask.dtype} of shape {tuple(mask.shape)}")
    if tuple(mask.shape) != (batch, num_tokens):
        raise ValueError(f"mask has shape {tuple(mask.shape)} but the input needs ({batch}, {num_tokens}) "
                         f"(one entry per token)")


def masked_count(mask: torch.Tensor, batch: int, num_tokens: int) -> int:
    """Validate a (B, N) bool mask and return its per-sample masked count.

    Host sync: the count sets the shapes of everything downstream, so it has to reach the host;
    min and max come back in one transfer. The training step avoids it by passing the count it
    knows from the config (``dali_pipelines.masks.masked_tokens``) as ``num_masked``.
    """
    check_mask_shape(mask, batch, num_tokens)
    counts = mask.sum(dim=1)
    lo, hi = torch.stack([counts.min(), counts.max()]).tolist()  # host sync (see docstring)
    if lo != hi:
        raise ValueError(f"every sample must mask the same number of tokens; got between {lo} and {hi}")
    if lo == 0 or lo == num_tokens:
        raise ValueError(f"mask masks {lo} of {num_tokens} tokens; need at least one masked and one visible")
    return int(lo)


def split_indices(mask: torch.Tensor, num_masked: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids_visible (B, N - M), ids_masked (B, M)) int64, each in ascending (raster) order. No sync."""
    ids = torch.argsort(mask.to(torch.uint8), dim=1, stable=True)  # visible first, each group in order
    n_vis = mask.shape[1] - num_masked
    return ids[:, :n_vis], ids[:, n_vis:]


def gather_tokens(x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """x (B, N, D), ids (B, K) -> (B, K, D) = x[b, ids[b]]."""
    return torch.gather(x, 1, ids.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
