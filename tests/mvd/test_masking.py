"""Tube and random masks: exact counts, tube structure, seeded determinism, index splits."""

import pytest
import torch

from dali_pipelines.masks import num_to_mask, random_mask, tube_mask
from mvd.masking import gather_tokens, masked_count, split_indices


def test_reference_tube_mask_counts():
    mask = tube_mask(4, (8, 14, 14), 0.9, generator=torch.Generator().manual_seed(0))
    assert mask.shape == (4, 1568) and mask.dtype == torch.bool
    assert mask.sum(1).tolist() == [1408] * 4  # 176 of 196 per slice, 8 slices
    slices = mask.reshape(4, 8, 196)
    assert torch.equal(slices, slices[:, :1].expand(-1, 8, -1))  # the same 2D mask in every slice
    assert not torch.equal(slices[0, 0], slices[1, 0])  # samples differ


def test_random_mask_counts_and_spread():
    mask = random_mask(3, 196, 0.75, generator=torch.Generator().manual_seed(0))
    assert mask.sum(1).tolist() == [147] * 3
    assert num_to_mask(196, 0.9) == 176


def test_masks_are_deterministic_by_seed():
    a = tube_mask(2, (2, 4, 4), 0.5, generator=torch.Generator().manual_seed(5))
    b = tube_mask(2, (2, 4, 4), 0.5, generator=torch.Generator().manual_seed(5))
    c = tube_mask(2, (2, 4, 4), 0.5, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_split_indices_match_boolean_gathers():
    mask = random_mask(3, 20, 0.6, generator=torch.Generator().manual_seed(1))
    x = torch.randn(3, 20, 4)
    m = masked_count(mask, 3, 20)
    ids_vis, ids_mask = split_indices(mask, m)
    assert torch.equal(gather_tokens(x, ids_vis), x[~mask].reshape(3, -1, 4))
    assert torch.equal(gather_tokens(x, ids_mask), x[mask].reshape(3, -1, 4))


def test_bad_ratio_rejected():
    with pytest.raises(ValueError, match="mask ratio"):
        random_mask(1, 10, 1.0)
