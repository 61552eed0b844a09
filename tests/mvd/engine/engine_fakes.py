"""An in-memory stand-in for the dali_pipelines loaders (same constructor keywords, batches,
length and resumable state), so the engine's own logic is tested without decoding video:
``fake_loaders(monkeypatch)`` puts it in place of ``dali_pipelines``' loader classes, which the
task modules build their loaders from."""

from __future__ import annotations

import json
import math

import torch

import dali_pipelines


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
                batch["key"] = [f"video{it[3]}" for it in items]
                batch["clip"] = torch.tensor([i % self.views for i in idx])
                batch["valid"] = torch.tensor([start + j < len(mine) for j in range(len(idx))])
            yield batch
        self.epoch += 1
        self.position = 0

    def state_dict(self):
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state):
        self.epoch, self.position = state["epoch"], state["position"]

    def close(self):
        pass


def _fake(data_dir, batch_size, options, *, eval=False, masks=False):
    """A FakeLoader made from a loader's (shard dir, batch size, LoaderOptions)."""
    o = options
    grid = (o.num_frames // o.tubelet_size, o.input_size // o.patch_size,
            o.input_size // o.patch_size) if masks else None
    return FakeLoader(data_dir, batch_size, seed=o.seed, shard_id=o.shard_id, num_shards=o.num_shards,
                      num_frames=o.num_frames, input_size=o.input_size, mask_grid=grid,
                      mask_ratio=o.mask_ratio, num_clips=o.num_clips, num_crops=o.num_crops, eval=eval)


def fake_pretrain_loader(data_dir, batch_size, options, **_):
    return _fake(data_dir, batch_size, options, masks=True)


def fake_finetune_loader(data_dir, batch_size, options, **_):
    return _fake(data_dir, batch_size, options)


def fake_eval_loader(data_dir, batch_size, options, **_):
    return _fake(data_dir, batch_size, options, eval=True)


def no_loader(*args, **kwargs):
    raise AssertionError("a loader was built before the config was checked")


def fake_loaders(monkeypatch, make=None) -> None:
    """dali_pipelines' loader classes replaced by FakeLoader (or all by ``make``)."""
    for name, fake in (("PretrainLoader", fake_pretrain_loader), ("FinetuneLoader", fake_finetune_loader),
                       ("EvalLoader", fake_eval_loader)):
        monkeypatch.setattr(dali_pipelines, name, make or fake, raising=False)


def fake_manifest(path, classes, **extra):
    """A manifest.json in ``path`` (made) with ``classes``, its shards not there (FakeLoader reads none)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "manifest.json").write_text(json.dumps({"format": "mvd-shards/1", "samples": 32,
                                                    "classes": classes, "shards": [], **extra}))
    return path


class ScoresModel(torch.nn.Module):
    """Logits are the clip's first pixel row (so an evaluation test sets each view's scores)."""

    def forward(self, x):
        return x[:, 0, 0, 0, :]


def eval_batch(index, clip, label, valid, logits):
    """An eval loader batch of views whose logits under ScoresModel are ``logits`` (video i's key
    is ``video<i>``)."""
    video = torch.zeros(len(index), 3, 1, 1, len(logits[0]))
    video[:, 0, 0, 0] = torch.tensor(logits, dtype=torch.float32)
    return {"video": video, "index": torch.tensor(index), "clip": torch.tensor(clip),
            "crop": torch.zeros(len(index), dtype=torch.long), "label": torch.tensor(label),
            "valid": torch.tensor(valid), "key": [f"video{i}" for i in index]}
