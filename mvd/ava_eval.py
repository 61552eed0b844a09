"""AVA frame-level mAP @ IoU 0.5: the official ActivityNet AVA protocol, in numpy.

This reproduces ``get_ava_performance.py`` of activitynet/ActivityNet as it was before commit
c070fdb (April 2020): the release with the ``-e/--exclusions`` flag, which the v2.2
excluded-timestamps files are made for (the later script drops that flag for 2-column "empty
keyframe" rows and ignores detections on keyframes the ground-truth file does not list), and the
``PascalDetectionEvaluator`` under it, step for step. Checked bit for bit against that code on
random cases with tied scores, capacity overflows, exclusions and degenerate boxes:

1. Class whitelist: ground-truth and detection rows whose action id is not in the label map are
   skipped (and counted).
2. At most ``capacity`` (50) detections per keyframe over all classes: the official min-heap on
   ``(score, action_id, y1, x1, y2, x2)``, in file order (a row replaces the heap's minimum only
   with a strictly higher score); each keyframe's entries are then ordered by descending score
   (stable over the heap's array order, as ``sorted`` there). Ground truth goes through the same
   heap without a cap, so equal-IoU ties pick the same box as the official code.
3. Excluded keyframes: their ground truth and detections are ignored (after steps 1-2, as there).
4. Degenerate detections (x1 >= x2 or y1 >= y2) are dropped (``_remove_invalid_boxes``), after
   the cap, so they did take capacity.
5. Per keyframe and class, detections in that order are matched to their highest-IoU
   ground-truth box (``argmax``, first on ties); a detection is a true positive when that IoU is
   >= the threshold and the box is not yet matched, else a false positive (even if another,
   unmatched box overlaps >= 0.5). Detections on a keyframe with no ground truth of their class,
   or none at all, are false positives.
6. Per class: scores over keyframes (in order of first appearance in the detections) ranked by
   ``np.argsort(scores)[::-1]`` as ``metrics.compute_precision_recall``; AP is the VOC area under
   the monotone precision envelope (``metrics.compute_average_precision``) with the class's
   ground-truth box count as recall denominator. A class without ground truth has AP None and is
   left out of the mean; a class with ground truth and no detections has AP 0.0 and counts.
   mAP = ``np.nanmean`` over the label map's classes.

IoU is ``np_box_ops.iou`` (continuous coordinates, no +1). Boxes are (y1, x1, y2, x2) inside, as
there; the CSVs and :class:`~shard_tools.ava_files.BoxRow` say x1, y1, x2, y2.
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import sys
import warnings
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from shard_tools.ava_files import AvaFileError, BoxRow, read_box_csv, read_excluded, read_label_map

CAPACITY = 50  # detections kept per keyframe by the official reader
IOU_THRESHOLD = 0.5

Key = tuple[str, int]
Entry = tuple[float, int, float, float, float, float]  # score, action_id, y1, x1, y2, x2 (official order)


def _keep(heap: list, entry: Entry, capacity: int, counts: dict) -> None:
    """The official reader's cap on one keyframe's heap: push while under ``capacity`` (< 1: no
    cap); past it a row replaces the heap's minimum only with a strictly higher score."""
    if capacity < 1 or len(heap) < capacity:
        heapq.heappush(heap, entry)
    else:
        counts["detections_dropped_capacity"] += 1  # this row or the heap's minimum goes
        if entry[0] > heap[0][0]:
            heapq.heapreplace(heap, entry)


def _entry(row: BoxRow) -> Entry:
    x1, y1, x2, y2 = row.box
    return (1.0 if row.score is None else float(row.score), row.action_id, y1, x1, y2, x2)


def _read_entries(rows: Iterable[BoxRow], label_map: dict[int, str], capacity: int, what: str,
                  counts: dict) -> dict[Key, list[Entry]]:
    """Rows -> per keyframe, the kept entries in descending score (the official ``read_csv``)."""
    heaps: dict[Key, list[Entry]] = {}
    for row in rows:
        if row.action_id is None:
            raise AvaFileError(f"{what} row {row.video_id},{row.timestamp:04d} has no action_id")
        if row.action_id not in label_map:
            counts[f"skipped_unknown_class_{what}"] += 1
            continue
        _keep(heaps.setdefault((row.video_id, row.timestamp), []), _entry(row), capacity, counts)
    return {key: sorted(heap, key=lambda e: -e[0]) for key, heap in heaps.items()}


class _Numbered(tuple):
    """An entry that remembers its row's position; it compares as the plain entry does."""


def capped_rows(rows: list[BoxRow], label_map: dict[int, str], capacity: int = CAPACITY
                ) -> tuple[list[int], int]:
    """(positions in ``rows`` of the detections the official reader would keep, how many it would
    drop for capacity): at most ``capacity`` per keyframe, chosen by the same heap as
    :func:`evaluate_frame_map`. The kept rows come keyframe by keyframe (in order of first
    appearance), each keyframe's in that heap's array order, so that evaluating the kept rows in
    this order rebuilds the very same heaps (a heap's array pushed in order never moves) and gives
    the same result, ties included. Rows of classes outside the label map are kept (the evaluator
    skips and counts them)."""
    heaps: dict[Key, list[_Numbered]] = {}
    others, counts = [], defaultdict(int)
    for i, row in enumerate(rows):
        if row.action_id not in label_map:
            others.append(i)
            continue
        entry = _Numbered(_entry(row))
        entry.row = i
        _keep(heaps.setdefault((row.video_id, row.timestamp), []), entry, capacity, counts)
    kept = [e.row for heap in heaps.values() for e in heap]
    return kept + others, counts["detections_dropped_capacity"]


def box_iou(boxes1: np.ndarray, boxes2: np.ndarray) -> np.ndarray:
    """Pairwise IoU of (N, 4) and (M, 4) boxes (y1, x1, y2, x2) -> (N, M), as np_box_ops.iou."""
    y1a, x1a, y2a, x2a = np.split(boxes1, 4, axis=1)  # each (N, 1)
    y1b, x1b, y2b, x2b = np.split(boxes2, 4, axis=1)  # each (M, 1)
    heights = np.maximum(0.0, np.minimum(y2a, y2b.T) - np.maximum(y1a, y1b.T))
    widths = np.maximum(0.0, np.minimum(x2a, x2b.T) - np.maximum(x1a, x1b.T))
    intersection = heights * widths  # (N, M)
    area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])
    area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])
    return intersection / (area1[:, None] + area2[None, :] - intersection)


def match_detections(detected: np.ndarray, groundtruth: np.ndarray, iou_threshold: float) -> np.ndarray:
    """TP flags (N,) of one class's detections (N, 4), in their order, against its GT (M, 4)."""
    tp = np.zeros(len(detected), dtype=bool)
    if len(groundtruth) == 0 or len(detected) == 0:
        return tp
    iou = box_iou(detected, groundtruth)  # (N, M)
    best = np.argmax(iou, axis=1)
    taken = np.zeros(len(groundtruth), dtype=bool)
    for i, g in enumerate(best):
        if iou[i, g] >= iou_threshold and not taken[g]:
            tp[i] = True
            taken[g] = True
    return tp


def average_precision(scores: np.ndarray, tp: np.ndarray, num_gt: int) -> float:
    """VOC AP of one class (``metrics.compute_precision_recall`` + ``compute_average_precision``)."""
    if len(scores) == 0:
        return 0.0
    order = np.argsort(scores)[::-1]  # the official ranking, ties included
    hits = tp[order].astype(int)
    cum_tp = np.cumsum(hits)
    cum_fp = np.cumsum(1 - hits)
    precision = cum_tp.astype(float) / (cum_tp + cum_fp)
    recall = cum_tp.astype(float) / num_gt
    recall = np.concatenate([[0], recall, [1]])
    precision = np.concatenate([[0], precision, [0]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]  # non-increasing envelope
    steps = np.where(recall[1:] != recall[:-1])[0] + 1
    return float(np.sum((recall[steps] - recall[steps - 1]) * precision[steps]))


def evaluate_frame_map(groundtruth: Iterable[BoxRow], detections: Iterable[BoxRow], label_map: dict[int, str],
                       excluded: Iterable[Key] = frozenset(), *, iou_threshold: float = IOU_THRESHOLD,
                       capacity: int = CAPACITY) -> dict:
    """Frame-level AVA mAP (see the module docstring for the protocol).

    Returns ``{"mAP": float (NaN when no class has ground truth), "per_class": {action_id: AP or
    None}, "names": {action_id: name}, "gt_per_class": {action_id: boxes}, "counts": {...}}`` with
    counts: ``gt_boxes`` / ``detections`` (evaluated), ``keyframes`` (with evaluated ground truth),
    ``detections_dropped_capacity``, ``detections_dropped_degenerate``, ``excluded_gt``,
    ``excluded_detections``, ``detections_on_keyframes_without_gt`` (evaluated, all false
    positives), ``skipped_unknown_class_gt``, ``skipped_unknown_class_detections`` and their sum
    ``skipped_unknown_class``. Every input row lands in exactly one of them.
    """
    excluded = set(excluded)
    counts = defaultdict(int)
    gt_entries = _read_entries(groundtruth, label_map, 0, "gt", counts)
    det_entries = _read_entries(detections, label_map, capacity, "detections", counts)

    # Ground truth per keyframe: boxes (M, 4) and their action ids (M,), excluded keyframes out.
    gt: dict[Key, tuple[np.ndarray, np.ndarray]] = {}
    gt_per_class = dict.fromkeys(label_map, 0)
    for key, entries in gt_entries.items():
        if key in excluded:
            counts["excluded_gt"] += len(entries)
            continue
        gt[key] = (np.array([e[2:] for e in entries], dtype=float), np.array([e[1] for e in entries]))
        for e in entries:
            gt_per_class[e[1]] += 1
        counts["gt_boxes"] += len(entries)
    counts["keyframes"] = len(gt)

    scores_per_class: dict[int, list[np.ndarray]] = defaultdict(list)
    tp_per_class: dict[int, list[np.ndarray]] = defaultdict(list)
    for key, entries in det_entries.items():
        if key in excluded:
            counts["excluded_detections"] += len(entries)
            continue
        boxes = np.array([e[2:] for e in entries], dtype=float).reshape(-1, 4)  # (N, 4) y1, x1, y2, x2
        valid = (boxes[:, 0] < boxes[:, 2]) & (boxes[:, 1] < boxes[:, 3])
        counts["detections_dropped_degenerate"] += int((~valid).sum())
        boxes = boxes[valid]
        scores = np.array([e[0] for e in entries], dtype=float)[valid]
        actions = np.array([e[1] for e in entries])[valid]
        counts["detections"] += len(boxes)
        gt_boxes, gt_actions = gt.get(key, (np.zeros((0, 4)), np.zeros(0, dtype=int)))
        if key not in gt:
            counts["detections_on_keyframes_without_gt"] += len(boxes)
        for action in dict.fromkeys(actions.tolist()):
            mine = actions == action
            tp = match_detections(boxes[mine], gt_boxes[gt_actions == action], iou_threshold)
            scores_per_class[action].append(scores[mine])
            tp_per_class[action].append(tp)

    per_class: dict[int, float | None] = {}
    ap_by_index = np.full(max(label_map), np.nan)  # the official per-class array, indexed id - 1
    for action in label_map:
        if gt_per_class[action] == 0:
            per_class[action] = None
            continue
        scores = np.concatenate(scores_per_class[action]) if scores_per_class[action] else np.zeros(0)
        tp = np.concatenate(tp_per_class[action]) if tp_per_class[action] else np.zeros(0, dtype=bool)
        per_class[action] = ap_by_index[action - 1] = average_precision(scores, tp, gt_per_class[action])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN: no class has ground truth
        mean_ap = float(np.nanmean(ap_by_index))
    counts["skipped_unknown_class"] = counts["skipped_unknown_class_gt"] + counts["skipped_unknown_class_detections"]
    names = ("gt_boxes", "detections", "keyframes", "detections_dropped_capacity", "detections_dropped_degenerate",
             "excluded_gt", "excluded_detections", "detections_on_keyframes_without_gt",
             "skipped_unknown_class_gt", "skipped_unknown_class_detections", "skipped_unknown_class")
    return {"mAP": mean_ap, "per_class": per_class, "names": dict(label_map), "gt_per_class": gt_per_class,
            "counts": {name: counts[name] for name in names}}


def evaluate_files(label_map: str | Path, groundtruth: str | Path, detections: str | Path,
                   exclusions: str | Path | None = None, *, iou_threshold: float = IOU_THRESHOLD,
                   capacity: int = CAPACITY) -> dict:
    """:func:`evaluate_frame_map` on the files (label map pbtxt, GT CSV, detections CSV, optional
    excluded-timestamps CSV); raises :class:`AvaFileError` on a bad file."""
    labels = read_label_map(label_map)
    gt_rows = read_box_csv(groundtruth, scores=False)
    det_rows = read_box_csv(detections, scores=True, require_action=True)
    excluded = read_excluded(exclusions) if exclusions is not None else set()
    return evaluate_frame_map(gt_rows, det_rows, labels, excluded, iou_threshold=iou_threshold,
                              capacity=capacity)


def format_report(result: dict) -> list[str]:
    """Per-class AP lines (name, id, AP), the counts, and the mAP, for people to read."""
    width = max(len(name) for name in result["names"].values())
    lines = []
    for action, ap in result["per_class"].items():
        shown = "  n/a (no ground truth)" if ap is None else f"{ap:8.4f}"
        lines.append(f"{result['names'][action]:<{width}}  {action:>3}  {shown}")
    for name, n in result["counts"].items():
        lines.append(f"{name}: {n}")
    evaluated = sum(ap is not None for ap in result["per_class"].values())
    lines.append(f"mAP@{IOU_THRESHOLD}IOU over {evaluated} classes with ground truth: {result['mAP']:.4f}")
    return lines


def result_json(result: dict) -> str:
    """One JSON line: NaN (no class with ground truth) as null, action ids as string keys."""
    def clean(v):
        return None if v is None or (isinstance(v, float) and math.isnan(v)) else v

    return json.dumps({"mAP": clean(result["mAP"]),
                       "per_class": {str(k): clean(v) for k, v in result["per_class"].items()},
                       "gt_per_class": {str(k): v for k, v in result["gt_per_class"].items()},
                       "counts": result["counts"]})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="mvd-ava-eval", description="AVA frame-level mAP@0.5IOU, the official ActivityNet protocol. "
        "Prints per-class AP lines and skip counts, then one JSON line.")
    parser.add_argument("-l", "--labelmap", required=True, type=Path,
                        help="label map pbtxt (e.g. ava_action_list_v2.2_for_activitynet_2019.pbtxt)")
    parser.add_argument("-g", "--groundtruth", required=True, type=Path, help="ground-truth CSV (ava_val_v2.2.csv)")
    parser.add_argument("-d", "--detections", required=True, type=Path,
                        help="detections CSV: video_id, timestamp, x1, y1, x2, y2, action_id, score")
    parser.add_argument("-e", "--exclusions", type=Path, default=None,
                        help="excluded timestamps CSV (ava_val_excluded_timestamps_v2.2.csv)")
    args = parser.parse_args(argv)
    try:
        result = evaluate_files(args.labelmap, args.groundtruth, args.detections, args.exclusions)
    except AvaFileError as err:
        print(f"mvd-ava-eval: error: {err}", file=sys.stderr)
        return 2
    if result["counts"]["gt_boxes"] == 0:
        print(f"mvd-ava-eval: error: no ground-truth box of a label-map class in {args.groundtruth} is left "
              f"to evaluate ({result['counts']['skipped_unknown_class_gt']} rows of other classes, "
              f"{result['counts']['excluded_gt']} on excluded keyframes); check the label map and the files",
              file=sys.stderr)
        return 2
    print("\n".join(format_report(result)))
    print(result_json(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
