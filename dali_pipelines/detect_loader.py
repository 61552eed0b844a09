"""DetectLoader: AVA keyframes with their person boxes (task detect), and the box logic: the
ground truth mapped through the training view's crop and flip (plus jittered copies), and what
eval scores (proposals or ground truth, grown for pooling)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from dali_pipelines import sampling
from dali_pipelines.clip_loader import ClipLoader
from dali_pipelines.manifest import AvaAnnotations, AvaSample, SampleTable, load_ava, load_shard_dir
from dali_pipelines.options import LoaderOptions
from dali_pipelines.parts import build_parts
from dali_pipelines.reader_config import ReaderConfig
from dali_pipelines.runner import Part


def detect_reader_config(o: LoaderOptions, batch_size: int, train: bool) -> ReaderConfig:
    """What the detect reader draws: the keyframe-centred window; in training a random crop of
    at least min_crop of each side and a flip, in eval the whole frame (fixed, every sample once)."""
    return ReaderConfig(
        kind="train" if train else "eval", seed=o.seed if train else 0, batch_size=batch_size,
        num_shards=o.num_shards, shard_id=o.shard_id, drop_last=o.drop_last and train,
        shuffle=train, num_frames=o.num_frames, sampling_rate=o.sampling_rate,
        sampling="keyframe", input_size=o.input_size, crop="detect" if train else "full",
        flip=o.flip and train, min_crop=o.min_crop,
    )


def keyframe_table(table: SampleTable, ava: AvaAnnotations) -> SampleTable:
    """The sample table with each sample's keyframe (what sampling "keyframe" centres on)."""
    return replace(table, keyframe=ava.keyframes)


def resolve_eval_boxes(ava: AvaAnnotations, eval_boxes: str, train: bool, where) -> str:
    """"proposals" or "groundtruth": what eval scores ("auto": proposals when any sample holds
    some). Asking for proposals of shards without any is an error naming `where`."""
    has_proposals = any(len(s.proposals) for s in ava.samples)
    if eval_boxes == "proposals" and not has_proposals and not train:
        raise ValueError(f"{where}: eval_boxes='proposals' but no sample holds proposals (shard "
                         f"with --proposals, or eval_boxes='groundtruth')")
    if eval_boxes == "auto":
        return "proposals" if has_proposals else "groundtruth"
    return eval_boxes


def scored_boxes(sample: AvaSample, eval_boxes: str, min_score: float,
                 extend: tuple[float, float], skipped: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """(positions (Q,), boxes (Q, 4)) of what eval scores on one sample: its ground truth, or
    its proposals scored >= min_score and not degenerate (the others counted in `skipped`),
    each grown by `extend` (VideoMAE's test_ext) for pooling."""
    if eval_boxes == "groundtruth":
        boxes, positions = sample.boxes, np.arange(len(sample.boxes))
    else:
        p = sample.proposals
        low = p[:, 4] < min_score
        degenerate = (p[:, 2] <= p[:, 0]) | (p[:, 3] <= p[:, 1])
        skipped["low_score"] += int(low.sum())
        skipped["degenerate"] += int((degenerate & ~low).sum())
        positions = np.nonzero(~low & ~degenerate)[0]
        boxes = p[positions, :4]
    return positions.astype(np.int64), sampling.extend_boxes(boxes, extend)


class DetectLoader(ClipLoader):
    """AVA keyframes with their person boxes (task detect): one clip per sample, the window of
    `num_frames` frames every `sampling_rate` centred on the sample's keyframe (its json
    `ava.keyframe`; for 16 x 4 on the stored 64-frame clip, frames 1, 5, ..., 61).

    train=True: a random crop covering at least `min_crop` of each side (whole pixels), resized
    to input_size x input_size, flipped with probability 0.5 when `flip`; the ground-truth boxes
    mapped into the view, clipped, those left with less than `min_visible` of their area dropped,
    then (with `jitter` = (x_out, x_in, y_out, y_in), () for none) one jittered copy of each kept
    box (`sampling.jitter_boxes`). Crop and flip are the reader's draws from (seed, epoch,
    sample); the jitter comes from that sample's stream 1: the state is (epoch, step) as for the
    other loaders. train=False: the whole frame resized to input_size x input_size (view
    coordinates are frame coordinates), every sample once across ranks (the last batch padded,
    `valid` False), scored on its proposals with score >= `proposal_min_score`, or on its
    ground-truth boxes (`eval_boxes` "groundtruth"; "auto" = proposals when the shards hold any),
    each grown by `test_extend` (VideoMAE's test_ext) for pooling.

    Yields dicts: video (B, 3, T, S, S) (float32 normalised, or uint8 with normalize=False),
    label (B,) (-1), key, index (B,) the sample, valid (B,); boxes (K, 5) float32 rows
    [batch row, x1, y1, x2, y2] in [0, 1] view coordinates; box_index (K,) int64 the box's
    position in the sample's ground truth (train) or proposal list (eval, or ground truth with
    eval_boxes "groundtruth"); train only: box_labels (K, C) float32 multi-hot over class indices.
    `ava` holds the annotations (`manifest.AvaAnnotations`), `eval_boxes` what eval scores.
    """

    def __init__(self, data_dir, batch_size: int, options: LoaderOptions | None = None, *,
                 train: bool, process_group=None, **overrides):
        o = LoaderOptions.of(options, overrides)
        shards = load_shard_dir(data_dir)
        ava = load_ava(shards)
        eval_boxes = resolve_eval_boxes(ava, o.eval_boxes, train, shards.path)
        super().__init__(build_parts(
            shards, keyframe_table(shards.table, ava), detect_reader_config(o, batch_size, train),
            o, batch_size, process_group=process_group))
        self.ava, self.train, self.eval_boxes = ava, train, eval_boxes
        self.min_visible, self.jitter = o.min_visible, o.jitter
        self.test_extend, self.proposal_min_score = o.test_extend, o.proposal_min_score
        # what eval scores, per sample: (positions in its list, boxes grown by test_extend)
        self.skipped_proposals = {"low_score": 0, "degenerate": 0}
        self._eval_rois = None if train else [
            scored_boxes(s, eval_boxes, o.proposal_min_score, o.test_extend,
                         self.skipped_proposals) for s in ava.samples]

    @property
    def action_ids(self) -> tuple[int, ...]:
        """The label-map action id of each class index."""
        return self.ava.action_ids

    def _train_boxes(self, sample: int, epoch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(view boxes (K, 4), labels (K, C), ground-truth positions (K,)) of one training view."""
        a = self.ava.samples[sample]
        view = self.parts.planner.draw(sample, epoch)["views"][0]  # the reader's crop and flip
        boxes, kept = sampling.boxes_into_view(
            a.boxes, int(self.table.width[sample]), int(self.table.height[sample]), view["box"],
            bool(view.get("flip", False)), self.min_visible)
        labels = a.labels[kept]
        if self.jitter:
            rng = sampling.sample_rng(self._cfg.seed, epoch, sample, stream=1)
            copies = sampling.jitter_boxes(boxes, rng, self.jitter, 1.0 / self._cfg.input_size)
            boxes, labels = np.concatenate([boxes, copies]), np.concatenate([labels, labels])
            kept = np.concatenate([kept, kept])
        return boxes, labels, kept

    def _extend(self, batch: dict, parts: list[Part], info: np.ndarray, epoch: int,
                step: int) -> None:
        rows, boxes, labels, positions = [], [], [], []
        for b, sample in enumerate(info[:, 0]):  # the sample at each row, after any replacement
            if self.train:
                x, y, where = self._train_boxes(int(sample), epoch)
                labels.append(y)
            else:
                where, x = self._eval_rois[sample]
            rows.append(np.full(len(x), b, np.float32))
            boxes.append(x)
            positions.append(where)
        k = sum(len(x) for x in boxes)
        to_device = self._builder.to_device
        batch["boxes"] = to_device(np.concatenate(
            [np.concatenate(rows)[:, None], np.concatenate(boxes)], axis=1).astype(np.float32).reshape(k, 5))
        batch["box_index"] = to_device(np.concatenate(positions).astype(np.int64))
        if self.train:
            batch["box_labels"] = to_device(
                np.concatenate(labels).astype(np.float32).reshape(k, self.num_classes))
