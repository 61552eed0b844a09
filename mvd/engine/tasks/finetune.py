"""Task ``finetune``: video classification with mixup/cutmix, soft-target cross-entropy and label
smoothing; validated on eval.dir by the video-level evaluation (``mvd.engine.evaluate``), which
writes ``eval.json`` (top-1, top-5, accuracy per class) and ``predictions.csv``."""

from __future__ import annotations

from pathlib import Path

import torch
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy
from torch import nn

from mvd.config import Config, need
from mvd.engine.class_lists import SHARD_FIX
from mvd.engine.data import eval_options, failure_group, train_options
from mvd.engine.distributed import DistInfo
from mvd.engine.evaluate import PREDICTIONS_NAME, evaluate
from mvd.engine.precision import Precision
from mvd.engine.tasks.base import Task, head_model, init_weights, train_and_eval_classes


def train_loader(cfg: Config, info: DistInfo):
    """``data.repeated_aug`` augmented views of each video (RandAugment, random erasing, flip)."""
    import dali_pipelines as dp  # DALI: loaded only when a loader is built

    options = train_options(cfg, info)  # (an unknown option is refused before the group)
    return dp.FinetuneLoader(cfg.data.dir, cfg.data.batch_size, options,
                             process_group=failure_group(info))


def eval_loader(cfg: Config, info: DistInfo):
    """``eval.num_clips x eval.num_crops`` deterministic float views of every eval.dir video."""
    import dali_pipelines as dp  # DALI: loaded only when a loader is built

    return dp.EvalLoader(cfg.eval.dir or cfg.data.dir, cfg.eval.batch_size, eval_options(cfg, info))


def mixup(cfg: Config, num_classes: int) -> Mixup | None:
    """timm's batch mixup/cutmix with label smoothing, or None when both are off."""
    f = cfg.finetune
    if f.mixup <= 0 and f.cutmix <= 0:
        return None
    return Mixup(mixup_alpha=f.mixup, cutmix_alpha=f.cutmix, prob=f.mixup_prob,
                 switch_prob=f.mixup_switch_prob, mode="batch", label_smoothing=f.label_smoothing,
                 num_classes=num_classes)


class Finetune(Task):
    """Classification: mixup/cutmix with soft-target cross-entropy, label smoothing."""

    name = "finetune"
    validates = True
    default_classes = 400  # Kinetics-400, planned with when neither the shards nor overrides say

    def __init__(self, cfg: Config, model: nn.Module, *, rank: int = 0, classes: list[str],
                 mixup: Mixup | None):
        super().__init__(cfg, model, rank=rank, classes=classes)
        self.mixup = mixup
        self.soft_ce = SoftTargetCrossEntropy()

    @classmethod
    def check_config(cls, cfg: Config) -> None:
        super().check_config(cfg)
        if cfg.finetune.mixup + cfg.finetune.cutmix > 0:
            need(cfg.data.batch_size % 2 == 0, "data.batch_size",
                 "must be even when mixup/cutmix is on (or set finetune.mixup=0 finetune.cutmix=0)")

    @classmethod
    def clip_views(cls, cfg: Config) -> int:
        return cfg.data.repeated_aug

    @classmethod
    def batch_multiple(cls, cfg: Config) -> int:
        return 2 if cfg.finetune.mixup + cfg.finetune.cutmix > 0 else 1  # as check_config asks

    @classmethod
    def build(cls, cfg, device, rank=0, *, precision=None, load=True, classes=None):
        classes = classes or train_and_eval_classes(cfg, SHARD_FIX).names
        model = init_weights(head_model(cfg, len(classes)).to(device), cfg, load)
        return cls(cfg, model, rank=rank, classes=classes, mixup=mixup(cfg, len(classes)))

    def train_loader(self, info):
        return train_loader(self.cfg, info)

    def loss(self, model, batch, micro_step):
        video, label = batch["video"], batch["label"]
        if self.mixup is not None:
            B, C, T, H, W = video.shape
            # timm's cutmix cuts the last two dims: fold time into channels so one box spans
            # every frame of the clip. Mixup draws from numpy's global RNG (checkpointed).
            flat = video.reshape(B, C * T, H, W).clone()
            flat, target = self.mixup(flat, label)
            logits = model(flat.reshape(B, C, T, H, W))
            loss = self.soft_ce(logits.float(), target)
        else:
            logits = model(video)
            loss = nn.functional.cross_entropy(logits.float(), label,
                                               label_smoothing=self.cfg.finetune.label_smoothing)
        return loss, {}

    def validate(self, model, info, precision, run_dir):
        return self.evaluate(self.cfg, info, model, precision, self.classes, run_dir)

    def eval_summary(self, result):
        return self.summary(result)

    # ------------------------------------------------------------------ evaluation (also task eval)

    @classmethod
    def evaluate(cls, cfg: Config, info: DistInfo, model: nn.Module, precision: Precision,
                 classes: list[str], run_dir: Path) -> dict:
        """eval.dir's videos scored (every view, averaged per video); rank 0 writes
        run_dir/predictions.csv. The result on every rank. A collective."""
        loader = eval_loader(cfg, info)
        if info.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
        try:
            return evaluate(model, loader, classes, precision.autocast,
                            predictions=run_dir / PREDICTIONS_NAME, is_main=info.is_main)
        finally:
            loader.close()

    @staticmethod
    def summary(result: dict) -> str:
        mean = result["mean_class_top1"]
        return (f"eval top-1 {result['top1']:.2f}%, top-5 {result['top5']:.2f}% over {result['videos']} "
                f"videos ({result['views']} views); mean class top-1 "
                + ("n/a" if mean is None else f"{mean:.2f}%"))

    @classmethod
    def eval_batch(cls, cfg: Config, mode, device) -> dict:
        """A fake eval batch: ``eval.batch_size`` views."""
        d = cfg.data
        with mode:
            return {"video": torch.empty(cfg.eval.batch_size, 3, d.num_frames, d.input_size,
                                         d.input_size, device=device)}

    @staticmethod
    def scores(model: nn.Module, batch: dict):
        """The model's scores of an eval batch."""
        return model(batch["video"])

    @classmethod
    def eval_plan_errors(cls, cfg: Config) -> list[str]:
        if cfg.eval.batch_size % cfg.eval.num_crops:
            return [f"config key 'eval.batch_size' is {cfg.eval.batch_size}; it must be a multiple of "
                    f"eval.num_crops={cfg.eval.num_crops} (each batch holds whole clips)"]
        return []
