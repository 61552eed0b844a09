"""Building the dali_pipelines loaders from the data config and the process's rank."""

from __future__ import annotations

from mvd.config import Config
from mvd.engine.distributed import DistInfo


def loader_device(cfg: Config, info: DistInfo) -> str:
    if cfg.data.device != "auto":
        return cfg.data.device
    return "gpu" if info.device.type == "cuda" else "cpu"


def build_loader(kind: str, cfg: Config, info: DistInfo, patch: tuple[int, int] = (16, 2)):
    """kind: 'pretrain' | 'finetune' | 'eval'; ``patch`` = (patch_size, tubelet_size) of the
    trained model (the pretrain mask's grid). Each rank reads its own share of the samples."""
    import dali_pipelines as dp

    d = cfg.data
    common = dict(device=loader_device(cfg, info), shard_id=info.rank,
                  num_shards=info.world_size, num_frames=d.num_frames,
                  sampling_rate=d.sampling_rate, sampling=d.sampling, input_size=d.input_size)
    if kind == "eval":
        e = cfg.eval
        return dp.EvalLoader(e.dir or d.dir, e.batch_size, num_clips=e.num_clips,
                             num_crops=e.num_crops, **common, **e.loader_options)
    common["seed"] = cfg.seed
    if kind == "finetune":
        return dp.FinetuneLoader(d.dir, d.batch_size, num_sample=d.repeated_aug, flip=d.flip,
                                 rand_augment=tuple(d.rand_augment) or None,
                                 erase_prob=d.erase_prob, **common, **d.loader_options)
    return dp.PretrainLoader(d.dir, d.batch_size, teacher_input_size=d.teacher_input_size or
                             d.input_size, mask_type=d.mask_type, mask_ratio=d.mask_ratio,
                             patch_size=patch[0], tubelet_size=patch[1], **common,
                             **d.loader_options)
