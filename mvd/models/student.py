"""The MVD student: encoder over visible tokens + one feature decoder per teacher."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mvd.masking import gather_tokens
from mvd.models.vit import MaskedDecoder, ViTEncoder

TARGETS = ("image", "video")


class MVDStudent(ViTEncoder):
    """``student(video, mask) -> (pred_img, pred_vid)``.

    video (B, 3, T, H, W); mask (B, N) bool, True = masked, N = T/tubelet * (H/p)^2, the same
    masked count M in every sample. Each prediction is (B, M, target_dim) in raster order of the
    masked positions, or None for a teacher the student was built without (``targets``).
    The encoder has a final LayerNorm; both decoders (``decoder_img``, ``decoder_vid``) share the
    architecture and have their own weights, mask token and 3D sincos table.
    """

    def __init__(self, *, img_size: int = 224, patch_size: int = 16, num_frames: int = 16, tubelet_size: int = 2,
                 embed_dim: int = 768, depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0,
                 drop_path_rate: float = 0.1, decoder_depth: int = 2, decoder_embed_dim: int | None = None,
                 decoder_num_heads: int | None = None, image_target_dim: int = 768, video_target_dim: int = 768,
                 targets: Sequence[str] = TARGETS, in_chans: int = 3, grad_checkpointing: bool = False):
        super().__init__(img_size=img_size, patch_size=patch_size, num_frames=num_frames, tubelet_size=tubelet_size,
                         embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio,
                         drop_path_rate=drop_path_rate, pos_kind="sincos_3d", final_norm=True, in_chans=in_chans,
                         grad_checkpointing=grad_checkpointing)
        targets = tuple(targets)
        if not targets or any(t not in TARGETS for t in targets) or len(set(targets)) != len(targets):
            raise ValueError(f"targets must be a non-empty subset of {TARGETS}, got {targets}")
        self.targets = targets

        def decoder(out_dim: int) -> MaskedDecoder:
            # the release gives the decoders the encoder's drop-path rate, spread over their own depth
            return MaskedDecoder(embed_dim, decoder_embed_dim or embed_dim, decoder_depth,
                                 decoder_num_heads or num_heads, out_dim, pos_kind="sincos_3d", grid=self.grid,
                                 mlp_ratio=mlp_ratio, drop_path_rate=drop_path_rate,
                                 grad_checkpointing=grad_checkpointing)

        self.decoder_img = decoder(image_target_dim) if "image" in targets else None
        self.decoder_vid = decoder(video_target_dim) if "video" in targets else None
        self.init_weights("xavier")
        for dec in (self.decoder_img, self.decoder_vid):
            if dec is not None:
                dec.init_weights()

    def weight_decay_tokens(self) -> set[str]:
        """Learned tokens that get weight decay: both decoders' mask tokens, as in the MVD release
        (its skip list names ``mask_token``, matched by exact name, and its parameters are
        ``mask_token_img`` / ``mask_token_vid``, so AdamW decays them)."""
        return {f"{name}.mask_token" for name in ("decoder_img", "decoder_vid")
                if getattr(self, name) is not None}

    def forward_encoder(self, video: torch.Tensor, ids_visible: torch.Tensor) -> torch.Tensor:
        """video (B, 3, T, H, W), ids_visible (B, N_vis) -> encoded visible tokens (B, N_vis, D)."""
        x = self.embed(video)  # (B, N, D)
        x = gather_tokens(x, ids_visible)  # (B, N_vis, D)
        return self.norm(self.forward_blocks(x))

    def forward_decoder(self, x: torch.Tensor, ids_visible: torch.Tensor,
                        ids_masked: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """x (B, N_vis, D) -> (pred_img, pred_vid), each (B, N_mask, target_dim) or None."""
        return tuple(None if dec is None else dec(x, ids_visible, ids_masked)
                     for dec in (self.decoder_img, self.decoder_vid))

    def forward(self, video: torch.Tensor, mask: torch.Tensor, num_masked: int | None = None
                ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``num_masked``: masked tokens per sample if known (no host sync), see ``mask_indices``."""
        ids_visible, ids_masked = self.mask_indices(video, mask, num_masked)
        x = self.forward_encoder(video, ids_visible)
        return self.forward_decoder(x, ids_visible, ids_masked)
