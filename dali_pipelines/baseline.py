"""The PyTorch baseline pretraining loader, written the way the public VideoMAE / MVD loaders work:
a torch Dataset over the same shards whose __getitem__ decodes the clip's window with PyAV
(every frame of the window converted to RGB), crops and resizes each frame with PIL (bilinear),
stacks, normalises and draws the tube mask in numpy, in DataLoader worker processes.

It draws the same frame indices and crop boxes as PretrainLoader (the `sampling` functions with
the same seeds), so the two differ only in how the work is done. It exists to be measured against
(`benchmarks/loader.py`) and to cross-check the DALI path's pixels in the tests.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from dali_pipelines.sampling import sample_rng, steps_per_epoch
from dali_pipelines.decode import decode_frames
from dali_pipelines.manifest import load_shard_dir
from dali_pipelines.normalize import IMAGENET_MEAN, IMAGENET_STD
from dali_pipelines.reader import ClipReader
from dali_pipelines.reader_config import ReaderConfig


class BaselinePretrainDataset(torch.utils.data.Dataset):
    """One epoch of one rank: item i -> (video, teacher_video, mask, label, index, valid)."""

    def __init__(self, reader: ClipReader, epoch: int, teacher_input_size: int, grid, mask_ratio):
        self.reader, self.epoch = reader, epoch
        self.items, self.valid = reader.plan(epoch)
        self.teacher_input_size, self.grid, self.mask_ratio = teacher_input_size, grid, mask_ratio

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        reader, cfg = self.reader, self.reader.cfg
        sample = int(self.items[i])
        params = reader.draw(sample, self.epoch)
        frames = decode_frames(reader.video_bytes(sample), params["frames"], convert_all=True)
        x, y, w, h = params["views"][0]["box"]
        crops = [Image.fromarray(f).crop((x, y, x + w, y + h)) for f in frames]
        video = _to_normalised_tensor(crops, cfg.input_size)
        if self.teacher_input_size != cfg.input_size:
            teacher = _to_normalised_tensor(crops, self.teacher_input_size)
        else:
            teacher = video
        mask = _tube_mask(self.grid, self.mask_ratio, sample_rng(cfg.seed, self.epoch, sample, 1))
        label = int(reader.table.label[sample])
        return video, teacher, torch.from_numpy(mask), label, sample, bool(self.valid[i])


def _to_normalised_tensor(crops: list, size: int) -> torch.Tensor:
    """PIL crops -> (3, T, size, size) float32, ImageNet-normalised (ToTensor + Normalize)."""
    frames = [np.asarray(c.resize((size, size), Image.BILINEAR)) for c in crops]
    clip = torch.from_numpy(np.stack(frames)).float().div_(255)  # (T, H, W, 3)
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    return ((clip - mean) / std).permute(3, 0, 1, 2).contiguous()


def _tube_mask(grid, ratio: float, rng: np.random.Generator) -> np.ndarray:
    """VideoMAE's TubeMaskingGenerator: one shuffled per-frame mask repeated over time."""
    t, h, w = grid
    per_frame = h * w
    k = int(ratio * per_frame)
    frame = np.hstack([np.zeros(per_frame - k), np.ones(k)]).astype(bool)
    rng.shuffle(frame)
    return np.tile(frame, t)


class BaselinePretrainLoader:
    """Same constructor arguments and batch dicts as PretrainLoader (CPU, tube mask only)."""

    def __init__(
        self,
        data_dir,
        batch_size: int,
        *,
        seed: int = 0,
        shard_id: int = 0,
        num_shards: int = 1,
        num_frames: int = 16,
        sampling_rate: int = 4,
        sampling: str = "dense",
        input_size: int = 224,
        teacher_input_size: int = 224,
        mask_ratio: float = 0.9,
        patch_size: int = 16,
        tubelet_size: int = 2,
        drop_last: bool = True,
        num_workers: int = 2,
    ):
        shards = load_shard_dir(data_dir)
        cfg = ReaderConfig(
            kind="train", seed=seed, batch_size=batch_size, num_shards=num_shards,
            shard_id=shard_id, drop_last=drop_last, shuffle=True, num_frames=num_frames,
            sampling_rate=sampling_rate, sampling=sampling, input_size=input_size,
            crop="multiscale", decode="pyav",
        )
        steps = steps_per_epoch(len(shards.table), batch_size, num_shards, drop_last)
        self.reader = ClipReader(cfg, shards.table, 0, 0, steps)
        self.batch_size, self.num_workers, self.epoch = batch_size, num_workers, 0
        self.teacher_input_size, self.mask_ratio = teacher_input_size, mask_ratio
        self.grid = (num_frames // tubelet_size, input_size // patch_size, input_size // patch_size)
        self.steps = steps

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        dataset = BaselinePretrainDataset(
            self.reader, self.epoch, self.teacher_input_size, self.grid, self.mask_ratio
        )
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=self.batch_size, num_workers=self.num_workers, shuffle=False,
            drop_last=False, persistent_workers=False,
        )
        keys = self.reader.table.keys
        for video, teacher, mask, label, index, valid in loader:
            yield {
                "video": video, "teacher_video": teacher, "mask": mask, "label": label,
                "key": [keys[i] for i in index.tolist()], "index": index, "valid": valid,
            }
        self.epoch += 1

