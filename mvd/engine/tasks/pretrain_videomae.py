"""Task ``pretrain_videomae`` (stage 1, the video teacher): VideoMAE pixel reconstruction of
tube-masked clips."""

from __future__ import annotations

import torch

from dali_pipelines.masks import masked_tokens
from mvd.engine.tasks.base import Task, clip_kwargs, init_weights, model_kwargs
from mvd.engine.tasks.pretrain_mvd import train_loader
from mvd.models import create_model


class PretrainVideoMAE(Task):
    """Stage 1, video teacher: the masked tubes' normalised pixels, reconstructed."""

    name = "pretrain_videomae"

    @classmethod
    def build(cls, cfg, device, rank=0, *, precision=None, load=True, classes=None):
        model = create_model(cfg.model.name, **model_kwargs(cfg, **clip_kwargs(cfg))).to(device)
        return cls(cfg, init_weights(model, cfg, load), rank=rank,
                   num_masked=masked_tokens(model.grid, cfg.data.mask_ratio, cfg.data.mask_type))

    def train_loader(self, info):
        return train_loader(self.cfg, info, self.patch)  # stage 2's loader: the same tube masks

    def loss(self, model, batch, micro_step):
        loss = model(batch["video"], batch["mask"], self.checked_num_masked(batch["mask"]))
        return loss, {}

    def fake_batch(self, mode, device):
        batch = super().fake_batch(mode, device)
        with mode:
            batch["mask"] = torch.zeros(batch["video"].shape[0], self.model.num_patches,
                                        dtype=torch.bool, device=device)
        return batch
