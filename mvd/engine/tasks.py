"""What each training task adds to the loop: the trained model, the frozen teachers, the loss.

``build_task(cfg, device)`` returns a :class:`Task`; the trainer calls ``task.loss(model, batch)``
on the wrapped model and never looks inside. Teachers are built here, frozen (eval mode, no
grads, ``train()`` cannot flip them) and kept out of the optimizer and the checkpoints.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from torch import nn

from mvd.config import Config, ConfigError, TeacherConfig
from mvd.engine.precision import resolve_precision
from mvd.engine.weights import load_weights

log = logging.getLogger("mvd.train")


def _model_kwargs(cfg: Config, **task_kwargs) -> dict:
    """create_model kwargs: task-derived values, then the explicit fields, then model.overrides."""
    kw = dict(task_kwargs)
    if cfg.model.drop_path >= 0:
        kw["drop_path_rate"] = cfg.model.drop_path
    if cfg.model.activation_checkpointing:
        kw["grad_checkpointing"] = True
    kw.update(cfg.model.overrides)
    return kw


def _clip_kwargs(cfg: Config) -> dict:
    return {"img_size": cfg.data.input_size, "num_frames": cfg.data.num_frames}


def manifest_classes(data_dir: str) -> list[str]:
    path = Path(data_dir) / "manifest.json"
    if not path.is_file():
        raise ConfigError(f"data.dir={data_dir}: no manifest.json there (is it a shard directory "
                          f"written by mvd-shard?)")
    return list(json.loads(path.read_text())["classes"])


class Task:
    """The base: one trained model, no teachers."""

    loader_kind = "pretrain"
    find_unused_parameters = False

    def __init__(self, cfg: Config, device: torch.device, rank: int = 0):
        self.cfg = cfg
        self.device = device
        self.rank = rank
        self.model: nn.Module = self.build_model().to(device)
        if cfg.model.init:
            load_weights(self.model, cfg.model.init, what="model.init")

    def build_model(self) -> nn.Module:
        raise NotImplementedError

    def loss(self, model: nn.Module, batch: dict, micro_step: int
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(scalar loss to backpropagate, detached parts to log); ``micro_step`` counts
        micro-batches from the start of the schedule (a resumed run gets the same numbers)."""
        raise NotImplementedError

    @property
    def patch(self) -> tuple[int, int]:
        """(patch_size, tubelet_size) of the trained model: the loader's mask grid."""
        pe = self.model.patch_embed
        return pe.patch_size, pe.tubelet_size


def build_teacher(tc: TeacherConfig, kind: str, cfg: Config, device: torch.device) -> nn.Module:
    from mvd.models import create_model
    from mvd.models.teachers import freeze

    size = cfg.data.teacher_input_size or cfg.data.input_size
    kw = {"img_size": size}
    if kind == "video":
        kw["num_frames"] = cfg.data.num_frames
    kw.update(tc.overrides)
    teacher = create_model(tc.name, **kw)
    if tc.checkpoint:
        load_weights(teacher, tc.checkpoint, what=f"teachers.{kind}.checkpoint")
    else:
        bar = "!" * 78
        log.warning("\n%s\n!! teachers.%s.checkpoint is empty: the %s teacher %s is RANDOMLY "
                    "INITIALISED.\n!! Its features are noise; fine for tests and benchmarks, "
                    "useless for real distillation.\n%s", bar, kind, kind, tc.name, bar)
    return freeze(teacher).to(device)


class PretrainMVD(Task):
    """Stage 2: the student regresses the frozen teachers' features of its masked tokens."""

    def __init__(self, cfg: Config, device: torch.device, rank: int = 0):
        self.image_teacher = build_teacher(cfg.teachers.image, "image", cfg, device) \
            if cfg.teachers.image.name else None
        self.video_teacher = build_teacher(cfg.teachers.video, "video", cfg, device) \
            if cfg.teachers.video.name else None
        super().__init__(cfg, device, rank)
        from mvd.losses import FeatureLossConfig

        self.loss_cfg = FeatureLossConfig(kind=cfg.loss.type, normalize_targets=cfg.loss.norm_target,
                                          image_weight=cfg.loss.image_weight,
                                          video_weight=cfg.loss.video_weight)
        # mvd_forward sets its own autocast around the student and teachers
        self.bf16 = resolve_precision(cfg.train.precision, device) == "bf16"

    def build_model(self) -> nn.Module:
        from mvd.models import create_model
        from mvd.models.teachers import unwrap

        targets, dims = [], {}
        for kind, teacher in (("image", self.image_teacher), ("video", self.video_teacher)):
            if teacher is not None:
                targets.append(kind)
                dims[f"{kind}_target_dim"] = unwrap(teacher).embed_dim
        return create_model(self.cfg.model.name, **_model_kwargs(
            self.cfg, **_clip_kwargs(self.cfg), targets=targets, **dims))

    def loss(self, model, batch, micro_step):
        from mvd.distill import mvd_forward

        return mvd_forward(model, self.image_teacher, self.video_teacher, batch["video"],
                           batch.get("teacher_video"), batch["mask"], loss_cfg=self.loss_cfg,
                           bf16=self.bf16)


class PretrainVideoMAE(Task):
    """Stage 1, video teacher: VideoMAE pixel reconstruction of tube-masked clips."""

    def build_model(self):
        from mvd.models import create_model

        return create_model(self.cfg.model.name, **_model_kwargs(self.cfg, **_clip_kwargs(self.cfg)))

    def loss(self, model, batch, micro_step):
        loss = model(batch["video"], batch["mask"])
        return loss, {}


class PretrainMAE(Task):
    """Stage 1, image teacher: MAE on single frames of the clips (random masking).

    Every second frame of each clip is an image (the frames the image teacher sees in stage 2),
    so B clips give B x T/2 images, each with its own random mask drawn from a generator seeded
    by (seed, rank, micro-step): reproducible on resume without extra state.
    """

    def build_model(self):
        from mvd.models import create_model

        return create_model(self.cfg.model.name,
                            **_model_kwargs(self.cfg, img_size=self.cfg.data.input_size))

    def loss(self, model, batch, micro_step):
        from mvd.masking import random_mask

        video = batch["video"]  # (B, 3, T, H, W)
        frames = video[:, :, ::2].transpose(1, 2).flatten(0, 1)  # (B*T/2, 3, H, W)
        g = torch.Generator(device=frames.device)
        g.manual_seed((self.cfg.seed * 1_000_003 + self.rank) * 1_000_003 + micro_step)
        n = self.model.num_patches
        mask = random_mask(frames.shape[0], n, self.cfg.data.mask_ratio, generator=g,
                           device=frames.device)
        return model(frames, mask), {}


class Finetune(Task):
    """Classification: mixup/cutmix with soft-target cross-entropy, label smoothing."""

    loader_kind = "finetune"

    def __init__(self, cfg, device, rank=0):
        self.classes = manifest_classes(cfg.data.dir)
        super().__init__(cfg, device, rank)
        f = cfg.finetune
        self.mixup = None
        if f.mixup > 0 or f.cutmix > 0:
            from timm.data import Mixup
            from timm.loss import SoftTargetCrossEntropy

            self.soft_ce = SoftTargetCrossEntropy()
            self.mixup = Mixup(mixup_alpha=f.mixup, cutmix_alpha=f.cutmix, prob=f.mixup_prob,
                               switch_prob=f.mixup_switch_prob, mode="batch",
                               label_smoothing=f.label_smoothing, num_classes=len(self.classes))

    def build_model(self):
        from mvd.models import create_model

        kw = dict(_clip_kwargs(self.cfg), num_classes=len(self.classes),
                  head_init_scale=self.cfg.model.head_init_scale)
        if self.cfg.model.dropout >= 0:
            kw["head_drop_rate"] = self.cfg.model.dropout
        return create_model(self.cfg.model.name, **_model_kwargs(self.cfg, **kw))

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


TASKS = {"pretrain_mvd": PretrainMVD, "pretrain_videomae": PretrainVideoMAE,
         "pretrain_mae": PretrainMAE, "finetune": Finetune}


def build_task(cfg: Config, device: torch.device, rank: int = 0) -> Task:
    return TASKS[cfg.task](cfg, device, rank)
