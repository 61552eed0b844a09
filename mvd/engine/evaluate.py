"""Video-level evaluation: softmax averaged over every view (clip x crop) of a video, top-1/top-5,
gathered across ranks with each view counted once (loaders pad the last batch with repeats)."""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager

import torch
from torch import nn

from mvd.engine import distributed as D

log = logging.getLogger("mvd.train")


def _video_ids(batch: dict) -> torch.Tensor:
    for key in ("video_index", "video_idx", "vid"):
        if key in batch:
            return batch[key]
    return batch["index"]


def _view_ids(batch: dict) -> torch.Tensor:
    for key in ("view_index", "index"):
        if key in batch:
            return batch[key]
    raise KeyError("eval batch has no 'index'")


@torch.inference_mode()
def evaluate(model: nn.Module, loader, num_classes: int, autocast: AbstractContextManager
             ) -> dict:
    """Returns {"top1", "top5" (percent), "videos", "views"} for the loader's whole split."""
    was_training = model.training
    model.eval()
    views, videos, labels, probs = [], [], [], []
    for batch in loader:
        with autocast:
            logits = model(batch["video"])
        probs.append(logits.float().softmax(dim=-1))  # (B, K)
        views.append(_view_ids(batch).reshape(-1))
        videos.append(_video_ids(batch).reshape(-1))
        labels.append(batch["label"].reshape(-1))
    model.train(was_training)
    # One transfer at the end, then every rank's views to every rank.
    local = [torch.cat(x).cpu() if x else torch.empty(0) for x in (views, videos, labels, probs)]
    parts = D.all_gather_objects(local)
    view = torch.cat([p[0].long() for p in parts])
    video = torch.cat([p[1].long() for p in parts])
    label = torch.cat([p[2].long() for p in parts])
    prob = torch.cat([p[3].reshape(-1, num_classes) for p in parts])
    # Count each view once: the padding repeats carry the view id of a view already seen.
    _, first = _unique_first(view)
    view, video, label, prob = view[first], video[first], label[first], prob[first]
    ids, inverse = torch.unique(video, return_inverse=True)
    score = torch.zeros(len(ids), num_classes).index_add_(0, inverse, prob)
    count = torch.zeros(len(ids)).index_add_(0, inverse, torch.ones(len(inverse)))
    score = score / count[:, None]
    truth = torch.zeros(len(ids), dtype=torch.long).index_copy_(0, inverse, label)
    k = min(5, num_classes)
    top = score.topk(k, dim=1).indices
    top1 = (top[:, 0] == truth).float().mean().item() * 100 if len(ids) else 0.0
    top5 = (top == truth[:, None]).any(dim=1).float().mean().item() * 100 if len(ids) else 0.0
    return {"top1": top1, "top5": top5, "videos": len(ids), "views": len(view)}


def _unique_first(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(unique values, index of each one's first occurrence in x)."""
    uniq, inverse = torch.unique(x, return_inverse=True)
    order = torch.arange(len(x))
    first = torch.full((len(uniq),), len(x), dtype=torch.long).scatter_reduce_(
        0, inverse, order, reduce="amin")
    return uniq, first
