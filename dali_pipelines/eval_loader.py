"""EvalLoader: the test views, every video x `num_clips` temporal clips x `num_crops` spatial
crops, each exactly once across ranks."""

from __future__ import annotations

import numpy as np
import torch

from dali_pipelines import sampling, tensors
from dali_pipelines.batches import Views
from dali_pipelines.clip_loader import ClipLoader
from dali_pipelines.manifest import SampleTable, load_shard_dir
from dali_pipelines.options import LoaderOptions
from dali_pipelines.parts import build_parts
from dali_pipelines.reader_config import ReaderConfig
from dali_pipelines.runner import Part


def eval_reader_config(o: LoaderOptions, batch_size: int) -> ReaderConfig:
    """What the eval reader takes per clip: fixed clips and crops, in manifest order, padded."""
    return ReaderConfig(
        kind="eval", seed=0, batch_size=batch_size // o.num_crops, num_shards=o.num_shards,
        shard_id=o.shard_id, drop_last=False, shuffle=False, num_frames=o.num_frames,
        sampling_rate=o.sampling_rate, sampling=o.sampling, input_size=o.input_size, crop="eval",
        num_views=o.num_crops, num_clips=o.num_clips, short_side_size=o.eval_short_side,
    )


def eval_crop_views(table: SampleTable, num_crops: int, short_side_size: int) -> Views:
    """The torch path's test views (`batches.Views`): the clip resized once (short side to
    short_side_size), then num_crops squares sliced from it, as the reference does."""

    def views(part: Part, i: int, size: int) -> list[torch.Tensor]:
        sample = int(np.asarray(part.named["info"][i])[0])
        (w, h), offsets = sampling.eval_crop_layout(
            int(table.width[sample]), int(table.height[sample]), size, num_crops, short_side_size)
        resized = tensors.resize(tensors.frames(part.named["clip0"], i), h, w)
        return [resized[:, :, y : y + size, x : x + size] for x, y in offsets]

    return views


class EvalLoader(ClipLoader):
    """Test views of the shard directory `data_dir`, in manifest order, each exactly once across
    ranks (the last batch padded, `valid` False).

    The short side is resized to `short_side_size` (0 = input_size) and `num_crops` squares of
    input_size are taken along the long side. `batch_size` counts views and must be a multiple
    of num_crops (the crops of a clip share one decode).

    Yields dicts: video (B, 3, T, S, S) (float32 normalised, or uint8 with normalize=False);
    label, key; index (B,) the video's manifest index (to average scores per video); clip, crop
    (B,) int64; valid (B,) bool.
    """

    def __init__(self, data_dir, batch_size: int, options: LoaderOptions | None = None, *,
                 process_group=None, **overrides):
        o = LoaderOptions.of(options, overrides)
        if o.input_size > o.eval_short_side:
            raise ValueError(
                f"crop input_size={o.input_size} is larger than the frames after resizing their "
                f"short side to short_side_size={o.eval_short_side}"
            )
        if batch_size % o.num_crops:
            raise ValueError(
                f"EvalLoader batch_size counts views and must be a multiple of num_crops="
                f"{o.num_crops}, got {batch_size}"
            )
        shards = load_shard_dir(data_dir)
        super().__init__(build_parts(
            shards, shards.table, eval_reader_config(o, batch_size), o, batch_size,
            process_group=process_group,
            views=eval_crop_views(shards.table, o.num_crops, o.eval_short_side)))
        self.num_clips, self.num_crops = o.num_clips, o.num_crops

    @property
    def num_views(self) -> int:
        """Views this rank yields per epoch, padding included."""
        return self.steps * self.batch_size

    def _host_fields(self, info: np.ndarray) -> dict[str, np.ndarray]:
        c = self.num_crops
        return {"clip": np.repeat(info[:, 2], c), "crop": np.tile(np.arange(c), len(info))}
