"""An in-memory stand-in for the dali_pipelines loaders (same constructor keywords, batches,
length and resumable state), so the engine's own logic is tested without decoding video."""

from __future__ import annotations

import math

import torch


class FakeLoader:
    """Class k's clips are noise with channel k % 3 shifted up (down for k >= 3): easy to learn,
    deterministic in (seed, epoch, index) so a restored state replays the same batches."""

    num_classes = 4

    def __init__(self, data_dir, batch_size, *, device="cpu", seed=0, shard_id=0, num_shards=1,
                 num_frames=8, input_size=32, mask_grid=None, mask_ratio=0.9, samples=32,
                 num_clips=1, num_crops=1, eval=False, **_):
        self.batch_size, self.seed = batch_size, seed
        self.shard_id, self.num_shards = shard_id, num_shards
        self.num_frames, self.size = num_frames, input_size
        self.grid, self.mask_ratio = mask_grid, mask_ratio
        self.views = num_clips * num_crops if eval else 1
        self.samples = samples
        self.eval = eval
        self.classes = [f"c{i}" for i in range(self.num_classes)]
        self.epoch, self.position = 0, 0

    def __len__(self):
        n = self.samples * self.views
        per_rank = math.ceil(n / self.num_shards) if self.eval else n // self.num_shards
        return math.ceil(per_rank / self.batch_size) if self.eval else per_rank // self.batch_size

    def _item(self, i):
        g = torch.Generator().manual_seed(self.seed * 7919 + self.epoch * 104729 + i)
        video_idx = i // self.views
        label = video_idx % self.num_classes
        x = torch.randn(3, self.num_frames, self.size, self.size, generator=g) * 0.5
        x[label % 3] += 1.0 if label < 3 else -1.0
        mask = None
        if self.grid is not None:
            t, h, w = self.grid
            k = int(self.mask_ratio * h * w)
            spatial = torch.zeros(h * w, dtype=torch.bool)
            spatial[torch.randperm(h * w, generator=g)[:k]] = True
            mask = spatial.repeat(t)
        return x, label, mask, video_idx

    def __iter__(self):
        n_total = self.samples * self.views
        order = torch.randperm(n_total, generator=torch.Generator().manual_seed(
            self.seed + self.epoch)) if not self.eval else torch.arange(n_total)
        mine = order[self.shard_id::self.num_shards]
        while self.position < len(self):
            start = self.position * self.batch_size
            idx = [int(mine[(start + j) % len(mine)]) for j in range(self.batch_size)]
            items = [self._item(i) for i in idx]
            self.position += 1
            batch = {"video": torch.stack([it[0] for it in items]),
                     "label": torch.tensor([it[1] for it in items]),
                     "index": torch.tensor(idx), "key": [str(i) for i in idx]}
            batch["teacher_video"] = batch["video"]
            if self.grid is not None:
                batch["mask"] = torch.stack([it[2] for it in items])
            if self.eval:
                batch["index"] = torch.tensor([it[3] for it in items])
                batch["clip"] = torch.tensor([i % self.views for i in idx])
                batch["valid"] = torch.tensor([start + j < len(mine) for j in range(len(idx))])
            yield batch
        self.epoch += 1
        self.position = 0

    def state_dict(self):
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state):
        self.epoch, self.position = state["epoch"], state["position"]


def fake_build_loader(kind, cfg, info, patch=(16, 2), batch_size=None):
    d = cfg.data
    p, u = patch
    grid = (d.num_frames // u, d.input_size // p, d.input_size // p)
    common = dict(device="cpu", seed=cfg.seed, shard_id=info.rank, num_shards=info.world_size,
                  num_frames=d.num_frames, input_size=d.input_size)
    if kind == "eval":
        return FakeLoader(cfg.eval.dir or d.dir, cfg.eval.batch_size, eval=True,
                          num_clips=cfg.eval.num_clips, num_crops=cfg.eval.num_crops, **common)
    return FakeLoader(d.dir, batch_size or d.batch_size, mask_grid=grid if kind == "pretrain" else None,
                      mask_ratio=d.mask_ratio, **common)


class ScoresModel(torch.nn.Module):
    """Logits are the clip's first pixel row (so an evaluation test sets each view's scores)."""

    def forward(self, x):
        return x[:, 0, 0, 0, :3]


def eval_batch(index, clip, label, valid, logits):
    """An eval loader batch of views whose logits under ScoresModel are ``logits``."""
    video = torch.zeros(len(index), 3, 1, 1, 3)
    video[:, 0, 0, 0] = torch.tensor(logits, dtype=torch.float32)
    return {"video": video, "index": torch.tensor(index), "clip": torch.tensor(clip),
            "crop": torch.zeros(len(index), dtype=torch.long), "label": torch.tensor(label),
            "valid": torch.tensor(valid)}
