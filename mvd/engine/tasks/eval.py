"""Task ``eval``: a trained model evaluated on eval.dir, without training, as the task that trains
such a model validates it: a classifier (``video_vit_*``) by the video-level top-1/top-5 of
``finetune`` (``eval.json`` with accuracy per class, ``predictions.csv``), a detector
(``video_vit_det_*``) by the AVA frame mAP of ``detect`` (``eval.json``, ``detections.csv``).

The model is built for eval.dir's class list and loads ``model.init``; a checkpoint that carries
its class names (this project's exports and training checkpoints, a hub config's ``id2label``)
must have been trained on the same list.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from mvd.config import Config, need
from mvd.engine.class_lists import ClassSource, check_same_classes, shard_classes
from mvd.engine.tasks.base import Task, clip_kwargs
from mvd.engine.tasks.detect import Detect
from mvd.engine.tasks.finetune import Finetune
from mvd.engine.weights import load_weights
from mvd.models import VideoViT, VideoViTDetector, create_model

log = logging.getLogger("mvd.train")

# The model class -> the task whose evaluation scores it (one line per kind of trained model).
EVALUATED_AS: tuple[tuple[type[nn.Module], type[Task]], ...] = (
    (VideoViTDetector, Detect),
    (VideoViT, Finetune),
)


def evaluated_as(model: nn.Module, name: str) -> type[Task]:
    for cls, task in EVALUATED_AS:
        if isinstance(model, cls):
            return task
    kinds = ", ".join(f"{cls.__name__} (task {task.name})" for cls, task in EVALUATED_AS)
    raise ValueError(f"config key 'model.name' is {name}, a {type(model).__name__}; task eval "
                     f"evaluates {kinds}")


def eval_model(cfg: Config, classes: ClassSource, load: bool) -> nn.Module:
    """The model for the eval shards' ``classes`` with ``model.init`` loaded (refused, before any
    work, when the checkpoint's own class list differs from the shards')."""
    model = create_model(cfg.model.name, **{**clip_kwargs(cfg), "num_classes": len(classes.names),
                                            **cfg.model.overrides})
    if cfg.model.init and load:
        report = load_weights(model, cfg.model.init, what="model.init")
        if report.classes is not None:  # before the eval: scores against shifted labels are noise
            trained = ClassSource(report.classes, f"model.init={cfg.model.init} "
                                                  f"({len(report.classes)} classes in its {report.classes_from})")
            check_same_classes(trained, classes, "Evaluate on shards made with the class list the model "
                               "was trained on (mvd-shard ... --classes FILE).")
    elif not cfg.model.init:
        bar = "!" * 78
        log.warning("\n%s\n!! model.init is empty: evaluating a RANDOMLY INITIALISED %s.\n!! Set "
                    "model.init=RUN_DIR_OR_CHECKPOINT to evaluate a trained model.\n%s", bar,
                    cfg.model.name, bar)
    return model


class Eval(Task):
    """Evaluation only: ``validate`` is the evaluation of the task that trains the model."""

    name = "eval"
    trains = False
    validates = True

    def __init__(self, cfg: Config, model: nn.Module, *, rank: int = 0, classes: list[str],
                 evaluation: type[Task]):
        super().__init__(cfg, model, rank=rank, classes=classes)
        self.evaluation = evaluation

    @classmethod
    def check_config(cls, cfg: Config) -> None:
        need(bool(cfg.eval.dir or cfg.data.dir), "eval.dir",
             "must name the held-out shard directory (eval.dir=PATH)")

    @classmethod
    def shard_dir(cls, cfg: Config) -> tuple[str, str]:
        return ("eval.dir", cfg.eval.dir) if cfg.eval.dir else ("data.dir", cfg.data.dir)

    @classmethod
    def inputs(cls, cfg: Config) -> dict[str, str]:
        return {"eval.dir": cfg.eval.dir, "model.init": cfg.model.init}

    @classmethod
    def plan_classes(cls, cfg, manifest, warnings):
        """As the evaluating task plans them (AVA's 80 actions for a detector)."""
        with torch.device("meta"):  # shapes only: which kind of model the name gives
            model = create_model(cfg.model.name, **{**clip_kwargs(cfg), **cfg.model.overrides})
        return evaluated_as(model, cfg.model.name).plan_classes(cfg, manifest, warnings)

    @classmethod
    def build(cls, cfg, device, rank=0, *, precision=None, load=True, classes=None):
        key, path = cls.shard_dir(cfg)
        source = ClassSource(classes, "the plan") if classes is not None else shard_classes(path, key)
        model = eval_model(cfg, source, load).to(device)
        return cls(cfg, model, rank=rank, classes=source.names,
                   evaluation=evaluated_as(model, cfg.model.name))

    def validate(self, model, info, precision, run_dir):
        return self.evaluation.evaluate(self.cfg, info, model, precision, self.classes, run_dir)

    def eval_summary(self, result):
        return f"{self.cfg.model.init or 'random init'}: {self.evaluation.summary(result)}"

    def fake_batch(self, mode, device):
        return self.evaluation.eval_batch(self.cfg, mode, device)

    def plan_errors(self):
        return self.evaluation.eval_plan_errors(self.cfg)

    def clips(self, batch, n):
        return self.evaluation.clips(batch, n)

    def scores(self, model: nn.Module, batch: dict):
        """The model's scores of an eval batch (as the evaluation calls it)."""
        return self.evaluation.scores(model, batch)
