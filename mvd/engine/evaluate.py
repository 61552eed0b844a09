"""Video-level classification evaluation: softmax averaged over every view (clip x crop) of a
video, gathered across ranks with each view counted once (loaders pad the last batch with
repeats); top-1/top-5 over the videos, accuracy per class, and every video's top-5 predictions
(``predictions.csv``)."""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from mvd.engine import distributed as D

log = logging.getLogger("mvd.train")

PREDICTIONS_NAME = "predictions.csv"  # per video: key, label, top-5 classes and probabilities
TOP_K = 5


@dataclass(frozen=True)
class VideoScores:
    """Every video of the split once, in video-index order."""

    index: torch.Tensor  # (V,) int64 the video's index in the split
    label: torch.Tensor  # (V,) int64
    prob: torch.Tensor  # (V, K) float32 softmax averaged over the video's views
    keys: list[str]  # (V,) the video's sample key
    views: int  # views scored (each counted once)


@torch.inference_mode()
def score_videos(model: nn.Module, loader, num_classes: int,
                 autocast: Callable[[], AbstractContextManager]) -> VideoScores:
    """The loader's whole split scored on every rank's share and gathered to every rank (a
    collective: every rank calls it).

    Eval batches carry ``index`` (the video), ``clip``, ``crop``, ``key`` and ``valid`` (False
    for the padding of the last batch); a view is counted once however often it is seen."""
    was_training = model.training
    model.eval()
    rows, probs, keys = [], [], []
    for batch in loader:
        with autocast():
            logits = model(batch["video"])
        probs.append(logits.float().softmax(dim=-1))  # (B, K)
        b = logits.shape[0]
        zeros = torch.zeros(b, dtype=torch.long, device=logits.device)
        rows.append(torch.stack([batch["index"].long(), batch.get("clip", zeros).long(),
                                 batch.get("crop", zeros).long(), batch["label"].long(),
                                 batch.get("valid", zeros == 0).long()], dim=1))  # (B, 5)
        keys += batch["key"]  # host strings, one per view
    model.train(was_training)
    # Every rank's views to every rank, gathered on the device the views were scored on (NCCL
    # gathers CUDA tensors), then one transfer to the host.
    device = probs[0].device if probs else _device(model)
    row = D.all_gather_rows(torch.cat(rows) if rows else
                            torch.zeros(0, 5, dtype=torch.long, device=device)).cpu()  # (V, 5)
    prob = D.all_gather_rows(torch.cat(probs) if probs else
                             torch.zeros(0, num_classes, device=device)).cpu()  # (V, K)
    local = torch.cat(rows)[:, 0].cpu().tolist() if rows else []  # one transfer, after the loop
    key_of = {}
    for part in D.all_gather_objects(dict(zip(local, keys))):  # video index -> key, every rank's
        key_of.update(part)
    keep = row[:, 4] == 1
    row, prob = row[keep], prob[keep]
    _, first = _unique_first(row[:, :3])  # one per (video, clip, crop)
    row, prob = row[first], prob[first]
    ids, inverse = torch.unique(row[:, 0], return_inverse=True)
    score = torch.zeros(len(ids), num_classes).index_add_(0, inverse, prob)
    count = torch.zeros(len(ids)).index_add_(0, inverse, torch.ones(len(inverse)))
    truth = torch.zeros(len(ids), dtype=torch.long).index_copy_(0, inverse, row[:, 3])
    return VideoScores(index=ids, label=truth, prob=score / count[:, None],
                       keys=[key_of[i] for i in ids.tolist()], views=len(row))


def summarise(scores: VideoScores, classes: list[str]) -> dict:
    """{"top1", "top5" (percent of videos), "videos", "views", "mean_class_top1" (the mean over
    the classes that have videos), "per_class" {name: {"videos", "top1", "top5"}} (top-1/top-5
    None for a class without videos)}."""
    k = min(TOP_K, len(classes))
    top = scores.prob.topk(k, dim=1).indices  # (V, k)
    hit1 = top[:, 0] == scores.label
    hit5 = (top == scores.label[:, None]).any(dim=1)
    n = max(len(scores.label), 1)
    videos = torch.bincount(scores.label, minlength=len(classes))
    right1 = torch.bincount(scores.label[hit1], minlength=len(classes))
    right5 = torch.bincount(scores.label[hit5], minlength=len(classes))
    per_class = {}
    for c, name in enumerate(classes):
        v = int(videos[c])
        per_class[name] = {"videos": v, "top1": 100.0 * int(right1[c]) / v if v else None,
                           "top5": 100.0 * int(right5[c]) / v if v else None}
    seen = [p["top1"] for p in per_class.values() if p["top1"] is not None]
    return {"top1": int(hit1.sum()) * 100.0 / n, "top5": int(hit5.sum()) * 100.0 / n,
            "videos": len(scores.label), "views": scores.views,
            "mean_class_top1": sum(seen) / len(seen) if seen else None, "per_class": per_class}


def write_predictions(path: Path, scores: VideoScores, classes: list[str]) -> int:
    """``path`` as CSV, one row per video: key, label, label_name, then for k = 1..5 class_k,
    name_k, prob_k (the top-5 of the view-averaged softmax, highest first). Returns the rows."""
    k = min(TOP_K, len(classes))
    prob, cls = scores.prob.topk(k, dim=1)
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["key", "label", "label_name"] + [f"{c}_{i}" for i in range(1, k + 1)
                                                       for c in ("class", "name", "prob")])
        for key, label, ps, cs in zip(scores.keys, scores.label.tolist(), prob.tolist(), cls.tolist()):
            row = [key, label, classes[label]]
            for p, c in zip(ps, cs):
                row += [c, classes[c], f"{p:.6g}"]
            out.writerow(row)
    return len(scores.keys)


def evaluate(model: nn.Module, loader, classes: list[str],
             autocast: Callable[[], AbstractContextManager], *,
             predictions: Path | None = None, is_main: bool = True) -> dict:
    """:func:`summarise` of the loader's whole split on every rank; rank 0 (``is_main``) writes
    ``predictions`` (:func:`write_predictions`) when given. A collective."""
    scores = score_videos(model, loader, len(classes), autocast)
    if predictions is not None and is_main:
        write_predictions(predictions, scores, classes)
    return summarise(scores, classes)


def _device(model: nn.Module) -> torch.device:
    """Where the model computes (for a rank that got no eval batch); CPU for a parameterless one."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _unique_first(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unique rows of x (N, C) and the index of each one's first occurrence."""
    uniq, inverse = torch.unique(x, dim=0, return_inverse=True)
    first = torch.full((len(uniq),), len(x), dtype=torch.long).scatter_reduce_(
        0, inverse, torch.arange(len(x)), reduce="amin")
    return uniq, first
