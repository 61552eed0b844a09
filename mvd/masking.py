"""Token masks on the device, vectorised over the batch, and the gathers that use them.

A mask is (B, N) bool, True = masked, N tokens in raster (t, h, w) order. Every sample masks the
same number of tokens (the models rely on it to keep dense (B, n, D) tensors). Randomness comes
only from the ``generator`` passed in (it must live on ``device``), so a seed reproduces a mask.
"""

from __future__ import annotations

import math

import torch


def num_to_mask(num_tokens: int, ratio: float) -> int:
    """floor(ratio * num_tokens) (e.g. 0.9 of 196 -> 176), guarding against 0.75*196 = 146.99999."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"mask ratio must be in [0, 1), got {ratio}")
    return math.floor(ratio * num_tokens + 1e-9)


def _random_rows(batch: int, n: int, k: int, generator, device) -> torch.Tensor:
    """(batch, n) bool with exactly k True per row at uniformly random positions."""
    noise = torch.rand(batch, n, generator=generator, device=device)
    chosen = noise.argsort(dim=1)[:, :k]  # (B, k)
    return torch.zeros(batch, n, dtype=torch.bool, device=device).scatter_(1, chosen, True)


def random_mask(batch: int, num_tokens: int, ratio: float, *, generator: torch.Generator | None = None,
                device: torch.device | str | None = None) -> torch.Tensor:
    """(B, N) bool: floor(ratio*N) tokens masked per sample, chosen independently (MAE-style)."""
    return _random_rows(batch, num_tokens, num_to_mask(num_tokens, ratio), generator, device)


def tube_mask(batch: int, grid: tuple[int, int, int], ratio: float, *, generator: torch.Generator | None = None,
              device: torch.device | str | None = None) -> torch.Tensor:
    """(B, T*H*W) bool: one random (H, W) mask of floor(ratio*H*W) positions per sample, repeated over T."""
    t, h, w = grid
    spatial = _random_rows(batch, h * w, num_to_mask(h * w, ratio), generator, device)  # (B, H*W)
    return spatial.unsqueeze(1).expand(batch, t, h * w).reshape(batch, t * h * w)


def masked_tokens(grid: tuple[int, int, int], ratio: float, kind: str = "tube") -> int:
    """Masked tokens per sample for a (T', H', W') token grid: what ``tube_mask`` (kind 'tube':
    floor(ratio*H'W') per slice, x T') or ``random_mask`` ('random': floor(ratio*T'H'W')) make.
    The training step takes this host int instead of reading the count back from the mask."""
    t, h, w = grid
    if kind == "tube":
        return t * num_to_mask(h * w, ratio)
    if kind == "random":
        return num_to_mask(t * h * w, ratio)
    raise ValueError(f"mask kind must be 'tube' or 'random', got {kind!r}")


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
    knows from the config (:func:`masked_tokens`) as ``num_masked``.
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
