"""AVA evaluation (task detect's validation, and task eval of a detector): every eval keyframe's
boxes scored, the detections written as the official CSV, and frame mAP@0.5 IoU by the official
protocol (``mvd.ava_eval``).

Each rank scores its share of the keyframes (``DetectLoader(train=False)``: every keyframe once
across ranks, the last batch padded) and turns each scored box x evaluated class
(``detection.eval_action_ids``) into a detection: the box as the shards hold it (the proposal, or
the ground-truth box with eval_boxes "groundtruth"; not the test-time extended box the head
pooled), the score the sigmoid, times the proposal's person score with ``score_by_proposal``
(VideoMAE's PostProcessor; SlowFast writes the sigmoid alone). Each rank then keeps only the
detections the official evaluator would keep, at most ``mvd.ava_eval.CAPACITY`` (50) per
keyframe (``capped_rows``, its own heap, so the mAP is the untrimmed one, ties included), and
only those are gathered, on the device they were scored on, then moved to the host once: rank 0
holds 50 rows per keyframe at most, not every box x class. The ground truth is the eval shards'
own boxes (their json), the excluded keyframes the manifest's; ``mvd-ava-eval -l LABELS -g
GT.csv -d detections.csv -e EXCLUDED.csv`` on the original files gives the same mAP.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mvd.ava_eval import CAPACITY, capped_rows, evaluate_frame_map
from mvd.engine import distributed as D
from shard_tools.ava_files import BoxRow, write_detections_csv

log = logging.getLogger("mvd.train")

BOX_DECIMALS = 5  # box corners as written to detections.csv (AlphAction writes 5 as well)


@torch.inference_mode()
def score_boxes(model: nn.Module, loader, autocast: Callable[[], AbstractContextManager]
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(clips (N, 2) int64 [sample, valid] of this rank's eval clips, rows (V, 3) int64 [sample,
    box position, valid] and scores (V, C) float32 of their boxes), on the scoring device."""
    was_training = model.training
    model.eval()
    clips, rows, scores = [], [], []
    for batch in loader:
        boxes = batch["boxes"]  # (K, 5)
        with autocast():
            logits = model(batch["video"], boxes)  # (K, C)
        scores.append(logits.float().sigmoid())
        index, valid = batch["index"].long(), batch["valid"].long()
        row = boxes[:, 0].long()
        clips.append(torch.stack([index, valid], dim=1))  # (B, 2)
        rows.append(torch.stack([index[row], batch["box_index"].long(), valid[row]], dim=1))  # (K, 3)
    model.train(was_training)
    device = scores[0].device if scores else next(model.parameters()).device
    long = dict(dtype=torch.long, device=device)
    return (torch.cat(clips) if clips else torch.zeros(0, 2, **long),
            torch.cat(rows) if rows else torch.zeros(0, 3, **long),
            torch.cat(scores) if scores else torch.zeros(0, loader.num_classes, device=device))


def unique_valid(rows: torch.Tensor, scores: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """The rows of real (not padding) keyframes, each (sample, box) once (the first seen: a
    keyframe replaced after a decode failure may appear twice), in (sample, box) order."""
    keep = rows[:, 2] == 1
    rows, scores = rows[keep, :2].numpy(), scores[keep].numpy()
    _, first = np.unique(rows, axis=0, return_index=True)
    return rows[first], scores[first]


def evaluated_columns(ava) -> list[tuple[int, int]]:
    """(action id, class index) of every evaluated class, in ``eval_action_ids`` order."""
    column = {a: i for i, a in enumerate(ava.action_ids)}
    return [(a, column[a]) for a in ava.eval_action_ids]


def detection(ava, sample: int, position: int, action: int, prob: float, *, eval_boxes: str,
              score_by_proposal: bool) -> BoxRow:
    """One scored box x class as a detection row (see the module docstring)."""
    s = ava.samples[sample]
    if eval_boxes == "groundtruth":
        box, person = s.boxes[position], 1.0
    else:
        box, person = s.proposals[position, :4], float(s.proposals[position, 4])
    box = tuple(round(float(v), BOX_DECIMALS) for v in box)
    factor = person if score_by_proposal else 1.0
    return BoxRow(s.video_id, s.timestamp, box, action, None, float(prob) * factor)


def detection_rows(ava, rows: np.ndarray, scores: np.ndarray, *, eval_boxes: str,
                   score_by_proposal: bool) -> Iterator[BoxRow]:
    """Every scored box x evaluated class as a detection, box by box."""
    evaluated = evaluated_columns(ava)
    for (sample, position), prob in zip(rows.tolist(), scores):
        for action, i in evaluated:
            yield detection(ava, sample, position, action, prob[i], eval_boxes=eval_boxes,
                            score_by_proposal=score_by_proposal)


def kept_detections(ava, rows: np.ndarray, scores: np.ndarray, *, eval_boxes: str,
                    score_by_proposal: bool, capacity: int = CAPACITY
                    ) -> tuple[np.ndarray, np.ndarray, int]:
    """(picks (M, 3) int64 [sample, box position, class index], their sigmoids (M,) float32,
    detections dropped) of the detections the evaluator keeps, at most ``capacity`` per keyframe,
    in the order :func:`mvd.ava_eval.capped_rows` gives them."""
    dets = list(detection_rows(ava, rows, scores, eval_boxes=eval_boxes,
                               score_by_proposal=score_by_proposal))
    kept, dropped = capped_rows(dets, ava.label_map, capacity)
    if not kept:
        return np.zeros((0, 3), np.int64), np.zeros(0, np.float32), dropped
    columns = np.array([i for _, i in evaluated_columns(ava)], dtype=np.int64)
    kept = np.asarray(kept, dtype=np.int64)
    box, cls = kept // len(columns), columns[kept % len(columns)]  # detection_rows' order
    picks = np.stack([rows[box, 0], rows[box, 1], cls], axis=1).astype(np.int64)
    return picks, scores[box, cls].astype(np.float32), dropped


def groundtruth_rows(ava) -> Iterator[BoxRow]:
    """The eval shards' ground truth: one row per (box, action)."""
    for s in ava.samples:
        for box, actions, person in zip(s.boxes, s.actions, s.person_ids):
            box = tuple(float(v) for v in box)
            for action in actions:
                yield BoxRow(s.video_id, s.timestamp, box, int(action), person, None)


def evaluate_detections(model: nn.Module, loader, autocast: Callable[[], AbstractContextManager], *,
                        csv_path: Path | None, score_by_proposal: bool, is_main: bool) -> dict:
    """Score the loader's split, keep each rank's detections that the evaluator keeps, and on
    rank 0 write ``csv_path`` and compute the mAP. Returns {"mAP" (None when no evaluated class
    has ground truth), "per_class" {action id: AP or None}, "keyframes" (eval keyframes seen),
    "keyframes_with_boxes", "detections" (rows written), "boxes_scored", "eval_boxes",
    "skipped_proposals", "counts" (the evaluator's, ``detections_dropped_capacity`` including
    what the ranks dropped before gathering)} on every rank (broadcast from rank 0). A
    collective: every rank calls it."""
    clips, rows, scores = score_boxes(model, loader, autocast)
    device = scores.device
    rows, scores = unique_valid(rows.cpu(), scores.cpu())  # one transfer each
    ava = loader.ava
    picks, probs, dropped = kept_detections(ava, rows, scores, eval_boxes=loader.eval_boxes,
                                            score_by_proposal=score_by_proposal)
    # this rank's boxes scored, detections dropped, keyframes with boxes (each keyframe is one rank's)
    sums = torch.tensor([[len(rows), dropped, len(np.unique(rows[:, 0]))]], dtype=torch.long, device=device)
    clips, sums, picks, probs = (D.all_gather_rows(t.to(device)).cpu() for t in (
        clips, sums, torch.from_numpy(picks), torch.from_numpy(probs)[:, None]))
    boxes_scored, dropped, with_boxes = (int(v) for v in sums.sum(0))
    result = None
    if is_main:
        keyframes = int(len(torch.unique(clips[clips[:, 1] == 1, 0])))
        order = np.argsort(picks[:, 0].numpy(), kind="stable")  # keyframes in sample order, as untrimmed
        picks, probs = picks.numpy()[order], probs[:, 0].numpy()[order]
        evaluated = dict((i, a) for a, i in evaluated_columns(ava))

        def dets():
            for (sample, position, i), prob in zip(picks.tolist(), probs):
                yield detection(ava, sample, position, evaluated[i], prob, eval_boxes=loader.eval_boxes,
                                score_by_proposal=score_by_proposal)

        written = write_detections_csv(csv_path, dets()) if csv_path is not None else None
        got = evaluate_frame_map(groundtruth_rows(ava), dets(), ava.label_map, ava.excluded)
        counts = dict(got["counts"])
        counts["detections_dropped_capacity"] += dropped
        mean = got["mAP"]
        result = {"mAP": None if math.isnan(mean) else mean,
                  "per_class": {str(k): v for k, v in got["per_class"].items()},
                  "keyframes": keyframes,
                  "keyframes_with_boxes": with_boxes,
                  "detections": written if written is not None else got["counts"]["detections"],
                  "boxes_scored": boxes_scored, "eval_boxes": loader.eval_boxes,
                  "skipped_proposals": dict(loader.skipped_proposals), "counts": counts}
    return D.broadcast_object(result)
