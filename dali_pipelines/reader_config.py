"""What the reader is told to draw per sample (`ReaderConfig`) and the RandAugment spec it draws
from (`RandAugmentSpec`): plain dataclasses (numpy only, no DALI), read by the reader, the output
names (`outputs`) and the DALI graph (`graph`) alike, so none of those imports another for them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RandAugmentSpec:
    """RandAugment as timm's `rand-m{m}-n{n}-mstd{mstd}-inc1`, applied to whole clips.

    Each of n layers applies one of `num_ops` ops chosen uniformly, with probability `prob`
    (`identity_op` otherwise), at magnitude ~ N(m, mstd) clipped to [0, 10], quantised to
    `num_bins - 1` steps over [0, 10] (0.1 for the default 101 bins).
    """

    n: int = 4
    m: float = 7.0
    mstd: float = 0.5
    prob: float = 0.5
    num_ops: int = 15  # the graph's op suite sets these (graph.rand_augment_spec)
    identity_op: int = 15
    num_bins: int = 101

    def draw(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ops, magnitude bins, signs), each (n,) int32."""
        ops = np.empty(self.n, np.int32)
        mags = np.empty(self.n, np.int32)
        signs = np.empty(self.n, np.int32)
        scale = (self.num_bins - 1) / 10.0
        for k in range(self.n):
            applied = rng.random() < self.prob
            op = int(rng.integers(self.num_ops))
            mag = float(np.clip(rng.normal(self.m, self.mstd), 0.0, 10.0)) if self.mstd > 0 else self.m
            ops[k] = op if applied else self.identity_op
            mags[k] = int(round(mag * scale))
            signs[k] = int(rng.integers(2))
        return ops, mags, signs


@dataclass(frozen=True)
class ReaderConfig:
    """What the reader draws per sample. `kind` is "train" (random views) or "eval" (fixed)."""

    kind: str
    seed: int
    batch_size: int  # items per pipeline batch
    num_shards: int
    shard_id: int
    drop_last: bool
    shuffle: bool
    num_frames: int
    sampling_rate: int
    sampling: str  # "dense" | "segment" | "keyframe" (AVA: the window centred on table.keyframe)
    input_size: int
    crop: str  # train "multiscale" | "random_resized" | "detect"; eval "eval" | "full"
    num_views: int = 1  # train: views per video (repeated augmentation); eval: crops per clip
    num_clips: int = 1  # eval: temporal clips per video
    short_side_size: int | None = None  # eval: short side resized to this before the crops
    flip: bool = False
    rand_augment: RandAugmentSpec | None = None
    erase_prob: float = 0.0
    decode: str = "dali"  # "dali": return encoded bytes | "pyav": return decoded frames
    rrc_scale: tuple[float, float] = (0.08, 1.0)
    rrc_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    min_crop: float = 0.75  # crop "detect": each side of the crop covers at least this share

    def num_items(self, num_samples: int) -> int:
        """Items per epoch: samples, or (sample, clip) pairs for eval."""
        return num_samples * (self.num_clips if self.kind == "eval" else 1)

    def split(self, item: int) -> tuple[int, int]:
        """(sample, clip) of an item."""
        if self.kind == "eval":
            return item // self.num_clips, item % self.num_clips
        return item, 0
