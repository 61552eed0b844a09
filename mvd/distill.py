"""One MVD step's forward: frozen teachers' features of the full clip -> regression targets for
the student's masked tokens. Shared by the training engine and the benchmarks."""

from __future__ import annotations

import torch
from torch import nn

from mvd.losses import FeatureLossConfig, distill_loss
from mvd.masking import gather_tokens, split_indices


def _core(model: nn.Module) -> nn.Module:
    """The model inside DDP / torch.compile / Frozen wrappers (for reading its attributes)."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def image_teacher_features(teacher: nn.Module, teacher_video: torch.Tensor, frame_stride: int) -> torch.Tensor:
    """Frames 0, s, 2s, ... of (B, 3, T, H, W) through the image teacher -> (B, T/s * L, D), (t, h, w) order."""
    if teacher_video.dim() != 5:
        raise ValueError(f"teacher_video must be (B, 3, T, H, W), got shape {tuple(teacher_video.shape)}")
    frames = teacher_video[:, :, ::frame_stride]  # (B, 3, T', H, W)
    B, C, T, H, W = frames.shape
    feats = teacher(frames.transpose(1, 2).reshape(B * T, C, H, W))  # (B*T', L, D)
    return feats.reshape(B, T * feats.shape[1], feats.shape[2])


def _video_teacher_input(teacher: nn.Module, video: torch.Tensor, teacher_video: torch.Tensor | None) -> torch.Tensor:
    size = _core(teacher).patch_embed.img_size
    for view in (video, teacher_video):
        if view is not None and view.shape[-1] == size:
            return view
    raise ValueError(f"the video teacher was built for {size}px input but neither the student view "
                     f"{tuple(video.shape)} nor the teacher view has that size")


def _check_target(name: str, feats: torch.Tensor, pred: torch.Tensor, num_tokens: int) -> None:
    if feats.shape[1] != num_tokens or feats.shape[2] != pred.shape[2]:
        raise ValueError(f"{name} teacher gives {tuple(feats.shape[1:])} (tokens, dim) but the student needs "
                         f"({num_tokens}, {pred.shape[2]}): match the teacher's grid to the student's and "
                         f"the student's target dim to the teacher's width")


def mvd_forward(student: nn.Module, image_teacher: nn.Module | None, video_teacher: nn.Module | None,
                video: torch.Tensor, teacher_video: torch.Tensor | None, mask: torch.Tensor, *,
                loss_cfg: FeatureLossConfig = FeatureLossConfig(), num_masked: int | None = None,
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Student forward + teacher targets + loss.

    video (B, 3, T, S, S) student view; teacher_video (B, 3, T, S_t, S_t) teacher view (None:
    use ``video``); mask (B, N) bool, True = masked. Teachers run under ``torch.inference_mode``
    (the image teacher on frames 0, tubelet, 2*tubelet, ...); either may be None if the student
    was built without that decoder. Returns (loss, parts) with detached "loss_img" / "loss_vid".
    ``num_masked``: masked tokens per clip when the caller knows it (no host sync; see
    ``ViTEncoder.mask_indices``). Precision is the caller's: run it under
    ``mvd.engine.precision.Precision.autocast()``, which covers student and teachers alike.
    """
    core = _core(student)
    teacher_video = video if teacher_video is None else teacher_video
    pred_img, pred_vid = student(video, mask, num_masked)
    for name, pred, teacher in (("image", pred_img, image_teacher), ("video", pred_vid, video_teacher)):
        if (pred is None) != (teacher is None):
            raise ValueError(f"the student {'has no' if pred is None else 'has a'} {name} decoder but "
                             f"{'a' if teacher is not None else 'no'} {name} teacher was given; build the student "
                             f"with targets matching the teachers")
    num_masked = (pred_img if pred_img is not None else pred_vid).shape[1]
    _, ids_masked = split_indices(mask, num_masked)

    with torch.inference_mode():
        target_img = target_vid = None
        if image_teacher is not None:
            feats = image_teacher_features(image_teacher, teacher_video, core.patch_embed.tubelet_size)
            _check_target("image", feats, pred_img, core.num_patches)
            target_img = gather_tokens(feats, ids_masked)  # (B, M, D_img)
        if video_teacher is not None:
            feats = video_teacher(_video_teacher_input(video_teacher, video, teacher_video))
            _check_target("video", feats, pred_vid, core.num_patches)
            target_vid = gather_tokens(feats, ids_masked)  # (B, M, D_vid)
    # inference tensors cannot be saved for backward: clone them into ordinary tensors
    target_img = None if target_img is None else target_img.clone()
    target_vid = None if target_vid is None else target_vid.clone()
    return distill_loss(pred_img, pred_vid, target_img, target_vid, loss_cfg)
