"""Task ``pretrain_mvd`` (stage 2): the student regresses the frozen teachers' features of its
masked tokens (an image teacher on every second frame, a video teacher on the clip).

Teachers are built here, frozen (eval mode, no grads, ``train()`` cannot flip them) and kept out
of the optimizer and the checkpoints.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from dali_pipelines.masks import masked_tokens
from mvd.config import Config, TeacherConfig, need
from mvd.distill import mvd_forward
from mvd.engine.data import failure_group, train_options
from mvd.engine.distributed import DistInfo
from mvd.engine.precision import Precision
from mvd.engine.tasks.base import Task, clip_kwargs, init_weights, model_kwargs
from mvd.engine.weights import load_weights
from mvd.losses import FeatureLossConfig
from mvd.models import create_model
from mvd.models.flops import mvd_step_flops
from mvd.models.teachers import freeze, unwrap

log = logging.getLogger("mvd.train")


def build_teacher(tc: TeacherConfig, kind: str, cfg: Config, device: torch.device,
                  dtype: torch.dtype = torch.float32, load: bool = True) -> nn.Module:
    """A frozen teacher in ``dtype``. Only the image teacher takes ``data.teacher_input_size``
    (an H/14 MAE at 196 px gives the student's 14 x 14 grid); the video teacher shares the
    student's tubelet grid, so it sees the student's view at ``data.input_size``."""
    if kind == "image":
        kw = {"img_size": cfg.data.teacher_input_size or cfg.data.input_size}
    else:
        kw = clip_kwargs(cfg)
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


def student_model(cfg: Config, image_teacher: nn.Module | None,
                  video_teacher: nn.Module | None) -> nn.Module:
    """The student with one decoder per teacher, each predicting that teacher's feature width."""
    targets, dims = [], {}
    for kind, teacher in (("image", image_teacher), ("video", video_teacher)):
        if teacher is not None:
            targets.append(kind)
            dims[f"{kind}_target_dim"] = unwrap(teacher).embed_dim
    return create_model(cfg.model.name, **model_kwargs(cfg, **clip_kwargs(cfg), targets=targets, **dims))


def train_loader(cfg: Config, info: DistInfo, patch: tuple[int, int]):
    """Tube-masked clips (and the teachers' view) on the student's ``patch`` grid."""
    import dali_pipelines as dp  # DALI: loaded only when a loader is built

    options = train_options(cfg, info, patch)  # (an unknown option is refused before the group)
    return dp.PretrainLoader(cfg.data.dir, cfg.data.batch_size, options,
                             process_group=failure_group(info))


class PretrainMVD(Task):
    """Stage 2: the student regresses the frozen teachers' features of its masked tokens."""

    name = "pretrain_mvd"

    def __init__(self, cfg: Config, model: nn.Module, *, rank: int = 0,
                 image_teacher: nn.Module | None, video_teacher: nn.Module | None,
                 loss_cfg: FeatureLossConfig, num_masked: int):
        super().__init__(cfg, model, rank=rank, num_masked=num_masked)
        self.image_teacher = image_teacher
        self.video_teacher = video_teacher
        self.loss_cfg = loss_cfg

    @classmethod
    def check_config(cls, cfg: Config) -> None:
        super().check_config(cfg)
        need(bool(cfg.teachers.image.name or cfg.teachers.video.name), "teachers",
             "must name at least one teacher (teachers.image.name or teachers.video.name)")

    @classmethod
    def inputs(cls, cfg: Config) -> dict[str, str]:
        paths = super().inputs(cfg)
        for kind in ("image", "video"):
            tc = getattr(cfg.teachers, kind)
            if tc.name:
                paths[f"teachers.{kind}.checkpoint"] = tc.checkpoint
        return paths

    @classmethod
    def plan_warnings(cls, cfg: Config) -> list[str]:
        return [f"teachers.{kind}.checkpoint is empty: the {kind} teacher would be randomly initialised"
                for kind in ("image", "video")
                if getattr(cfg.teachers, kind).name and not getattr(cfg.teachers, kind).checkpoint]

    @classmethod
    def build(cls, cfg, device, rank=0, *, precision=None, load=True, classes=None):
        dtype = (precision or Precision("fp32", device.type)).teacher_dtype
        teachers = {kind: build_teacher(getattr(cfg.teachers, kind), kind, cfg, device, dtype, load)
                    if getattr(cfg.teachers, kind).name else None for kind in ("image", "video")}
        model = init_weights(student_model(cfg, teachers["image"], teachers["video"]).to(device),
                             cfg, load)
        loss_cfg = FeatureLossConfig(kind=cfg.loss.type, normalize_targets=cfg.loss.norm_target,
                                     image_weight=cfg.loss.image_weight,
                                     video_weight=cfg.loss.video_weight)
        return cls(cfg, model, rank=rank, image_teacher=teachers["image"],
                   video_teacher=teachers["video"], loss_cfg=loss_cfg,
                   num_masked=masked_tokens(model.grid, cfg.data.mask_ratio, cfg.data.mask_type))

    @property
    def teachers(self) -> list[nn.Module]:
        return [t for t in (self.image_teacher, self.video_teacher) if t is not None]

    @property
    def named_teachers(self) -> dict[str, nn.Module]:
        return {f"{kind}_teacher": t for kind, t in (("image", self.image_teacher),
                                                     ("video", self.video_teacher)) if t is not None}

    def train_loader(self, info):
        return train_loader(self.cfg, info, self.patch)

    def loss(self, model, batch, micro_step):
        return mvd_forward(model, self.image_teacher, self.video_teacher, batch["video"],
                           batch.get("teacher_video"), batch["mask"], loss_cfg=self.loss_cfg,
                           num_masked=self.checked_num_masked(batch["mask"]))

    def fake_batch(self, mode, device):
        batch = super().fake_batch(mode, device)
        d = self.cfg.data
        b, s = batch["video"].shape[0], d.teacher_input_size or d.input_size
        with mode:
            batch["mask"] = torch.zeros(b, self.model.num_patches, dtype=torch.bool, device=device)
            if s != d.input_size:
                batch["teacher_video"] = torch.empty(b, 3, d.num_frames, s, s, device=device)
        return batch

    def plan_errors(self) -> list[str]:
        """The teachers' token grids must be the student's: image teacher per frame (H', W'),
        video teacher (T', H', W')."""
        cfg, student, errors = self.cfg, self.model, []
        if self.image_teacher is not None:
            got = unwrap(self.image_teacher).grid
            if tuple(got) != tuple(student.grid[1:]):
                errors.append(
                    f"config keys 'data.teacher_input_size' / 'teachers.image': the image teacher "
                    f"{cfg.teachers.image.name} gives a {got[0]}x{got[1]} token grid per frame at "
                    f"{cfg.data.teacher_input_size or cfg.data.input_size} px but the student's is "
                    f"{student.grid[1]}x{student.grid[2]}; set data.teacher_input_size to "
                    f"{student.grid[1]} x the teacher's patch size")
        if self.video_teacher is not None:
            got = unwrap(self.video_teacher).grid
            if tuple(got) != tuple(student.grid):
                errors.append(
                    f"config key 'teachers.video': the video teacher {cfg.teachers.video.name} gives a "
                    f"{'x'.join(map(str, got))} token grid but the student's is "
                    f"{'x'.join(map(str, student.grid))}; give both the same patch and tubelet size")
        return errors

    def train_flops(self, batch):
        """Analytical (``mvd.models.flops``, pinned to torch's counter by the tests); random
        masking hides about as many tokens as tube masking."""
        f = mvd_step_flops(self.model, self.image_teacher, self.video_teacher, self.cfg.data.mask_ratio)
        return {"student_forward": f["student_forward"], "teachers_forward": f["teachers_forward"],
                "total": f["total"]}
