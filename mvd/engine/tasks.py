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
from mvd.engine.class_lists import SHARD_FIX, ClassSource, check_same_classes, shard_classes
from mvd.engine.precision import Precision
from mvd.engine.weights import load_weights
from dali_pipelines.masks import masked_tokens, num_to_mask
from mvd.masking import masked_count

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


def _head_model(cfg: Config, num_classes: int) -> nn.Module:
    """A model with a class head (the classifier, the detector): ``num_classes`` outputs, the head
    init scale and (when set) the dropout before it from ``cfg.model``."""
    from mvd.models import create_model

    kw = dict(_clip_kwargs(cfg), num_classes=num_classes, head_init_scale=cfg.model.head_init_scale)
    if cfg.model.dropout >= 0:
        kw["head_drop_rate"] = cfg.model.dropout
    return create_model(cfg.model.name, **_model_kwargs(cfg, **kw))


class Task:
    """The base: one trained model, no teachers.

    ``precision`` (from :func:`mvd.engine.precision.plan_precision`) sets the teachers' weight
    dtype; the trainer runs ``loss`` under its autocast. ``load=False`` builds the models without
    reading any checkpoint (the dry run: shapes only, nothing needs to exist on disk).
    """

    loader_kind = "pretrain"
    find_unused_parameters = False
    classes: list[str] | None = None  # the class names a classifier is trained on (checkpoints keep them)

    def __init__(self, cfg: Config, device: torch.device, rank: int = 0, *,
                 precision: Precision | None = None, load: bool = True):
        self.cfg = cfg
        self.device = device
        self.rank = rank
        self.precision = precision or Precision("fp32", device.type)
        self.load = load
        self.model: nn.Module = self.build_model().to(device)
        if cfg.model.init and load:
            load_weights(self.model, cfg.model.init, what="model.init")
        self.num_masked: int | None = None  # masked tokens per sample, a host int (no sync)
        self._mask_checked = False

    @property
    def teachers(self) -> list[nn.Module]:
        """The frozen teachers this task runs (none for stage 1 and fine-tuning)."""
        return []

    def trust_mask_count(self) -> None:
        """Skip the first-batch mask count: for masks that hold no values (the dry run's fake
        tensors), where ``num_masked`` from the config is all there is."""
        self._mask_checked = True

    def checked_num_masked(self, mask: torch.Tensor) -> int:
        """``num_masked`` for the models; the first batch's mask is counted once (one host sync,
        at step 1 only) to prove the loader masks what the config says."""
        if not self._mask_checked:
            got = masked_count(mask, mask.shape[0], mask.shape[1])  # host sync: first batch only
            if got != self.num_masked:
                raise ConfigError(f"the loader's masks hide {got} of {mask.shape[1]} tokens per "
                                  f"sample but data.mask_type={self.cfg.data.mask_type} "
                                  f"data.mask_ratio={self.cfg.data.mask_ratio} means "
                                  f"{self.num_masked}; check data.loader_options")
            self._mask_checked = True
        return self.num_masked

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


def build_teacher(tc: TeacherConfig, kind: str, cfg: Config, device: torch.device,
                  dtype: torch.dtype = torch.float32, load: bool = True) -> nn.Module:
    """A frozen teacher in ``dtype``. Only the image teacher takes ``data.teacher_input_size``
    (an H/14 MAE at 196 px gives the student's 14 x 14 grid); the video teacher shares the
    student's tubelet grid, so it sees the student's view at ``data.input_size``."""
    from mvd.models import create_model
    from mvd.models.teachers import freeze

    if kind == "image":
        kw = {"img_size": cfg.data.teacher_input_size or cfg.data.input_size}
    else:
        kw = {"img_size": cfg.data.input_size, "num_frames": cfg.data.num_frames}
    kw.update(tc.overrides)
    teacher = create_model(tc.name, **kw)
    if tc.checkpoint and load:
        load_weights(teacher, tc.checkpoint, what=f"teachers.{kind}.checkpoint")
    elif not tc.checkpoint:
        bar = "!" * 78
        log.warning("\n%s\n!! teachers.%s.checkpoint is empty: the %s teacher %s is RANDOMLY "
                    "INITIALISED.\n!! Its features are noise; fine for tests and benchmarks, "
                    "useless for real distillation.\n%s", bar, kind, kind, tc.name, bar)
    return freeze(teacher).to(device, dtype)


class PretrainMVD(Task):
    """Stage 2: the student regresses the frozen teachers' features of its masked tokens."""

    def __init__(self, cfg: Config, device: torch.device, rank: int = 0, *,
                 precision: Precision | None = None, load: bool = True):
        dtype = (precision or Precision("fp32", device.type)).teacher_dtype
        self.image_teacher = build_teacher(cfg.teachers.image, "image", cfg, device, dtype, load) \
            if cfg.teachers.image.name else None
        self.video_teacher = build_teacher(cfg.teachers.video, "video", cfg, device, dtype, load) \
            if cfg.teachers.video.name else None
        super().__init__(cfg, device, rank, precision=precision, load=load)
        from mvd.losses import FeatureLossConfig

        self.loss_cfg = FeatureLossConfig(kind=cfg.loss.type, normalize_targets=cfg.loss.norm_target,
                                          image_weight=cfg.loss.image_weight,
                                          video_weight=cfg.loss.video_weight)
        self.num_masked = masked_tokens(self.model.grid, cfg.data.mask_ratio, cfg.data.mask_type)

    @property
    def teachers(self) -> list[nn.Module]:
        return [t for t in (self.image_teacher, self.video_teacher) if t is not None]

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
                           num_masked=self.checked_num_masked(batch["mask"]))


class PretrainVideoMAE(Task):
    """Stage 1, video teacher: VideoMAE pixel reconstruction of tube-masked clips."""

    def __init__(self, cfg: Config, device: torch.device, rank: int = 0, **kw):
        super().__init__(cfg, device, rank, **kw)
        self.num_masked = masked_tokens(self.model.grid, cfg.data.mask_ratio, cfg.data.mask_type)

    def build_model(self):
        from mvd.models import create_model

        return create_model(self.cfg.model.name, **_model_kwargs(self.cfg, **_clip_kwargs(self.cfg)))

    def loss(self, model, batch, micro_step):
        loss = model(batch["video"], batch["mask"], self.checked_num_masked(batch["mask"]))
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
        from dali_pipelines.masks import random_mask

        video = batch["video"]  # (B, 3, T, H, W)
        frames = video[:, :, ::2].transpose(1, 2).flatten(0, 1)  # (B*T/2, 3, H, W)
        g = torch.Generator(device=frames.device)
        g.manual_seed((self.cfg.seed * 1_000_003 + self.rank) * 1_000_003 + micro_step)
        n = self.model.num_patches
        mask = random_mask(frames.shape[0], n, self.cfg.data.mask_ratio, generator=g,
                           device=frames.device)
        return model(frames, mask, num_to_mask(n, self.cfg.data.mask_ratio)), {}


class Finetune(Task):
    """Classification: mixup/cutmix with soft-target cross-entropy, label smoothing."""

    loader_kind = "finetune"

    def __init__(self, cfg, device, rank=0, *, classes: list[str] | None = None, **kw):
        if classes is None:
            train = shard_classes(cfg.data.dir, "data.dir")
            if cfg.eval.dir and Path(cfg.eval.dir).resolve() != Path(cfg.data.dir).resolve():
                # before any work: validating on shifted labels would only show at the end
                check_same_classes(train, shard_classes(cfg.eval.dir, "eval.dir"), SHARD_FIX)
            classes = train.names
        self.classes = classes
        super().__init__(cfg, device, rank, **kw)
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
        return _head_model(self.cfg, len(self.classes))

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


AVA_FIX = ("Shard both splits with the same label map (the AVA action list .pbtxt) so that class "
           "index i names the same action in both.")


def shard_action_ids(data_dir: str, what: str) -> ClassSource:
    """The label-map action id of each class index of an AVA shard directory (its manifest's
    ``detection.action_ids``), as a ClassSource so two splits compare like class lists."""
    path = Path(data_dir) / "manifest.json"
    try:
        ids = [str(int(a)) for a in json.loads(path.read_text(encoding="utf-8"))["detection"]["action_ids"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{what}={data_dir}: {path} has no readable 'detection.action_ids' ({e!r}); "
                          f"task detect needs AVA shards (mvd-shard ava)") from None
    return ClassSource(ids, f"{what}={data_dir} (detection.action_ids)")


class Detect(Task):
    """AVA action detection: per-box sigmoid binary cross-entropy over the multi-hot action labels
    (VideoMAE's AVA loss), averaged over the boxes and classes of the micro-batch.

    VideoMAE multiplies that mean by the number of boxes; under AdamW a constant factor changes
    nothing (up to eps), so the mean keeps the loss comparable across batches. Classes are the
    training shards' ``classes`` (class index i <-> ``detection.action_ids[i]``); eval.dir must
    have the same names and ids."""

    loader_kind = "detect"

    def __init__(self, cfg, device, rank=0, *, classes: list[str] | None = None, **kw):
        if classes is None:
            train = shard_classes(cfg.data.dir, "data.dir")
            ids = shard_action_ids(cfg.data.dir, "data.dir")
            if cfg.eval.dir and Path(cfg.eval.dir).resolve() != Path(cfg.data.dir).resolve():
                check_same_classes(train, shard_classes(cfg.eval.dir, "eval.dir"), AVA_FIX)
                check_same_classes(ids, shard_action_ids(cfg.eval.dir, "eval.dir"), AVA_FIX)
            classes = train.names
        self.classes = classes
        super().__init__(cfg, device, rank, **kw)

    def build_model(self):
        return _head_model(self.cfg, len(self.classes))

    def loss(self, model, batch, micro_step):
        logits = model(batch["video"], batch["boxes"])  # (K, C)
        target = batch["box_labels"]  # (K, C) multi-hot
        n = target.shape[0] * target.shape[1]  # a shape: no host sync; 0 boxes give loss 0
        loss = nn.functional.binary_cross_entropy_with_logits(logits.float(), target,
                                                              reduction="sum") / max(n, 1)
        return loss, {}


TASKS = {"pretrain_mvd": PretrainMVD, "pretrain_videomae": PretrainVideoMAE,
         "pretrain_mae": PretrainMAE, "finetune": Finetune, "detect": Detect}


def build_task(cfg: Config, device: torch.device, rank: int = 0, **kw) -> Task:
    """``kw``: ``precision``, ``load`` (see :class:`Task`), ``classes`` (finetune, detect)."""
    return TASKS[cfg.task](cfg, device, rank, **kw)
