"""The checkpointable reader stage: a per-sample callable for DALI's (parallel) external source.

For the sample at (iteration, position in batch) it works out the epoch, step and planned item
from the loader's start position, draws the sample's frame indices and per-view parameters from
`sample_rng(seed, epoch, sample)`, reads the video member's bytes from its tar by offset and
returns them (DALI decodes) or the decoded frames (PyAV fallback). Nothing depends on what the
reader did before, so a reader built at any (epoch, step) produces exactly what an uninterrupted
one would: that is the loader's resumable state.

Known-bad samples (and, on the PyAV path, samples that fail to decode) are replaced by the next
good sample of the same batch (then of the epoch), and the output says which item failed.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from dataclasses import dataclass, field

import numpy as np

from dali_pipelines import sampling, storage
from dali_pipelines.decode import DecodeError, decode_frames
from dali_pipelines.manifest import SampleTable
from dali_pipelines.outputs import Outputs, per_view
from dali_pipelines.reader_config import ReaderConfig
from dali_pipelines.shard_files import read_range

NO_FAILURE = -1
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def exit_with_parent(parent_pid: int) -> None:
    """Make this (worker) process die when `parent_pid` dies.

    DALI's parallel external-source workers block waiting for work and never notice that the
    loader process is gone: a SIGKILLed training rank would otherwise leave them behind forever.
    """
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the parent died before the signal was armed
        os._exit(1)


@dataclass
class ClipReader:
    """Callable(SampleInfo) -> the arrays named by `outputs.reader` (default `Outputs.of(cfg)`),
    in that order.

    `info` is int64 [sample, failed item or -1, clip]; `error` the failure message as uint8.
    """

    cfg: ReaderConfig
    table: SampleTable
    start_epoch: int
    start_step: int
    steps: int
    bad: frozenset = frozenset()
    _fds: dict = field(default_factory=dict, repr=False)
    _plans: dict = field(default_factory=dict, repr=False)
    _ahead: storage.ReadAhead = field(default_factory=storage.ReadAhead, repr=False)  # s3:// shards
    _ahead_asked: set = field(default_factory=set, repr=False)  # (epoch, step) already asked for
    _owner_pid: int = field(default_factory=os.getpid, repr=False)  # the loader's process
    _armed_pid: int = field(default=-1, repr=False)  # the worker that armed exit_with_parent
    outputs: Outputs | None = field(default=None, repr=False)  # what __call__ returns (by name)
    # the positions of each planned batch this reader's pipeline decodes (None: all of them);
    # sample i of the pipeline's batch is the planned batch's sample positions[i]
    positions: tuple[int, ...] | None = None

    def __post_init__(self):
        if self.outputs is None:
            self.outputs = Outputs.of(self.cfg)

    def __getstate__(self):  # file descriptors and caches stay in the process that made them
        state = dict(self.__dict__)
        state["_fds"], state["_plans"], state["_armed_pid"] = {}, {}, -1
        state["_ahead"], state["_ahead_asked"] = storage.ReadAhead(), set()
        return state

    # -- the epoch plan --------------------------------------------------------------------

    def plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """This rank's (items, valid) for `epoch`, cached for the last two epochs."""
        if epoch not in self._plans:
            cfg = self.cfg
            order = sampling.epoch_order(cfg.seed, epoch, cfg.num_items(len(self.table)), cfg.shuffle)
            self._plans[epoch] = sampling.rank_items(
                order, batch_size=cfg.batch_size, num_shards=cfg.num_shards,
                shard_id=cfg.shard_id, drop_last=cfg.drop_last,
            )
            for old in [e for e in self._plans if e < epoch - 1]:
                del self._plans[old]
        return self._plans[epoch]

    def batch_items(self, epoch: int, step: int) -> np.ndarray:
        """The items planned for batch `step` of `epoch` (before any replacement)."""
        items, _ = self.plan(epoch)
        b = self.cfg.batch_size
        return items[step * b : (step + 1) * b]

    def own_items(self, epoch: int, step: int) -> np.ndarray:
        """The planned items of that batch this reader's pipeline decodes."""
        batch = self.batch_items(epoch, step)
        return batch if self.positions is None else batch[list(self.positions)]

    @property
    def pipeline_batch_size(self) -> int:
        """Samples per batch of this reader's pipeline."""
        return self.cfg.batch_size if self.positions is None else len(self.positions)

    def position(self, iteration: int) -> tuple[int, int]:
        """(epoch, step) of the pipeline's `iteration`-th batch."""
        g = self.start_step + iteration
        return self.start_epoch + g // self.steps, g % self.steps

    # -- per sample ------------------------------------------------------------------------

    def __call__(self, info) -> tuple:
        pid = os.getpid()
        if pid != self._armed_pid and pid != self._owner_pid:  # first call in a DALI worker
            exit_with_parent(self._owner_pid)
            self._armed_pid = pid
        epoch, step = self.position(info.iteration)
        self._read_ahead(info.iteration)
        items, _ = self.plan(epoch)
        batch = self.batch_items(epoch, step)
        j = info.idx_in_batch if self.positions is None else self.positions[info.idx_in_batch]
        planned = int(batch[j])
        failed, error = NO_FAILURE, ""
        for item in self._candidates(planned, batch, j, items):
            sample, clip = self.cfg.split(item)
            try:
                if sample in self.bad:
                    raise DecodeError("failed to decode earlier")
                out = self.read(sample, epoch, clip)
            except DecodeError as exc:
                if failed == NO_FAILURE:
                    failed, error = planned, f"{self.table.where(sample)}: {exc}"
                continue
            out["info"] = np.array([sample, failed, clip], dtype=np.int64)
            out["error"] = np.frombuffer(error.encode()[:2000], np.uint8).copy()
            return self.outputs.reader_tuple(out)
        raise RuntimeError(f"no sample of epoch {epoch} could be read (all failed)")

    def _read_ahead(self, iteration: int) -> None:
        """Object storage: on the first call for a batch, start fetching the video members of this
        batch's samples and of the next batch's (storage.ReadAhead), so requests overlap decoding."""
        if not storage.is_remote(self.table.shard_paths[0]):
            return
        t = self.table
        for position in (self.position(iteration), self.position(iteration + 1)):
            if position in self._ahead_asked:
                continue
            self._ahead_asked.add(position)
            samples = [self.cfg.split(int(i))[0] for i in self.own_items(*position)]
            self._ahead.want([(t.shard_paths[t.shard[s]], int(t.offset[s]), int(t.size[s])) for s in samples])
        if len(self._ahead_asked) > 4:
            self._ahead_asked = set(sorted(self._ahead_asked)[-4:])

    @staticmethod
    def _candidates(planned, batch, j, items):
        """The planned item, then the rest of its batch from j+1 (wrapping), then the epoch."""
        yield planned
        for k in range(1, len(batch)):
            yield int(batch[(j + k) % len(batch)])
        yield from (int(i) for i in items)

    def draw(self, sample: int, epoch: int, clip: int = 0) -> dict:
        """Frame indices and per-view parameters of one sample in one epoch (no I/O)."""
        cfg, t = self.cfg, self.table
        n, w, h = int(t.num_frames[sample]), int(t.width[sample]), int(t.height[sample])
        if cfg.kind == "eval":
            if cfg.sampling == "keyframe":
                frames = sampling.keyframe_indices(n, int(t.keyframe[sample]), cfg.num_frames, cfg.sampling_rate)
            elif cfg.sampling == "dense":
                frames = sampling.dense_test_indices(n, cfg.num_frames, cfg.sampling_rate, clip, cfg.num_clips)
            else:
                frames = sampling.segment_test_indices(n, cfg.num_frames, clip, cfg.num_clips)
            if cfg.crop == "full":
                boxes = [sampling.full_frame_box(w, h)]
            else:
                boxes = sampling.eval_crop_boxes(w, h, cfg.input_size, cfg.num_views, cfg.short_side_size)
            return {"frames": frames, "views": [{"box": b} for b in boxes]}
        rng = sampling.sample_rng(cfg.seed, epoch, sample)
        if cfg.sampling == "keyframe":  # fixed by the keyframe: no draw
            frames = sampling.keyframe_indices(n, int(t.keyframe[sample]), cfg.num_frames, cfg.sampling_rate)
        elif cfg.sampling == "dense":
            frames = sampling.dense_indices(n, cfg.num_frames, cfg.sampling_rate, rng)
        else:
            frames = sampling.segment_indices(n, cfg.num_frames, rng)
        views = []
        for _ in range(cfg.num_views):
            if cfg.crop == "multiscale":
                view = {"box": sampling.multiscale_crop_box(w, h, cfg.input_size, rng)}
            elif cfg.crop == "detect":
                view = {"box": sampling.detect_crop_box(w, h, rng, cfg.min_crop)}
            else:
                view = {"box": sampling.random_resized_crop_box(w, h, rng, cfg.rrc_scale, cfg.rrc_ratio)}
            if cfg.flip:
                view["flip"] = sampling.flip_draw(rng)
            if cfg.rand_augment is not None:
                view["ra"] = cfg.rand_augment.draw(rng)
            if cfg.erase_prob > 0:
                view["erase"] = sampling.erasing_boxes(
                    cfg.num_frames, cfg.input_size, cfg.input_size, rng, cfg.erase_prob
                )
            views.append(view)
        return {"frames": frames, "views": views}

    def read(self, sample: int, epoch: int, clip: int) -> dict:
        """The sample's outputs by name, all but `info` and `error` (see `Outputs`)."""
        cfg = self.cfg
        params = self.draw(sample, epoch, clip)
        data = self.video_bytes(sample)
        if cfg.decode == "dali":
            out = {"data": np.frombuffer(data, np.uint8), "frames": params["frames"].astype(np.int32)}
        else:
            out = {"data": decode_frames(data, params["frames"])}
        for v, view in enumerate(params["views"]):
            x, y, w, h = view["box"]
            # roi (start, end) in (H, W)
            out[per_view("roi", v)] = np.array([y, x, y + h, x + w], dtype=np.float32)
            if cfg.flip:
                out[per_view("flip", v)] = np.array(int(view["flip"]), dtype=np.int32)
            if cfg.rand_augment is not None:
                ops, mags, signs = view["ra"]
                out[per_view("ra_ops", v)] = ops
                out[per_view("ra_mags", v)] = mags
                out[per_view("ra_signs", v)] = signs
            if cfg.erase_prob > 0:
                out[per_view("erase", v)] = view["erase"]
        return out

    def video_bytes(self, sample: int) -> bytes:
        """The sample's video member, read from its tar by offset (`shard_files.read_range`),
        or taken from what `_read_ahead` fetched for an s3:// shard."""
        path = self.table.shard_paths[int(self.table.shard[sample])]
        size, offset = int(self.table.size[sample]), int(self.table.offset[sample])
        data = self._ahead.pread(path, size, offset)
        if data is None:
            data = read_range(path, offset, size, self._fds)
        if len(data) != size:
            raise DecodeError(f"short read: {len(data)} of {size} bytes")
        return data
