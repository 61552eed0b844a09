"""Task ``detect``: AVA spatio-temporal action detection, a per-box multi-label head on the video
encoder (``video_vit_det_*``), validated on eval.dir's keyframes by the official frame mAP
(``mvd.engine.detect_eval``), which writes ``eval.json`` and ``detections.csv``."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from mvd.config import Config, ConfigError, need
from mvd.engine.class_lists import ClassSource, shard_manifest
from mvd.engine.data import eval_options, failure_group, train_options
from mvd.engine.detect_eval import evaluate_detections
from mvd.engine.distributed import DistInfo
from mvd.engine.precision import Precision
from mvd.engine.tasks.base import Task, head_model, init_weights, train_and_eval_classes

DETECTIONS_NAME = "detections.csv"  # the last evaluation's detections (official AVA columns)
PLAN_BOXES_PER_CLIP = 8  # boxes per clip the dry run plans with (AVA keyframes hold a few
# people, each box and its jittered copy; a fake batch holds no values, only this shape)

AVA_FIX = ("Shard both splits with the same label map (the AVA action list .pbtxt) so that class "
           "index i names the same action in both.")


def shard_action_ids(data_dir: str, what: str) -> ClassSource:
    """The label-map action id of each class index of an AVA shard directory (its manifest's
    ``detection.action_ids``), as a ClassSource so two splits compare like class lists."""
    manifest = shard_manifest(data_dir, what)
    try:
        ids = [str(int(a)) for a in manifest["detection"]["action_ids"]]
    except (KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"{what}={data_dir}: its manifest.json has no readable "
                          f"'detection.action_ids' ({e!r}); task detect needs AVA shards "
                          f"(mvd-shard ava)") from None
    return ClassSource(ids, f"{what}={data_dir} (detection.action_ids)")


def train_loader(cfg: Config, info: DistInfo):
    """Keyframe clips with their boxes: a random crop of at least detect.min_crop, flip, jitter."""
    import dali_pipelines as dp  # DALI: loaded only when a loader is built

    options = train_options(cfg, info)  # (an unknown option is refused before the group)
    return dp.DetectLoader(cfg.data.dir, cfg.data.batch_size, options, train=True,
                           process_group=failure_group(info))


def eval_loader(cfg: Config, info: DistInfo):
    """Every eval.dir keyframe once across ranks, the whole frame, its proposals (or boxes)."""
    import dali_pipelines as dp  # DALI: loaded only when a loader is built

    return dp.DetectLoader(cfg.eval.dir or cfg.data.dir, cfg.eval.batch_size, eval_options(cfg, info),
                           train=False)


class Detect(Task):
    """AVA action detection: per-box sigmoid binary cross-entropy over the multi-hot action labels
    (VideoMAE's AVA loss), averaged over the boxes and classes of the micro-batch.

    VideoMAE multiplies that mean by the number of boxes; under AdamW a constant factor changes
    nothing (up to eps), so the mean keeps the loss comparable across batches. Classes are the
    training shards' ``classes`` (class index i <-> ``detection.action_ids[i]``); eval.dir must
    have the same names and ids."""

    name = "detect"
    validates = True
    default_classes = 80  # AVA v2.2's action list

    @classmethod
    def check_config(cls, cfg: Config) -> None:
        super().check_config(cfg)
        x = cfg.detect
        need(0.0 < x.min_crop <= 1.0, "detect.min_crop", "must be in (0, 1]")
        need(0.0 <= x.min_visible <= 1.0, "detect.min_visible", "must be in [0, 1]")
        need(len(x.jitter) in (0, 4) and all(isinstance(j, (int, float)) and j >= 0 for j in x.jitter),
             "detect.jitter", "must be [] or four shares >= 0 [x_out, x_in, y_out, y_in], e.g. "
             "[0.2, 0.1, 0.1, 0.05]")
        need(len(x.test_extend) == 2 and all(isinstance(e, (int, float)) and e >= 0
                                             for e in x.test_extend),
             "detect.test_extend", "must be two shares >= 0 [x, y], e.g. [0.1, 0.05]")
        need(0.0 <= x.proposal_min_score <= 1.0, "detect.proposal_min_score", "must be in [0, 1]")

    @classmethod
    def build(cls, cfg, device, rank=0, *, precision=None, load=True, classes=None):
        if classes is None:
            classes = train_and_eval_classes(cfg, AVA_FIX).names
            train_and_eval_classes(cfg, AVA_FIX, read=shard_action_ids)  # the same label-map ids
        model = init_weights(head_model(cfg, len(classes)).to(device), cfg, load)
        return cls(cfg, model, rank=rank, classes=classes)

    def train_loader(self, info):
        return train_loader(self.cfg, info)

    def loss(self, model, batch, micro_step):
        logits = model(batch["video"], batch["boxes"])  # (K, C)
        target = batch["box_labels"]  # (K, C) multi-hot
        n = target.shape[0] * target.shape[1]  # a shape: no host sync; 0 boxes give loss 0
        loss = nn.functional.binary_cross_entropy_with_logits(logits.float(), target,
                                                              reduction="sum") / max(n, 1)
        return loss, {}

    def validate(self, model, info, precision, run_dir):
        return self.evaluate(self.cfg, info, model, precision, self.classes, run_dir)

    def eval_summary(self, result):
        return self.summary(result)

    def fake_batch(self, mode, device):
        batch = super().fake_batch(mode, device)
        k = batch["video"].shape[0] * PLAN_BOXES_PER_CLIP
        with mode:
            batch["boxes"] = torch.zeros(k, 5, device=device)
            batch["box_labels"] = torch.zeros(k, len(self.classes), device=device)
        return batch

    @classmethod
    def clips(cls, batch, n):
        """The first ``n`` clips and their boxes (the plan's fixed boxes per clip)."""
        return {k: v[: n * PLAN_BOXES_PER_CLIP] if k in ("boxes", "box_labels") else v[:n]
                for k, v in batch.items()}

    # ------------------------------------------------------------------ evaluation (also task eval)

    @classmethod
    def evaluate(cls, cfg: Config, info: DistInfo, model: nn.Module, precision: Precision,
                 classes: list[str], run_dir: Path) -> dict:
        """eval.dir's keyframes scored on their proposals (or boxes); rank 0 writes
        run_dir/detections.csv. The frame mAP result on every rank. A collective."""
        loader = eval_loader(cfg, info)
        if info.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
        try:
            return evaluate_detections(model, loader, precision.autocast,
                                       csv_path=run_dir / DETECTIONS_NAME,
                                       score_by_proposal=cfg.detect.score_by_proposal,
                                       is_main=info.is_main)
        finally:
            loader.close()

    @staticmethod
    def summary(result: dict) -> str:
        shown = "n/a (no ground truth)" if result["mAP"] is None else f"{result['mAP']:.4f}"
        return (f"eval frame mAP@0.5IoU {shown} over {result['keyframes']} keyframes "
                f"({result['boxes_scored']} {result['eval_boxes']} boxes, {result['detections']} "
                f"detections in {DETECTIONS_NAME})")

    @classmethod
    def eval_batch(cls, cfg: Config, mode, device) -> dict:
        """A fake eval batch: ``eval.batch_size`` keyframe clips with the plan's boxes each."""
        d, b = cfg.data, cfg.eval.batch_size
        with mode:
            return {"video": torch.empty(b, 3, d.num_frames, d.input_size, d.input_size, device=device),
                    "boxes": torch.zeros(b * PLAN_BOXES_PER_CLIP, 5, device=device)}

    @staticmethod
    def scores(model: nn.Module, batch: dict):
        return model(batch["video"], batch["boxes"])

    @classmethod
    def eval_plan_errors(cls, cfg: Config) -> list[str]:
        return []
