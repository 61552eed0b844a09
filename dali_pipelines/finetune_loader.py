"""FinetuneLoader: `repeated_aug` augmented views per video (repeated augmentation), and random
erasing."""

from __future__ import annotations

import numpy as np

from dali_pipelines import graph
from dali_pipelines.clip_loader import ClipLoader
from dali_pipelines.manifest import load_shard_dir
from dali_pipelines.normalize import erase_
from dali_pipelines.options import LoaderOptions
from dali_pipelines.parts import build_parts
from dali_pipelines.reader_config import ReaderConfig
from dali_pipelines.runner import Part


def finetune_reader_config(o: LoaderOptions, batch_size: int) -> ReaderConfig:
    """What the fine-tune reader draws per view: crop, flip, RandAugment, erasing boxes."""
    return ReaderConfig(
        kind="train", seed=o.seed, batch_size=batch_size, num_shards=o.num_shards,
        shard_id=o.shard_id, drop_last=o.drop_last, shuffle=True, num_frames=o.num_frames,
        sampling_rate=o.sampling_rate, sampling=o.sampling, input_size=o.input_size, crop=o.crop,
        num_views=o.repeated_aug, flip=o.flip,
        rand_augment=graph.rand_augment_spec(*o.rand_augment) if o.rand_augment else None,
        erase_prob=o.erase_prob,
    )


class FinetuneLoader(ClipLoader):
    """Fine-tuning batches: `repeated_aug` augmented views of each of `batch_size` videos.

    Per view: random-resized crop (crop "random_resized", as VideoMAE fine-tuning) or the
    multi-scale crop, optional horizontal flip, RandAugment (rand_augment (4, 7.0, 0.5) =
    rand-m7-n4-mstd0.5; () = off) on the whole clip before the crop, random erasing (erase_prob
    per frame, pixel mode, in normalised space). Mixup/cutmix are left to the training step.

    Yields dicts: video (B * repeated_aug, 3, T, S, S), views of one video adjacent; label, key,
    index, valid repeated per view. With normalize=True (the default) video is float32
    normalised and already erased (noise from a per-step generator of the loader). With
    normalize=False video is uint8 and the batch carries `erase_boxes`, a host numpy int32
    (B * repeated_aug, T, 4) array of rows (top, left, h, w), h == 0 for none (when erase_prob >
    0): the step normalises (`dali_pipelines.normalize.Normalize`) and then erases with
    `dali_pipelines.normalize.erase_`, as timm erases after normalising.
    """

    def __init__(self, data_dir, batch_size: int, options: LoaderOptions | None = None, *,
                 process_group=None, **overrides):
        o = LoaderOptions.of(options, overrides)
        shards = load_shard_dir(data_dir)
        super().__init__(build_parts(shards, shards.table, finetune_reader_config(o, batch_size),
                                     o, batch_size, process_group=process_group))
        self.repeated_aug = o.repeated_aug

    def _extend(self, batch: dict, parts: list[Part], info: np.ndarray, epoch: int,
                step: int) -> None:
        if self._cfg.erase_prob > 0:
            boxes = self._builder.host_rows(parts, "erase")  # (B * V, T, 4)
            if self.normalize:
                erase_(batch["video"], boxes, self._builder.step_generator(epoch, step))
            else:  # erased by the step after it normalises (erasing is in normalised space)
                batch["erase_boxes"] = boxes
