"""Video-level evaluation: softmax averaged over a video's views, padding views counted once."""

import contextlib

import pytest
import torch

from mvd.engine.evaluate import evaluate


class _Model(torch.nn.Module):
    """Logits are the clip's first pixel row (so the test sets each view's scores)."""

    def forward(self, x):
        return x[:, 0, 0, 0, :3]


def _batch(index, clip, label, valid, logits):
    video = torch.zeros(len(index), 3, 1, 1, 3)
    video[:, 0, 0, 0] = torch.tensor(logits, dtype=torch.float32)
    return {"video": video, "index": torch.tensor(index), "clip": torch.tensor(clip),
            "crop": torch.zeros(len(index), dtype=torch.long), "label": torch.tensor(label),
            "valid": torch.tensor(valid)}


def test_scores_are_averaged_over_views_and_padding_is_not_counted():
    big = 20.0
    batches = [
        # video 0 (label 1): one confident wrong view and two right ones -> average is right
        _batch([0, 0], [0, 1], [1, 1], [True, True], [[big, 0, 0], [0, big, 0]]),
        _batch([0, 1], [2, 0], [1, 2], [True, True], [[0, big, 0], [big, 0, 0]]),
        # padding repeats video 1's wrong view as if it were right: must be ignored
        _batch([1, 1], [0, 0], [2, 2], [False, False], [[0, 0, big], [0, 0, big]]),
    ]
    result = evaluate(_Model(), batches, num_classes=3, autocast=contextlib.nullcontext)
    assert result["videos"] == 2 and result["views"] == 4
    assert result["top1"] == pytest.approx(50.0)  # video 0 right, video 1 wrong
    assert result["top5"] == pytest.approx(100.0)  # 3 classes: top-k is capped at 3


def test_a_view_seen_twice_counts_once():
    big = 20.0
    batches = [_batch([0], [0], [0], [True], [[big, 0, 0]]),
               _batch([0, 0], [1, 1], [0, 0], [True, True], [[0, big, 0], [0, big, 0]]),
               _batch([0], [2], [0], [True], [[big, 0, 0]])]
    result = evaluate(_Model(), batches, num_classes=3, autocast=contextlib.nullcontext)
    assert result["views"] == 3 and result["top1"] == 100.0
