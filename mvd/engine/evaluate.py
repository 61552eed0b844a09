"""Video-level evaluation: softmax averaged over every view (clip x crop) of a video, top-1/top-5,
gathered across ranks with each view counted once (loaders pad the last batch with repeats)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager

import torch
from torch import nn

from mvd.engine import distributed as D

log = logging.getLogger("mvd.train")


@torch.inference_mode()
def evaluate(model: nn.Module, loader, num_classes: int,
             autocast: Callable[[], AbstractContextManager]) -> dict:
    """Returns {"top1", "top5" (percent), "videos", "views"} over the loader's whole split.

    Eval batches carry ``index`` (the video), ``clip``, ``crop`` and ``valid`` (False for the
    padding of the last batch); a view is counted once however often it is seen."""
    was_training = model.training
    model.eval()
    rows, probs = [], []
    for batch in loader:
        with autocast():
            logits = model(batch["video"])
        probs.append(logits.float().softmax(dim=-1))  # (B, K)
        b = logits.shape[0]
        zeros = torch.zeros(b, dtype=torch.long, device=logits.device)
        rows.append(torch.stack([batch["index"].long(), batch.get("clip", zeros).long(),
                                 batch.get("crop", zeros).long(), batch["label"].long(),
                                 batch.get("valid", zeros == 0).long()], dim=1))  # (B, 5)
    model.train(was_training)
    # Every rank's views to every rank, gathered on the device the views were scored on (NCCL
    # gathers CUDA tensors), then one transfer to the host.
    device = probs[0].device if probs else _device(model)
    row = D.all_gather_rows(torch.cat(rows) if rows else
                            torch.zeros(0, 5, dtype=torch.long, device=device)).cpu()  # (V, 5)
    prob = D.all_gather_rows(torch.cat(probs) if probs else
                             torch.zeros(0, num_classes, device=device)).cpu()  # (V, K)
    keep = row[:, 4] == 1
    row, prob = row[keep], prob[keep]
    _, first = _unique_first(row[:, :3])  # one per (video, clip, crop)
    row, prob = row[first], prob[first]
    ids, inverse = torch.unique(row[:, 0], return_inverse=True)
    score = torch.zeros(len(ids), num_classes).index_add_(0, inverse, prob)
    count = torch.zeros(len(ids)).index_add_(0, inverse, torch.ones(len(inverse)))
    score = score / count[:, None]  # softmax averaged over the video's views
    truth = torch.zeros(len(ids), dtype=torch.long).index_copy_(0, inverse, row[:, 3])
    k = min(5, num_classes)
    top = score.topk(k, dim=1).indices
    n = max(len(ids), 1)
    top1 = (top[:, 0] == truth).sum().item() * 100.0 / n
    top5 = (top == truth[:, None]).any(dim=1).sum().item() * 100.0 / n
    return {"top1": top1, "top5": top5, "videos": len(ids), "views": len(row)}


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
