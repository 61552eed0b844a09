"""The AVA action detector: the fine-tuning ViT encoder + an RoIAlign head on person boxes.

VideoMAE's AVA head (VideoMAE-Action-Detection ``modeling_finetune.py``, after AlphAction /
SlowFast): the last block's tokens through the encoder's final LayerNorm, laid out as a
(B, D, T', H', W') volume, averaged over time, RoIAlign (7 x 7) of every box, max-pooled over the
7 x 7 bins, then (dropout and) one linear layer giving per-class logits scored with a sigmoid.

Choices, and where they come from:
- the final ``norm`` is kept (VideoMAE's AVA model applies ``self.norm`` before pooling, and an
  MVD student's encoder has one, so ``model.init=<student run>`` loads it; a fine-tuned
  classifier, which has ``fc_norm`` instead, leaves it at its fresh init);
- ``torchvision.ops.roi_align(..., aligned=True)`` (SlowFast / detectron2's half-pixel
  alignment; AlphAction's ROIAlign3d is the legacy unaligned variant), ``sampling_ratio=0``
  (adaptive, as both references), on the token grid: a box in [0, 1] view coordinates spans
  ``x * W'`` grid units;
- dropout before the head: VideoMAE has none (0.0 here by default); SlowFast's AVA configs use 0.5.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.ops import roi_align

from mvd.models.classifier import VideoViT
from mvd.models.vit import ViTEncoder

POOL = 7  # RoIAlign output bins per side (VideoMAE's POOLER_RESOLUTION)


class VideoViTDetector(ViTEncoder):
    """``model(video (B, 3, T, H, W), boxes (K, 5)) -> logits (K, num_classes)``.

    ``boxes`` rows are ``[b, x1, y1, x2, y2]``: the clip's row in the batch (as a float) and the
    box corners in [0, 1] coordinates of the (square) view. Same encoder, tables and loading as
    ``video_vit``: an MVD student or a fine-tuned classifier initialises everything but
    ``action_head`` (and ``norm`` when the checkpoint has none). The head has its own name so a
    classifier's ``head`` (400 Kinetics classes) is ignored, not a shape mismatch.
    """

    fresh_init_prefixes = ("action_head.", "norm.")
    pos_embed_kinds = VideoViT.pos_embed_kinds

    def __init__(self, *, img_size: int = 224, patch_size: int = 16, num_frames: int = 16, tubelet_size: int = 2,
                 embed_dim: int = 768, depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0,
                 drop_path_rate: float = 0.2, num_classes: int = 80, head_drop_rate: float = 0.0,
                 head_init_scale: float = 0.001, pos_embed: str = "sincos_3d", in_chans: int = 3,
                 grad_checkpointing: bool = False):
        super().__init__(img_size=img_size, patch_size=patch_size, num_frames=num_frames, tubelet_size=tubelet_size,
                         embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio,
                         drop_path_rate=drop_path_rate, pos_kind=pos_embed, final_norm=True, in_chans=in_chans,
                         grad_checkpointing=grad_checkpointing)
        self.num_classes = num_classes
        self.head_drop = nn.Dropout(head_drop_rate)
        self.action_head = nn.Linear(embed_dim, num_classes)
        self.init_weights("trunc_normal")
        with torch.no_grad():
            self.action_head.weight.mul_(head_init_scale)
            self.action_head.bias.mul_(head_init_scale)

    def feature_map(self, video: torch.Tensor) -> torch.Tensor:
        """video (B, 3, T, H, W) -> the time-averaged token map (B, D, H', W')."""
        x = self.norm(self.forward_blocks(self.embed(video)))  # (B, N, D)
        t, h, w = self.grid
        x = x.reshape(x.shape[0], t, h, w, x.shape[-1])  # (B, T', H', W', D)
        return x.mean(dim=1).permute(0, 3, 1, 2)  # (B, D, H', W')

    def rois(self, boxes: torch.Tensor) -> torch.Tensor:
        """(K, 5) [b, x1, y1, x2, y2] in view coordinates -> the same in token-grid units."""
        if boxes.ndim != 2 or boxes.shape[1] != 5:
            raise ValueError(f"boxes must be (K, 5) rows [batch_row, x1, y1, x2, y2], got {tuple(boxes.shape)}")
        _, h, w = self.grid
        b, x1, y1, x2, y2 = boxes.unbind(1)  # python-scalar scales: no host-to-device copy
        return torch.stack([b, x1 * w, y1 * h, x2 * w, y2 * h], dim=1)

    def forward_features(self, video: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """-> one feature per box (K, D): RoIAlign on the token map, max over the 7 x 7 bins."""
        fmap = self.feature_map(video)  # (B, D, H', W')
        rois = self.rois(boxes).to(fmap.dtype)
        pooled = roi_align(fmap, rois, output_size=POOL, spatial_scale=1.0, sampling_ratio=0,
                           aligned=True)  # (K, D, 7, 7)
        return pooled.amax(dim=(2, 3))  # (K, D)

    def forward(self, video: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        return self.action_head(self.head_drop(self.forward_features(video, boxes)))
