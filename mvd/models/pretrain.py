"""Stage-1 models that train the teachers: VideoMAE (clips, tube masking) and MAE (frames).

``model(x, mask) -> loss`` (a scalar, fp32). The steps are separate methods: ``forward_encoder``,
``forward_decoder``, ``patchify``, ``forward_loss``. The encoders carry the teacher classes' keys
(``patch_embed.*``, ``blocks.*``; plus ``norm.*`` and ``decoder.*``, which a teacher ignores), so
``load_checkpoint(teacher, pretrain_model.state_dict())`` gives the teacher.
"""

from __future__ import annotations

import torch

from dali_pipelines.normalize import IMAGENET_MEAN, IMAGENET_STD
from mvd.losses import normalize_patch_pixels, normalize_pixels_mae, pixel_loss, unnormalize_video
from mvd.masking import gather_tokens
from mvd.models.vit import MaskedDecoder, ViTEncoder


class VideoMAEPretrain(ViTEncoder):
    """VideoMAE: encoder over visible tubelets (1D sinusoid table, final norm) + pixel decoder
    (bias-free projection, 4 blocks) predicting per-patch-normalised pixels of the masked tubelets.

    ``model(video (B, 3, T, H, W) normalised, mask (B, N) bool) -> loss``. ``norm_pix_loss=False``
    predicts the raw [0, 1] pixels instead; ``final_norm=False`` drops the encoder's last
    LayerNorm (both as Hugging Face's VideoMAEForPreTraining may be configured).
    """

    def __init__(self, *, img_size: int = 224, patch_size: int = 16, num_frames: int = 16, tubelet_size: int = 2,
                 embed_dim: int = 768, depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0,
                 drop_path_rate: float = 0.0, decoder_depth: int = 4, decoder_embed_dim: int = 384,
                 decoder_num_heads: int = 6, norm_pix_loss: bool = True, final_norm: bool = True, in_chans: int = 3,
                 grad_checkpointing: bool = False):
        super().__init__(img_size=img_size, patch_size=patch_size, num_frames=num_frames, tubelet_size=tubelet_size,
                         embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio,
                         drop_path_rate=drop_path_rate, pos_kind="sinusoid_1d", final_norm=final_norm,
                         in_chans=in_chans, grad_checkpointing=grad_checkpointing)
        self.norm_pix_loss = norm_pix_loss
        self.decoder = MaskedDecoder(embed_dim, decoder_embed_dim, decoder_depth, decoder_num_heads,
                                     in_chans * tubelet_size * patch_size ** 2, pos_kind="sinusoid_1d", grid=self.grid,
                                     proj_bias=False, mlp_ratio=mlp_ratio, drop_path_rate=drop_path_rate,
                                     grad_checkpointing=grad_checkpointing)
        # The pixel target's ImageNet constants as buffers (not saved): they follow the model to its
        # device (and into the dry run's fake tensors), so no step builds them from host lists.
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD), persistent=False)
        self.init_weights("xavier")
        self.decoder.init_weights()

    def patchify(self, video: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) -> (B, N, tubelet*p*p, C), tokens in raster (t, h, w), pixels (dt, dh, dw)."""
        B, C, T, H, W = video.shape
        u, p = self.patch_embed.tubelet_size, self.patch_embed.patch_size
        x = video.reshape(B, C, T // u, u, H // p, p, W // p, p)
        return x.permute(0, 2, 4, 6, 3, 5, 7, 1).reshape(B, -1, u * p * p, C)

    def forward_encoder(self, video: torch.Tensor, ids_visible: torch.Tensor) -> torch.Tensor:
        """-> encoded visible tokens (B, N_vis, D)."""
        x = gather_tokens(self.embed(video), ids_visible)
        return self.norm(self.forward_blocks(x))

    def forward_decoder(self, x: torch.Tensor, ids_visible: torch.Tensor, ids_masked: torch.Tensor) -> torch.Tensor:
        """-> pixel predictions (B, N_mask, tubelet*p*p*C)."""
        return self.decoder(x, ids_visible, ids_masked)

    def forward_loss(self, video: torch.Tensor, pred: torch.Tensor, ids_masked: torch.Tensor) -> torch.Tensor:
        """MSE against the masked tubelets' pixels (un-normalised, then normalised per patch and channel
        when ``norm_pix_loss``)."""
        with torch.no_grad():
            target = self.patchify(unnormalize_video(video, self.pixel_mean, self.pixel_std))  # (B, N, P, C) in [0, 1]
            if self.norm_pix_loss:
                target = normalize_patch_pixels(target)
            target = gather_tokens(target.flatten(2), ids_masked)  # (B, N_mask, P*C)
        return pixel_loss(pred, target)

    def forward(self, video: torch.Tensor, mask: torch.Tensor, num_masked: int | None = None) -> torch.Tensor:
        """``num_masked``: masked tubelets per clip if known (no host sync), see ``mask_indices``."""
        ids_visible, ids_masked = self.mask_indices(video, mask, num_masked)
        pred = self.forward_decoder(self.forward_encoder(video, ids_visible), ids_visible, ids_masked)
        return self.forward_loss(video, pred, ids_masked)


class MAEPretrain(ViTEncoder):
    """MAE: image encoder over visible patches (cls token, 2D sincos table, final norm) + decoder
    (8 blocks of width 512 by default) predicting the masked patches' pixels, normalised per patch
    when ``norm_pix_loss`` (MAE's recommended recipe).

    ``model(frames (B, 3, H, W) normalised, mask (B, L) bool) -> loss``; masks are random
    (``dali_pipelines.masks.random_mask``, ratio 0.75 in the recipe).
    """

    def __init__(self, *, img_size: int = 224, patch_size: int = 16, num_frames: int | None = None,
                 tubelet_size: int = 2, embed_dim: int = 768, depth: int = 12, num_heads: int = 12,
                 mlp_ratio: float = 4.0, drop_path_rate: float = 0.0, decoder_depth: int = 8,
                 decoder_embed_dim: int = 512, decoder_num_heads: int = 16, norm_pix_loss: bool = True,
                 in_chans: int = 3, grad_checkpointing: bool = False):
        super().__init__(img_size=img_size, patch_size=patch_size, num_frames=None, tubelet_size=tubelet_size,
                         embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio,
                         drop_path_rate=drop_path_rate, pos_kind="sincos_2d", cls_token=True, final_norm=True,
                         in_chans=in_chans, grad_checkpointing=grad_checkpointing)
        self.norm_pix_loss = norm_pix_loss
        self.decoder = MaskedDecoder(embed_dim, decoder_embed_dim, decoder_depth, decoder_num_heads,
                                     in_chans * patch_size ** 2, pos_kind="sincos_2d", grid=self.grid, cls_token=True,
                                     mlp_ratio=mlp_ratio, grad_checkpointing=grad_checkpointing)
        self.init_weights("xavier", patch_init="xavier")  # MAE's patch embedding init
        self.decoder.init_weights(truncate_mask_token=False)  # MAE: normal_(mask_token, std=.02)

    def patchify(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, L, p*p*C), patches in raster (h, w), pixels (dh, dw, c)."""
        B, C, H, W = frames.shape
        p = self.patch_embed.patch_size
        x = frames.reshape(B, C, H // p, p, W // p, p)
        return x.permute(0, 2, 4, 3, 5, 1).reshape(B, (H // p) * (W // p), p * p * C)

    def forward_encoder(self, frames: torch.Tensor, ids_visible: torch.Tensor) -> torch.Tensor:
        """-> (B, 1 + L_vis, D): cls token then the encoded visible patches."""
        x = self.prepend_cls(gather_tokens(self.embed(frames), ids_visible))
        return self.norm(self.forward_blocks(x))

    def forward_decoder(self, x: torch.Tensor, ids_visible: torch.Tensor, ids_masked: torch.Tensor) -> torch.Tensor:
        """-> pixel predictions (B, L_mask, p*p*C)."""
        return self.decoder(x, ids_visible, ids_masked)

    def forward_loss(self, frames: torch.Tensor, pred: torch.Tensor, ids_masked: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target = self.patchify(frames.float())
            if self.norm_pix_loss:
                target = normalize_pixels_mae(target)
            target = gather_tokens(target, ids_masked)
        return pixel_loss(pred, target)

    def forward(self, frames: torch.Tensor, mask: torch.Tensor, num_masked: int | None = None) -> torch.Tensor:
        """``num_masked``: masked patches per frame if known (no host sync), see ``mask_indices``."""
        ids_visible, ids_masked = self.mask_indices(frames, mask, num_masked)
        pred = self.forward_decoder(self.forward_encoder(frames, ids_visible), ids_visible, ids_masked)
        return self.forward_loss(frames, pred, ids_masked)
