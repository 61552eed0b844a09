"""PretrainLoader: the multi-scale crop at the student and teacher sizes, and the token mask."""

from __future__ import annotations

import numpy as np

from dali_pipelines.clip_loader import ClipLoader
from dali_pipelines.manifest import load_shard_dir
from dali_pipelines.masks import random_mask, tube_mask
from dali_pipelines.options import LoaderOptions
from dali_pipelines.parts import build_parts
from dali_pipelines.reader_config import ReaderConfig
from dali_pipelines.runner import Part


def pretrain_reader_config(o: LoaderOptions, batch_size: int) -> ReaderConfig:
    """What the pretrain reader draws: one multi-scale crop per clip, shuffled, seeded."""
    return ReaderConfig(
        kind="train", seed=o.seed, batch_size=batch_size, num_shards=o.num_shards,
        shard_id=o.shard_id, drop_last=o.drop_last, shuffle=True, num_frames=o.num_frames,
        sampling_rate=o.sampling_rate, sampling=o.sampling, input_size=o.input_size,
        crop="multiscale",
    )


def check_tokens(num_frames: int, tubelet: int, size: int, patch: int, name: str) -> None:
    """The clip divides into the model's tokens (PretrainLoader's mask grid)."""
    if num_frames % tubelet:
        raise ValueError(f"num_frames={num_frames} is not divisible by tubelet_size={tubelet}")
    if size % patch:
        raise ValueError(f"{name}={size} is not divisible by patch_size={patch}")


class PretrainLoader(ClipLoader):
    """Pretraining batches of `batch_size` clips from the shard directory `data_dir`.

    Options (`LoaderOptions`, or its fields as keywords): the clip (num_frames, sampling_rate,
    sampling, input_size, teacher_input_size), the mask (mask_type, mask_ratio over the grid of
    patch_size x tubelet_size tokens), and those every loader reads.

    Yields dicts:
      video (B, 3, T, S, S) float32, normalised (uint8 0..255 with normalize=False);
      teacher_video (B, 3, T, S_t, S_t) (the same tensor when S_t == S); mask (B, N) bool,
      N = T/tubelet * (S/patch)^2, True = masked; label (B,) int64; key list[str]; index (B,)
      int64 (sample in the manifest); valid (B,) bool (False for the padding of the last batch
      when drop_last=False).
    """

    def __init__(self, data_dir, batch_size: int, options: LoaderOptions | None = None, *,
                 process_group=None, **overrides):
        o = LoaderOptions.of(options, overrides)
        check_tokens(o.num_frames, o.tubelet_size, o.input_size, o.patch_size, "input_size")
        shards = load_shard_dir(data_dir)
        super().__init__(build_parts(
            shards, shards.table, pretrain_reader_config(o, batch_size), o, batch_size,
            process_group=process_group, teacher_input_size=o.teacher_size))
        self.mask_type, self.mask_ratio = o.mask_type, o.mask_ratio
        self.teacher_input_size = o.teacher_size
        self.grid = (o.num_frames // o.tubelet_size, o.input_size // o.patch_size,
                     o.input_size // o.patch_size)

    def _extend(self, batch: dict, parts: list[Part], info: np.ndarray, epoch: int,
                step: int) -> None:
        video = batch["video"]  # (B, 3, T, S, S)
        separate_teacher = self.teacher_input_size != self._cfg.input_size
        batch["teacher_video"] = self._builder.clips(parts, "teacher") if separate_teacher else video
        g = self._builder.step_generator(epoch, step)
        b, device = video.shape[0], self._builder.device
        if self.mask_type == "tube":
            batch["mask"] = tube_mask(b, self.grid, self.mask_ratio, generator=g, device=device)
        else:
            n = self.grid[0] * self.grid[1] * self.grid[2]
            batch["mask"] = random_mask(b, n, self.mask_ratio, generator=g, device=device)
