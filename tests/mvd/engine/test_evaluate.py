"""Video-level evaluation: softmax averaged over a video's views, padding views counted once."""

import contextlib
import sys
from pathlib import Path

import pytest

from mvd.engine.evaluate import evaluate

sys.path.insert(0, str(Path(__file__).parent))
from engine_fakes import ScoresModel, eval_batch  # noqa: E402


def test_scores_are_averaged_over_views_and_padding_is_not_counted():
    big = 20.0
    batches = [
        # video 0 (label 1): one confident wrong view and two right ones -> average is right
        eval_batch([0, 0], [0, 1], [1, 1], [True, True], [[big, 0, 0], [0, big, 0]]),
        eval_batch([0, 1], [2, 0], [1, 2], [True, True], [[0, big, 0], [big, 0, 0]]),
        # padding repeats video 1's wrong view as if it were right: must be ignored
        eval_batch([1, 1], [0, 0], [2, 2], [False, False], [[0, 0, big], [0, 0, big]]),
    ]
    result = evaluate(ScoresModel(), batches, num_classes=3, autocast=contextlib.nullcontext)
    assert result["videos"] == 2 and result["views"] == 4
    assert result["top1"] == pytest.approx(50.0)  # video 0 right, video 1 wrong
    assert result["top5"] == pytest.approx(100.0)  # 3 classes: top-k is capped at 3


def test_a_view_seen_twice_counts_once():
    big = 20.0
    batches = [eval_batch([0], [0], [0], [True], [[big, 0, 0]]),
               eval_batch([0, 0], [1, 1], [0, 0], [True, True], [[0, big, 0], [0, big, 0]]),
               eval_batch([0], [2], [0], [True], [[big, 0, 0]])]
    result = evaluate(ScoresModel(), batches, num_classes=3, autocast=contextlib.nullcontext)
    assert result["views"] == 3 and result["top1"] == 100.0
