"""The tasks: one module each, and this registry, the one list of them.

A task (:class:`~mvd.engine.tasks.base.Task`) owns its config checks, its model and teachers, its
loaders, its loss, its validation and its dry-run contract; the trainer, the dry run and mvd-train
ask it and never ask which task it is. A new task is one module plus one line here.
"""

from __future__ import annotations

import torch

from mvd.config import Config, ConfigError
from mvd.engine.tasks.base import Task
from mvd.engine.tasks.detect import Detect
from mvd.engine.tasks.eval import Eval
from mvd.engine.tasks.finetune import Finetune
from mvd.engine.tasks.pretrain_mae import PretrainMAE
from mvd.engine.tasks.pretrain_mvd import PretrainMVD
from mvd.engine.tasks.pretrain_videomae import PretrainVideoMAE

TASKS: dict[str, type[Task]] = {t.name: t for t in (
    PretrainMVD,
    PretrainVideoMAE,
    PretrainMAE,
    Finetune,
    Eval,
    Detect,
)}


def task_class(cfg: Config) -> type[Task]:
    """The class of ``cfg.task``, after its own config checks; ConfigError naming the key."""
    cls = TASKS.get(cfg.task)
    if cls is None:
        raise ConfigError(f"config key 'task' is {cfg.task!r}; it must be one of: {', '.join(TASKS)}")
    cls.check_config(cfg)
    return cls


def build_task(cfg: Config, device: torch.device, rank: int = 0, **kw) -> Task:
    """``cfg.task`` built on ``device``; ``kw``: ``precision``, ``load``, ``classes`` (see
    :meth:`Task.build`)."""
    return task_class(cfg).build(cfg, device, rank, **kw)
