"""AVA evaluation keeps at most the evaluator's 50 detections per keyframe before gathering: the
trimmed detections give exactly the mAP, per-class APs and counts of the untrimmed ones, ties in
the scores included (the evaluator's own heap picks what to keep)."""

import contextlib
import csv
import random

import numpy as np
import pytest
import torch

from dali_pipelines.manifest import AvaAnnotations, AvaSample
from mvd.ava_eval import CAPACITY, capped_rows, evaluate_frame_map
from mvd.engine.detect_eval import detection_rows, evaluate_detections, groundtruth_rows
from shard_tools.ava_files import BoxRow

ACTION_IDS = (1, 2, 3, 4, 5)
EVALUATED = (1, 2, 4, 5)  # 4 evaluated classes x 16 proposals = 64 detections per keyframe > 50


def synthetic_ava(seed: int, keyframes: int = 6, proposals: int = 16) -> AvaAnnotations:
    """Keyframes with 3 ground-truth people each and proposals jittered around them (some far
    off); proposal scores on a coarse grid so that detection scores tie."""
    rng = np.random.default_rng(seed)
    samples = []
    for k in range(keyframes):
        corner = rng.uniform(0.0, 0.6, size=(3, 2))
        gt = np.concatenate([corner, corner + rng.uniform(0.2, 0.4, size=(3, 2))], axis=1)
        actions = tuple(tuple(int(a) for a in rng.choice(ACTION_IDS, size=rng.integers(1, 3), replace=False))
                        for _ in range(3))
        near = gt[rng.integers(0, 3, size=proposals)] + rng.normal(0, 0.03, size=(proposals, 4))
        props = np.concatenate([np.clip(near, 0, 1), rng.choice([0.9, 1.0], size=(proposals, 1))], axis=1)
        labels = np.zeros((3, len(ACTION_IDS)), bool)
        for b, ids in enumerate(actions):
            labels[b, [ACTION_IDS.index(a) for a in ids]] = True
        samples.append(AvaSample(f"movie{k // 3}", 902 + k, 8, gt.astype(np.float32), labels, actions,
                                 (0, 1, 2), props.astype(np.float32)))
    return AvaAnnotations(tuple(samples), tuple(f"action{a}" for a in ACTION_IDS), ACTION_IDS, EVALUATED,
                          frozenset({("movie1", 905)}))


class FakeDetectLoader:
    """Eval batches of two keyframes each: every proposal of the keyframe, its scores preset."""

    num_classes = len(ACTION_IDS)
    eval_boxes = "proposals"
    skipped_proposals = {"low_score": 0, "degenerate": 0}

    def __init__(self, ava, scores):
        self.ava, self.scores = ava, scores  # scores[sample] (P, C)

    def __iter__(self):
        order = list(range(len(self.ava.samples)))
        for i in range(0, len(order), 2):
            samples = order[i:i + 2]
            boxes = torch.cat([torch.cat([torch.full((len(self.ava.samples[s].proposals), 1), float(r)),
                                          torch.from_numpy(self.ava.samples[s].proposals[:, :4])], dim=1)
                               for r, s in enumerate(samples)])
            yield {"video": torch.zeros(len(samples), 3, 2, 4, 4), "boxes": boxes,
                   "index": torch.tensor(samples), "valid": torch.ones(len(samples), dtype=torch.bool),
                   "box_index": torch.cat([torch.arange(len(self.ava.samples[s].proposals)) for s in samples]),
                   "logits": torch.cat([self.scores[s] for s in samples])}


class PresetLogits(torch.nn.Module):
    """Returns the logits the loader preset for the batch's boxes (the batch is passed by
    FakeDetectLoader's iteration, one call per batch)."""

    def __init__(self, loader):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.batches = iter(loader)

    def forward(self, video, boxes):
        return next(self.batches)["logits"]


def grid_logits(ava, seed):
    """Logits whose sigmoids sit on a grid of 5 values: many exact ties."""
    rng = np.random.default_rng(seed)
    probs = [rng.choice([0.1, 0.3, 0.5, 0.7, 0.9], size=(len(s.proposals), len(ACTION_IDS)))
             for s in ava.samples]
    return [torch.from_numpy(np.log(p / (1 - p))).float() for p in probs]


@pytest.mark.parametrize("seed", range(4))
def test_trimmed_detections_give_the_untrimmed_map_ties_included(seed, tmp_path):
    ava = synthetic_ava(seed)
    logits = grid_logits(ava, seed)
    loader = FakeDetectLoader(ava, logits)
    result = evaluate_detections(PresetLogits(loader), loader, contextlib.nullcontext,
                                 csv_path=tmp_path / "detections.csv", score_by_proposal=True, is_main=True)

    # the untrimmed reference: every box x evaluated class, straight to the evaluator
    rows = np.array([(s, p) for s, sample in enumerate(ava.samples) for p in range(len(sample.proposals))])
    scores = np.concatenate([torch.sigmoid(x).numpy() for x in logits])
    every = list(detection_rows(ava, rows, scores, eval_boxes="proposals", score_by_proposal=True))
    want = evaluate_frame_map(groundtruth_rows(ava), every, ava.label_map, ava.excluded)
    assert want["counts"]["detections_dropped_capacity"] > 0  # the cap matters in this case

    assert result["mAP"] == want["mAP"]  # exactly: the same heaps, in the same order
    assert result["per_class"] == {str(k): v for k, v in want["per_class"].items()}
    assert result["counts"] == want["counts"]
    with open(tmp_path / "detections.csv") as f:
        written = list(csv.reader(f))
    per_keyframe = {}
    for r in written:
        per_keyframe[(r[0], r[1])] = per_keyframe.get((r[0], r[1]), 0) + 1
    assert max(per_keyframe.values()) == CAPACITY and result["detections"] == len(written) < len(every)
    assert result["boxes_scored"] == len(rows) and result["keyframes"] == len(ava.samples)


def test_capped_rows_keeps_what_the_evaluator_keeps():
    rng = random.Random(0)
    labels = {1: "a", 2: "b"}
    rows = [BoxRow(f"v{rng.randrange(3)}", 902, (0.1, 0.1, 0.5, 0.5), rng.choice([1, 2, 9]), None,
                   rng.choice([0.2, 0.4, 0.6])) for _ in range(400)]
    kept, dropped = capped_rows(rows, labels, capacity=7)
    assert dropped == sum(max(0, sum(r.video_id == v and r.action_id in labels for r in rows) - 7)
                                  for v in ("v0", "v1", "v2"))
    assert sorted(kept) == sorted(set(kept))
    full = evaluate_frame_map([], rows, labels, capacity=7)
    trimmed = evaluate_frame_map([], [rows[i] for i in kept], labels, capacity=7)
    assert trimmed["counts"]["detections"] == full["counts"]["detections"] == 3 * 7
    assert trimmed["counts"]["skipped_unknown_class_detections"] == full["counts"]["skipped_unknown_class_detections"]
