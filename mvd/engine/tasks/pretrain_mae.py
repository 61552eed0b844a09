"""Task ``pretrain_mae`` (stage 1, the image teacher): MAE on single frames of the clips."""

from __future__ import annotations

import torch

from dali_pipelines.masks import num_to_mask, random_mask
from mvd.engine.tasks.base import Task, init_weights, model_kwargs
from mvd.engine.tasks.pretrain_mvd import train_loader
from mvd.models import create_model


class PretrainMAE(Task):
    """Stage 1, image teacher: MAE on single frames of the clips (random masking).

    Every second frame of each clip is an image (the frames the image teacher sees in stage 2),
    so B clips give B x T/2 images, each with its own random mask drawn from a generator seeded
    by (seed, rank, micro-step): reproducible on resume without extra state.
    """

    name = "pretrain_mae"

    @classmethod
    def build(cls, cfg, device, rank=0, *, precision=None, load=True, classes=None):
        model = create_model(cfg.model.name, **model_kwargs(cfg, img_size=cfg.data.input_size))
        return cls(cfg, init_weights(model.to(device), cfg, load), rank=rank)

    def train_loader(self, info):
        # the clip loader (its tube masks are not used: each frame draws its own random mask)
        return train_loader(self.cfg, info, self.patch)

    def loss(self, model, batch, micro_step):
        video = batch["video"]  # (B, 3, T, H, W)
        frames = video[:, :, ::2].transpose(1, 2).flatten(0, 1)  # (B*T/2, 3, H, W)
        g = torch.Generator(device=frames.device)
        g.manual_seed((self.cfg.seed * 1_000_003 + self.rank) * 1_000_003 + micro_step)
        n = self.model.num_patches
        mask = random_mask(frames.shape[0], n, self.cfg.data.mask_ratio, generator=g,
                           device=frames.device)
        return model(frames, mask, num_to_mask(n, self.cfg.data.mask_ratio)), {}
