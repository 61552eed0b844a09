"""Losses: MVD feature regression on masked tokens, and the stage-1 pixel losses (VideoMAE, MAE).

All losses are computed in fp32 and are means over elements (the release's nn.*Loss defaults).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

FEATURE_LOSSES = ("smooth_l1", "l1", "l2")


@dataclass(frozen=True)
class FeatureLossConfig:
    """How student predictions are scored against teacher features (spec defaults)."""

    kind: str = "smooth_l1"  # smooth_l1 (beta 1) | l1 | l2
    normalize_targets: bool = False  # non-affine LayerNorm (eps 1e-6) of each teacher token
    image_weight: float = 1.0
    video_weight: float = 1.0

    def __post_init__(self):
        if self.kind not in FEATURE_LOSSES:
            raise ValueError(f"loss kind must be one of {FEATURE_LOSSES}, got {self.kind!r}")


def feature_loss(pred: torch.Tensor, target: torch.Tensor, kind: str = "smooth_l1") -> torch.Tensor:
    """pred, target (B, M, D) -> scalar mean over elements."""
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    pred, target = pred.float(), target.float()
    if kind == "smooth_l1":
        return F.smooth_l1_loss(pred, target, beta=1.0)
    if kind == "l1":
        return F.l1_loss(pred, target)
    if kind == "l2":
        return F.mse_loss(pred, target)
    raise ValueError(f"loss kind must be one of {FEATURE_LOSSES}, got {kind!r}")


def normalize_features(x: torch.Tensor) -> torch.Tensor:
    """Per-token LayerNorm without affine parameters (eps 1e-6), in fp32: (B, N, D) -> (B, N, D)."""
    return F.layer_norm(x.float(), (x.shape[-1],), eps=1e-6)


def distill_loss(pred_img: torch.Tensor | None, pred_vid: torch.Tensor | None, target_img: torch.Tensor | None,
                 target_vid: torch.Tensor | None, cfg: FeatureLossConfig = FeatureLossConfig(),
                 ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """w_img * L(pred_img, target_img) + w_vid * L(pred_vid, target_vid) over the present pairs.

    Targets are teacher features already gathered at the masked positions, (B, M, D_t).
    Returns (loss, parts) with parts "loss_img" / "loss_vid" (unweighted, detached).
    """
    loss, parts = None, {}
    for name, pred, target, weight in (("loss_img", pred_img, target_img, cfg.image_weight),
                                       ("loss_vid", pred_vid, target_vid, cfg.video_weight)):
        if pred is None and target is None:
            continue
        if pred is None or target is None:
            raise ValueError(f"{name}: got a {'target' if pred is None else 'prediction'} without its counterpart")
        if cfg.normalize_targets:
            target = normalize_features(target)
        part = feature_loss(pred, target, cfg.kind)
        parts[name] = part.detach()
        loss = weight * part if loss is None else loss + weight * part
    if loss is None:
        raise ValueError("distill_loss needs at least one (prediction, target) pair")
    return loss, parts


def normalize_patch_pixels(patches: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """VideoMAE per-patch normalisation: (B, N, P, C) pixels -> same, each channel of each patch
    shifted to mean 0 and divided by (unbiased std + eps) over its P pixels."""
    patches = patches.float()
    mean = patches.mean(dim=-2, keepdim=True)
    std = patches.var(dim=-2, unbiased=True, keepdim=True).sqrt()
    return (patches - mean) / (std + eps)


def normalize_pixels_mae(patches: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """MAE norm_pix: (B, L, P) -> each patch vector to mean 0, divided by sqrt(unbiased var + eps)."""
    patches = patches.float()
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, unbiased=True, keepdim=True)
    return (patches - mean) / (var + eps) ** 0.5


def unnormalize_video(video: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Undo the ImageNet normalisation of a (B, 3, ...) clip or frame batch; ``mean`` / ``std`` are
    (3,) tensors on the video's device. Callers keep them as buffers (``VideoMAEPretrain``): a tensor
    built from a Python list at every step would be a pageable host-to-device copy per step, a host
    sync that ``torch.cuda.set_sync_debug_mode("error")`` rejects."""
    shape = (1, -1) + (1,) * (video.dim() - 2)
    return video.float() * std.view(shape) + mean.view(shape)


def pixel_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error over masked-token pixels: pred, target (B, M, P) -> scalar (fp32)."""
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    return F.mse_loss(pred.float(), target.float())
