"""Token masks, drawn on the device and vectorised over the batch: what the loaders hand the
training step, and the count of masked tokens the step takes as a host int.

A mask is (B, N) bool, True = masked, N tokens in raster (t, h, w) order. Every sample masks the
same number of tokens (the models rely on it to keep dense (B, n, D) tensors). Randomness comes
only from the ``generator`` passed in (it must live on ``device``), so a seed reproduces a mask.
The loaders (``dali_pipelines.pretrain_loader``) and the model package (``mvd``) both import it;
what the models do with a mask (checks, gathers) is ``mvd.masking``.
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
