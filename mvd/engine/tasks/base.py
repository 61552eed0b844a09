"""What every task is asked, and the pieces the task modules share.

A task class is the task's knowledge; the engine (trainer, dry run, ``mvd-train``) asks it and
never asks which task it is:

- before anything is built (class methods): ``check_config`` (its cross-field checks, naming the
  key), ``inputs`` (the paths the run reads), ``plan_warnings``, ``shard_dir`` (the shards whose
  size sets the schedule), ``plan_classes`` (the class head the dry run plans with),
  ``clip_views`` (clips per sample in a batch, for the global batch);
- ``build`` (a class method): plain functions build the parts (model, teachers, loss state),
  ``__init__`` only stores them, so no overridable method runs during construction;
- training: ``train_loader``, ``loss``, and with ``validates`` ``validate`` and ``eval_summary``;
- the dry run's contract: ``fake_batch`` (the loader's shapes, as fake tensors), ``plan_errors``,
  ``train_flops``, ``clips``, and for a task that does not train ``scores`` (its forward).

``trains`` is False for a task that only evaluates (``eval``); mvd-train then evaluates
(``mvd.engine.trainer.run_eval``) instead of training.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from mvd.config import Config, ConfigError, need
from mvd.engine.class_lists import ClassSource, check_same_classes, shard_classes
from mvd.engine.distributed import DistInfo
from mvd.engine.precision import Precision
from mvd.engine.weights import load_weights
from mvd.masking import masked_count
from mvd.models import create_model
from mvd.models.flops import count_flops


def model_kwargs(cfg: Config, **task_kwargs) -> dict:
    """create_model kwargs: task-derived values, then the explicit fields, then model.overrides."""
    kw = dict(task_kwargs)
    if cfg.model.drop_path >= 0:
        kw["drop_path_rate"] = cfg.model.drop_path
    if cfg.model.activation_checkpointing:
        kw["grad_checkpointing"] = True
    kw.update(cfg.model.overrides)
    return kw


def clip_kwargs(cfg: Config) -> dict:
    """The clip geometry a video model is built for."""
    return {"img_size": cfg.data.input_size, "num_frames": cfg.data.num_frames}


def head_model(cfg: Config, num_classes: int) -> nn.Module:
    """A model with a class head (the classifier, the detector): ``num_classes`` outputs, the head
    init scale and (when set) the dropout before it from ``cfg.model``."""
    kw = dict(clip_kwargs(cfg), num_classes=num_classes, head_init_scale=cfg.model.head_init_scale)
    if cfg.model.dropout >= 0:
        kw["head_drop_rate"] = cfg.model.dropout
    return create_model(cfg.model.name, **model_kwargs(cfg, **kw))


def init_weights(model: nn.Module, cfg: Config, load: bool) -> nn.Module:
    """``model`` with ``model.init`` loaded into it when set (and ``load``: the dry run reads no
    checkpoint)."""
    if cfg.model.init and load:
        load_weights(model, cfg.model.init, what="model.init")
    return model


def train_and_eval_classes(cfg: Config, fix: str, read=shard_classes) -> ClassSource:
    """The training shards' list (``read(dir, key)``), checked before any work against eval.dir's
    when that is another directory: validating on shifted labels would only show at the end."""
    train = read(cfg.data.dir, "data.dir")
    if cfg.eval.dir and Path(cfg.eval.dir).resolve() != Path(cfg.data.dir).resolve():
        check_same_classes(train, read(cfg.eval.dir, "eval.dir"), fix)
    return train


class Task:
    """The base: one trained model, no teachers, no validation."""

    name: ClassVar[str] = ""
    trains: ClassVar[bool] = True
    validates: ClassVar[bool] = False
    find_unused_parameters: ClassVar[bool] = False
    default_classes: ClassVar[int | None] = None  # a class head planned with when no shards say

    def __init__(self, cfg: Config, model: nn.Module, *, rank: int = 0,
                 classes: list[str] | None = None, num_masked: int | None = None):
        self.cfg = cfg
        self.model = model
        self.rank = rank
        self.classes = classes  # the class names of a model with a head (checkpoints keep them)
        self.num_masked = num_masked  # masked tokens per sample, a host int (no sync)
        self._mask_checked = False

    # ------------------------------------------------------------------ before anything is built

    @classmethod
    def check_config(cls, cfg: Config) -> None:
        """This task's cross-field checks (ConfigError naming the key); a training task needs
        its shards and a schedule."""
        need(bool(cfg.data.dir), "data.dir", "must name a shard directory (data.dir=PATH)")
        need(cfg.schedule.epochs >= 1, "schedule.epochs", "must be >= 1")

    @classmethod
    def shard_dir(cls, cfg: Config) -> tuple[str, str]:
        """(config key, directory) of the shards whose samples the run goes through."""
        return "data.dir", cfg.data.dir

    @classmethod
    def inputs(cls, cfg: Config) -> dict[str, str]:
        """Config key -> path of everything the run reads (the dry run warns about what does not
        exist yet); empty paths are not read."""
        return {"data.dir": cfg.data.dir, "eval.dir": cfg.eval.dir, "model.init": cfg.model.init}

    @classmethod
    def plan_warnings(cls, cfg: Config) -> list[str]:
        """What the dry run should warn about this config (beside inputs that do not exist yet)."""
        return []

    @classmethod
    def plan_classes(cls, cfg: Config, manifest: dict | None, warnings: list[str]) -> list[str] | None:
        """The class names the dry run builds the head with: the shards' (their manifest), else
        ``model.overrides.num_classes``, else ``default_classes`` (with a warning); None without a
        head."""
        if cls.default_classes is None:
            return None
        if manifest:
            return [str(c) for c in manifest["classes"]]
        if "num_classes" in cfg.model.overrides:
            return [str(i) for i in range(int(cfg.model.overrides["num_classes"]))]
        warnings.append(f"no shards to read the class list from: planned with {cls.default_classes} "
                        f"classes")
        return [str(i) for i in range(cls.default_classes)]

    @classmethod
    def clip_views(cls, cfg: Config) -> int:
        """Clips each sample gives per batch (the global batch and the lr count them all)."""
        return 1

    @classmethod
    def batch_multiple(cls, cfg: Config) -> int:
        """What the per-process batch must be a multiple of: `plan_batch` splits a pinned
        ``train.global_batch`` only into such batches, so the split never fails the task's own
        checks after planning."""
        return 1

    @classmethod
    def build(cls, cfg: Config, device: torch.device, rank: int = 0, *,
              precision: Precision | None = None, load: bool = True,
              classes: list[str] | None = None) -> Task:
        """The task with its parts built on ``device``. ``precision`` (from
        :func:`mvd.engine.precision.plan_precision`) sets the teachers' weight dtype; ``load=False``
        reads no checkpoint (the dry run: shapes only); ``classes`` replaces the shards' class
        list (the dry run's plan)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ training

    @property
    def teachers(self) -> list[nn.Module]:
        """The frozen teachers this task runs (none for stage 1 and fine-tuning)."""
        return []

    @property
    def named_teachers(self) -> dict[str, nn.Module]:
        """The teachers by the name the plan reports their parameters under."""
        return {}

    @property
    def patch(self) -> tuple[int, int]:
        """(patch_size, tubelet_size) of the trained model: the loader's mask grid."""
        pe = self.model.patch_embed
        return pe.patch_size, pe.tubelet_size

    def train_loader(self, info: DistInfo):
        """This rank's training loader."""
        raise NotImplementedError

    def loss(self, model: nn.Module, batch: dict, micro_step: int
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(scalar loss to backpropagate, detached parts to log); ``micro_step`` counts
        micro-batches from the start of the schedule (a resumed run gets the same numbers)."""
        raise NotImplementedError

    def validate(self, model: nn.Module, info: DistInfo, precision: Precision, run_dir: Path) -> dict:
        """Score eval.dir with ``model`` (a collective: every rank calls it), write the task's
        outputs into ``run_dir`` on rank 0; the result (eval.json) on every rank."""
        raise NotImplementedError(f"task {self.name} does not validate")

    def eval_summary(self, result: dict) -> str:
        """One log line of a validation result."""
        raise NotImplementedError(f"task {self.name} does not validate")

    def scores(self, model: nn.Module, batch: dict) -> torch.Tensor:
        """The model's output on an eval batch (a task that does not train: the dry run's
        forward)."""
        raise NotImplementedError(f"task {self.name} trains: the dry run steps its loss")

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

    # ------------------------------------------------------------------ the dry run's contract

    def fake_batch(self, mode, device: torch.device) -> dict:
        """A training batch of the loader's shapes and dtypes, as fake tensors of ``mode``
        (nothing is allocated): the clips and their labels."""
        d = self.cfg.data
        b = d.batch_size * self.clip_views(self.cfg)
        with mode:
            return {"video": torch.empty(b, 3, d.num_frames, d.input_size, d.input_size, device=device),
                    "label": torch.zeros(b, dtype=torch.long, device=device)}

    def plan_errors(self) -> list[str]:
        """What the built parts show to be inconsistent (each message naming its config key)."""
        return []

    @classmethod
    def clips(cls, batch: dict, n: int) -> dict:
        """The part of ``batch`` that belongs to its first ``n`` clips."""
        return {k: v[:n] for k, v in batch.items()}

    def train_flops(self, batch: dict) -> dict:
        """Training FLOPs per clip: 3 x the trained model's forward (forward + backward at 2x),
        counted by torch on one fake forward of two clips (mixup pairs clips)."""
        two = self.clips(batch, 2)
        with torch.no_grad():
            fwd = count_flops(lambda: self.loss(self.model, two, 0)) // 2
        return {"forward": fwd, "total": 3 * fwd}
