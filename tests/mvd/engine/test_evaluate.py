"""Video-level evaluation: softmax averaged over a video's views, padding views counted once;
accuracy per class and predictions.csv checked against a recomputation from the logits."""

import contextlib
import csv
import math
import random
import sys
from pathlib import Path

import pytest

from mvd.engine.evaluate import evaluate

sys.path.insert(0, str(Path(__file__).parent))
from engine_fakes import ScoresModel, eval_batch  # noqa: E402

ABC = ["a", "b", "c"]


def test_scores_are_averaged_over_views_and_padding_is_not_counted():
    big = 20.0
    batches = [
        # video 0 (label 1): one confident wrong view and two right ones -> average is right
        eval_batch([0, 0], [0, 1], [1, 1], [True, True], [[big, 0, 0], [0, big, 0]]),
        eval_batch([0, 1], [2, 0], [1, 2], [True, True], [[0, big, 0], [big, 0, 0]]),
        # padding repeats video 1's wrong view as if it were right: must be ignored
        eval_batch([1, 1], [0, 0], [2, 2], [False, False], [[0, 0, big], [0, 0, big]]),
    ]
    result = evaluate(ScoresModel(), batches, ABC, autocast=contextlib.nullcontext)
    assert result["videos"] == 2 and result["views"] == 4
    assert result["top1"] == pytest.approx(50.0)  # video 0 right, video 1 wrong
    assert result["top5"] == pytest.approx(100.0)  # 3 classes: top-k is capped at 3


def test_a_view_seen_twice_counts_once():
    big = 20.0
    batches = [eval_batch([0], [0], [0], [True], [[big, 0, 0]]),
               eval_batch([0, 0], [1, 1], [0, 0], [True, True], [[0, big, 0], [0, big, 0]]),
               eval_batch([0], [2], [0], [True], [[big, 0, 0]])]
    result = evaluate(ScoresModel(), batches, ABC, autocast=contextlib.nullcontext)
    assert result["views"] == 3 and result["top1"] == 100.0


def split(seed=0, videos=23, classes=7, views=3, batch=4):
    """Random logits for ``views`` views of each video, in batches of ``batch`` views (the last
    padded with repeats marked invalid), and the same as plain lists: {video: (label, [logits])}."""
    rng = random.Random(seed)
    truth = {v: (rng.randrange(classes), [[rng.gauss(0, 2) for _ in range(classes)] for _ in range(views)])
             for v in range(videos)}
    flat = [(v, c, truth[v][0], truth[v][1][c]) for v in truth for c in range(views)]
    rng.shuffle(flat)
    batches = []
    for i in range(0, len(flat), batch):
        part = flat[i:i + batch]
        valid = [True] * len(part) + [False] * (batch - len(part))
        part = part + [part[0]] * (batch - len(part))
        batches.append(eval_batch([p[0] for p in part], [p[1] for p in part], [p[2] for p in part],
                                  valid, [p[3] for p in part]))
    return batches, truth


def expected(truth, classes):
    """Per video, the softmax of each view averaged, recomputed in plain Python."""
    out = {}
    for v, (label, views) in truth.items():
        probs = []
        for logits in views:
            m = max(logits)
            e = [math.exp(x - m) for x in logits]
            probs.append([x / sum(e) for x in e])
        out[v] = (label, [sum(p[k] for p in probs) / len(probs) for k in range(len(classes))])
    return out


def test_predictions_csv_holds_each_videos_top5_of_the_averaged_softmax(tmp_path):
    classes = [f"class{k}" for k in range(7)]
    batches, truth = split()
    result = evaluate(ScoresModel(), batches, classes, autocast=contextlib.nullcontext,
                      predictions=tmp_path / "predictions.csv")
    with open(tmp_path / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == result["videos"] == len(truth)
    want = expected(truth, classes)
    for row in rows:
        v = int(row["key"].removeprefix("video"))
        label, prob = want[v]
        assert (int(row["label"]), row["label_name"]) == (label, classes[label])
        top = sorted(range(len(classes)), key=lambda k: -prob[k])[:5]
        assert [int(row[f"class_{i}"]) for i in range(1, 6)] == top
        assert [row[f"name_{i}"] for i in range(1, 6)] == [classes[k] for k in top]
        assert [float(row[f"prob_{i}"]) for i in range(1, 6)] == pytest.approx([prob[k] for k in top], rel=1e-5)


def test_per_class_accuracy_is_each_classs_share_of_its_videos_right():
    classes = [f"class{k}" for k in range(7)]
    batches, truth = split(seed=3, videos=40)
    result = evaluate(ScoresModel(), batches, classes, autocast=contextlib.nullcontext)
    want = expected(truth, classes)
    for k, name in enumerate(classes):
        mine = [prob for label, prob in want.values() if label == k]
        got = result["per_class"][name]
        assert got["videos"] == len(mine)
        if not mine:
            assert got["top1"] is None and got["top5"] is None
            continue
        top1 = sum(max(range(7), key=lambda c: p[c]) == k for p in mine)
        top5 = sum(k in sorted(range(7), key=lambda c: -p[c])[:5] for p in mine)
        assert got["top1"] == pytest.approx(100.0 * top1 / len(mine))
        assert got["top5"] == pytest.approx(100.0 * top5 / len(mine))
    seen = [c["top1"] for c in result["per_class"].values() if c["top1"] is not None]
    assert result["mean_class_top1"] == pytest.approx(sum(seen) / len(seen))
    overall = sum(max(range(7), key=lambda c: p[c]) == label for label, p in want.values())
    assert result["top1"] == pytest.approx(100.0 * overall / len(want))
