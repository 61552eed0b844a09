"""The fine-tuning ViT: all tokens, mean pooling, fc_norm, (dropout), linear head."""

from __future__ import annotations

import torch
from torch import nn

from mvd.layers import LN_EPS
from mvd.models.vit import ViTEncoder


class VideoViT(ViTEncoder):
    """``model(video (B, 3, T, H, W)) -> logits (B, num_classes)``.

    Same tubelet embedding and (by default) 3D sincos table as the student; no final norm on the tokens (the
    release's use_mean_pooling layout): mean over tokens -> ``fc_norm`` -> dropout -> ``head``,
    whose initial weights are scaled by ``head_init_scale``.

    ``pos_embed``: ``"sincos_3d"`` (MVD) or ``"sinusoid_1d"`` (VideoMAE's table, which VideoMAE's
    fine-tuned models and encoders use); ``load_checkpoint`` switches to the table a checkpoint
    says it was trained with and reports it.
    """

    # left at their fresh init when loading a checkpoint that has none of them (a pretrained encoder)
    fresh_init_prefixes = ("head.", "fc_norm.")
    pos_embed_kinds = ("sincos_3d", "sinusoid_1d")

    def __init__(self, *, img_size: int = 224, patch_size: int = 16, num_frames: int = 16, tubelet_size: int = 2,
                 embed_dim: int = 768, depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0,
                 drop_path_rate: float = 0.1, num_classes: int = 400, head_drop_rate: float = 0.0,
                 head_init_scale: float = 0.001, pos_embed: str = "sincos_3d", in_chans: int = 3,
                 grad_checkpointing: bool = False):
        super().__init__(img_size=img_size, patch_size=patch_size, num_frames=num_frames, tubelet_size=tubelet_size,
                         embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio,
                         drop_path_rate=drop_path_rate, pos_kind=pos_embed, final_norm=False, in_chans=in_chans,
                         grad_checkpointing=grad_checkpointing)
        self.num_classes = num_classes
        self.fc_norm = nn.LayerNorm(embed_dim, eps=LN_EPS)
        self.head_drop = nn.Dropout(head_drop_rate)
        self.head = nn.Linear(embed_dim, num_classes)
        self.init_weights("trunc_normal")
        with torch.no_grad():
            self.head.weight.mul_(head_init_scale)
            self.head.bias.mul_(head_init_scale)

    def forward_features(self, video: torch.Tensor) -> torch.Tensor:
        """video -> pooled, normalised features (B, D)."""
        x = self.forward_blocks(self.embed(video))  # (B, N, D)
        return self.fc_norm(x.mean(dim=1))

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.head(self.head_drop(self.forward_features(video)))
