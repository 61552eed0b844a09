"""PretrainLoader, FinetuneLoader and EvalLoader: iterate shards into batches of torch tensors.

Each loader is a checkpointable reader stage (`reader.ClipReader`) feeding a DALI decoding and
augmenting stage (`pipeline.build`). Iterating yields the rest of the current epoch, then moves
to the next: a fresh loader yields epoch 0, iterating again yields epoch 1. The state is
(epoch, step) plus the samples known to be bad; `load_state_dict` rebuilds the pipeline at that
step, and since every random draw is a function of (seed, epoch, sample) or (seed, epoch, step),
the resumed loader yields exactly the batches an uninterrupted one would.

Failures: a sample that fails to decode is replaced by another sample of its batch, counted and
logged with its shard and key. On the PyAV path the reader catches it; on the DALI path the
batch raises, the loader decodes that batch's samples one by one with DALI to find the culprit,
marks it bad and rebuilds the pipeline at the same step. When more than `max_failure_fraction` of the
dataset has failed, the loader raises DecodeFailureError naming the shards and keys.
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace

import numpy as np
import torch

from dali_pipelines import pipeline as dali_stage
from dali_pipelines import sampling
from dali_pipelines.manifest import DALI_CODECS, ShardDir, load_shard_dir
from dali_pipelines.reader import NO_FAILURE, ClipReader, ReaderConfig
from mvd.masking import random_mask, tube_mask

log = logging.getLogger("dali_pipelines")

STATE_VERSION = 1


class DecodeFailureError(RuntimeError):
    """More samples failed to decode than the loader's max_failure_fraction allows."""


class _ClipLoader:
    """What the three loaders share: shard dir, epoch/step state, the pipeline, failures."""

    def __init__(
        self,
        data_dir,
        batch_size: int,
        cfg: ReaderConfig,
        *,
        device: str,
        decoder: str,
        num_workers: int | None,
        num_threads: int | None,
        max_failure_fraction: float,
        prefetch: int,
        teacher_input_size: int | None = None,
    ):
        if device not in ("cpu", "gpu"):
            raise ValueError(f"device must be 'cpu' or 'gpu', got {device!r}")
        if device == "gpu" and not torch.cuda.is_available():
            raise ValueError("device='gpu' but torch sees no CUDA device; use device='cpu'")
        if decoder not in ("auto", "dali", "pyav"):
            raise ValueError(f"decoder must be 'auto', 'dali' or 'pyav', got {decoder!r}")
        if not 0 <= cfg.shard_id < cfg.num_shards:
            raise ValueError(f"shard_id {cfg.shard_id} not in [0, num_shards={cfg.num_shards})")
        if cfg.sampling not in ("dense", "segment"):
            raise ValueError(f"sampling must be 'dense' or 'segment', got {cfg.sampling!r}")
        if cfg.num_frames < 1 or cfg.sampling_rate < 1 or cfg.input_size < 1:
            raise ValueError("num_frames, sampling_rate and input_size must be positive")
        self.shards: ShardDir = load_shard_dir(data_dir)
        self.table = self.shards.table
        _check_videos(self.shards)
        self.device = device
        self.batch_size = batch_size
        if device == "gpu":
            self._torch_device = torch.device("cuda", torch.cuda.current_device())
        else:
            self._torch_device = torch.device("cpu")
        self._cfg = replace(cfg, decode=_choose_decoder(self.shards, device, decoder))
        self._teacher_input_size = teacher_input_size
        cpus = len(os.sched_getaffinity(0))
        if num_workers is None:
            num_workers = _default_workers(self._cfg.decode, device, cpus)
        self._num_workers = num_workers
        self._num_threads = num_threads or cpus
        self._prefetch = prefetch
        self.max_failure_fraction = max_failure_fraction
        num_items = cfg.num_items(len(self.table))
        self.steps = sampling.steps_per_epoch(num_items, cfg.batch_size, cfg.num_shards, cfg.drop_last)
        if self.steps == 0:
            raise ValueError(
                f"{self.shards.path}: {len(self.table)} samples give no full batch of "
                f"{cfg.batch_size} per rank over {cfg.num_shards} ranks; lower batch_size or "
                f"set drop_last=False"
            )
        self.epoch, self.step = 0, 0
        self.bad: dict[int, str] = {}  # sample -> why it failed
        self.num_failures = 0  # replacement events (a bad sample seen twice counts twice)
        self._pipe = None
        self._pipe_next: int | None = None  # epoch * steps + step of the pipeline's next batch
        self._planner = self._reader(0, 0)  # the epoch plans (cached) for the main process

    # -- public API ----------------------------------------------------------------------------

    @property
    def classes(self) -> list[str]:
        return self.shards.classes

    @property
    def num_classes(self) -> int:
        return len(self.shards.classes)

    @property
    def decoder(self) -> str:
        """"dali" or "pyav": who decodes on this loader."""
        return self._cfg.decode

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        return self.steps

    def __iter__(self):
        if self.step >= self.steps:
            self.epoch, self.step = self.epoch + 1, 0
        while self.step < self.steps:
            outputs = self._run()
            batch = self._batch(outputs, self.epoch, self.step)
            self.step += 1
            self._pipe_next += 1
            yield batch
        self.epoch, self.step = self.epoch + 1, 0

    def state_dict(self) -> dict:
        """Where the next batch comes from, and what is known to be bad."""
        return {
            "version": STATE_VERSION,
            "epoch": self.epoch,
            "step": self.step,
            "seed": self._cfg.seed,
            "num_shards": self._cfg.num_shards,
            "shard_id": self._cfg.shard_id,
            "batch_size": self.batch_size,
            "bad": {int(k): v for k, v in self.bad.items()},
            "num_failures": self.num_failures,
        }

    def load_state_dict(self, state: dict) -> None:
        mine = self.state_dict()
        for key in ("seed", "num_shards", "shard_id", "batch_size"):
            if state.get(key) != mine[key]:
                raise ValueError(
                    f"loader state was saved with {key}={state.get(key)}, this loader has "
                    f"{key}={mine[key]}; resume needs the same {key}"
                )
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.bad = {int(k): v for k, v in state.get("bad", {}).items()}
        self.num_failures = int(state.get("num_failures", 0))
        self._close()

    @property
    def failed_keys(self) -> list[str]:
        return [self.table.where(i) for i in sorted(self.bad)]

    def close(self) -> None:
        self._close()

    def __del__(self):
        try:
            self._close()
        except Exception:  # interpreter shutdown
            pass

    # -- the pipeline --------------------------------------------------------------------------

    def _reader(self, epoch: int, step: int) -> ClipReader:
        return ClipReader(self._cfg, self.table, epoch, step, self.steps, frozenset(self.bad))

    def _open(self) -> None:
        self._close()
        self._pipe = dali_stage.build(
            self._reader(self.epoch, self.step),
            device=self.device, input_size=self._cfg.input_size,
            teacher_input_size=self._teacher_input_size,
            num_threads=self._num_threads, num_workers=self._num_workers,
            device_id=self._torch_device.index if self.device == "gpu" else None,
            prefetch=self._prefetch,
        )
        self._pipe_next = self.epoch * self.steps + self.step

    def _close(self) -> None:
        if self._pipe is not None:
            pipe, self._pipe, self._pipe_next = self._pipe, None, None
            pool = getattr(pipe, "_py_pool", None)
            del pipe
            if pool is not None:
                pool.close()

    def _run(self):
        """The pipeline's outputs for (epoch, step), recovering from DALI decode errors."""
        while True:
            if self._pipe is None or self._pipe_next != self.epoch * self.steps + self.step:
                self._open()
            try:
                return self._pipe.run()
            except Exception as exc:  # DALI reports any operator failure as a generic error
                self._close()
                self._find_bad_in_batch(exc)

    def _find_bad_in_batch(self, exc: Exception) -> None:
        """Probe the samples of the failed batch (and of the prefetched ones after it) one by
        one with DALI's decoder, and mark the ones that fail; re-raise when none does."""
        reader = self._reader(self.epoch, self.step)
        device_id = self._torch_device.index if self.device == "gpu" else None
        found = {}
        for ahead in range(self._prefetch + 1):
            epoch, step = reader.position(ahead)
            for item in self._planned(epoch, step)[0]:
                sample, clip = self._cfg.split(int(item))
                if sample in self.bad or sample in found:
                    continue
                frames = reader.draw(sample, epoch, clip)["frames"]
                why = dali_stage.decode_error(reader.video_bytes(sample), frames, self.device, device_id)
                if why is not None:
                    found[sample] = why
            if found:
                break
        if not found:
            raise RuntimeError(
                f"DALI failed at epoch {self.epoch} step {self.step}, but every sample of the "
                f"batch decodes on its own: {exc}"
            ) from exc
        for sample, why in found.items():
            log.warning("sample %s failed to decode with DALI (%s); it will be replaced",
                        self.table.where(sample), why)
            self.bad[sample] = why
        self._check_failures()

    def _note_failures(self, info: np.ndarray, errors) -> None:
        """Count the replacements the reader reports (info[:, 1] = failed item or -1)."""
        for j in np.nonzero(info[:, 1] != NO_FAILURE)[0]:
            item = int(info[j, 1])
            sample = self._cfg.split(item)[0]
            why = bytes(np.asarray(errors[int(j)])).decode(errors="replace") or "failed to decode"
            self.num_failures += 1
            if sample not in self.bad:
                log.warning("sample %s replaced by %s: %s", self.table.where(sample),
                            self.table.where(int(info[j, 0])), why)
                self.bad[sample] = why
        self._check_failures()

    def _check_failures(self) -> None:
        seen = len(self.table) / self._cfg.num_shards  # the samples this rank reads per epoch
        if len(self.bad) > self.max_failure_fraction * seen:
            shards = sorted({self.table.where(i).split(":")[0] for i in self.bad})
            raise DecodeFailureError(
                f"{len(self.bad)} of this rank's {seen:g} samples failed to decode, more than "
                f"max_failure_fraction={self.max_failure_fraction}; shards: {', '.join(shards)}; "
                f"keys: {', '.join(self.table.keys[i] for i in sorted(self.bad))}"
            )

    # -- outputs to tensors ----------------------------------------------------------------------

    def _tensor(self, tl) -> torch.Tensor:
        """A DALI TensorList (uniform shapes) as a torch tensor on the loader's device, copied
        device-side on GPU (no host round trip) and into fresh memory on CPU."""
        from nvidia.dali.plugin.pytorch import feed_ndarray

        dense = tl.as_tensor()
        out = torch.empty(dense.shape(), dtype=torch.float32, device=self._torch_device)
        stream = None
        if self.device == "gpu":  # DALI copies on torch's stream: no sync with the host
            stream = torch.cuda.current_stream(self._torch_device).cuda_stream
        feed_ndarray(dense, out, cuda_stream=stream)
        return out

    def _meta(self, outputs, first_meta: int):
        info = outputs[first_meta].as_array()  # (B, 3) int64 on the host: sample, failed, clip
        self._note_failures(info, outputs[first_meta + 1])
        return info

    def _planned(self, epoch: int, step: int) -> tuple[np.ndarray, np.ndarray]:
        """(items, valid) of one batch as planned (before any replacement)."""
        items, valid = self._planner.plan(epoch)
        b = self._cfg.batch_size
        return items[step * b : (step + 1) * b], valid[step * b : (step + 1) * b]

    def _host(self, array: np.ndarray, dtype=torch.int64) -> torch.Tensor:
        return torch.as_tensor(array, dtype=dtype).to(self._torch_device, non_blocking=True)

    def _step_generator(self, epoch: int, step: int) -> torch.Generator:
        """A torch generator on the loader's device for the per-step draws (mask, erasing)."""
        seed = np.random.SeedSequence([self._cfg.seed, epoch, self._cfg.shard_id, step, 1])
        g = torch.Generator(device=self._torch_device)
        g.manual_seed(int(seed.generate_state(1, np.uint64)[0] >> 1))
        return g

    def _batch(self, outputs, epoch: int, step: int) -> dict:
        raise NotImplementedError


class PretrainLoader(_ClipLoader):
    """Pretraining batches: the multi-scale crop at the student and teacher sizes, and a mask.

    Yields dicts:
      video (B, 3, T, S, S) float32, normalised; teacher_video (B, 3, T, S_t, S_t) (the same
      tensor when S_t == S); mask (B, N) bool, N = T/tubelet * (S/patch)^2, True = masked;
      label (B,) int64; key list[str]; index (B,) int64 (sample in the manifest); valid (B,)
      bool (False for the padding of the last batch when drop_last=False).
    """

    def __init__(
        self,
        data_dir,
        batch_size: int,
        *,
        device: str = "gpu",
        seed: int = 0,
        shard_id: int = 0,
        num_shards: int = 1,
        num_frames: int = 16,
        sampling_rate: int = 4,
        sampling: str = "dense",
        input_size: int = 224,
        teacher_input_size: int = 224,
        mask_type: str = "tube",
        mask_ratio: float = 0.9,
        patch_size: int = 16,
        tubelet_size: int = 2,
        drop_last: bool = True,
        decoder: str = "auto",
        num_workers: int | None = None,
        num_threads: int | None = None,
        max_failure_fraction: float = 0.01,
        prefetch: int = 2,
    ):
        _check_tokens(num_frames, tubelet_size, input_size, patch_size, "input_size")
        if mask_type not in ("tube", "random"):
            raise ValueError(f"mask_type must be 'tube' or 'random', got {mask_type!r}")
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
        cfg = ReaderConfig(
            kind="train", seed=seed, batch_size=batch_size, num_shards=num_shards,
            shard_id=shard_id, drop_last=drop_last, shuffle=True, num_frames=num_frames,
            sampling_rate=sampling_rate, sampling=sampling, input_size=input_size,
            crop="multiscale",
        )
        super().__init__(
            data_dir, batch_size, cfg, device=device, decoder=decoder, num_workers=num_workers,
            num_threads=num_threads, max_failure_fraction=max_failure_fraction,
            prefetch=prefetch, teacher_input_size=teacher_input_size,
        )
        self.mask_type, self.mask_ratio = mask_type, mask_ratio
        self.grid = (num_frames // tubelet_size, input_size // patch_size, input_size // patch_size)
        self.teacher_input_size = teacher_input_size

    def _batch(self, outputs, epoch: int, step: int) -> dict:
        video = self._tensor(outputs[0])  # (B, 3, T, S, S)
        separate_teacher = self.teacher_input_size != self._cfg.input_size
        teacher = self._tensor(outputs[1]) if separate_teacher else video
        info = self._meta(outputs, 2 if separate_teacher else 1)
        g = self._step_generator(epoch, step)
        b = video.shape[0]
        if self.mask_type == "tube":
            mask = tube_mask(b, self.grid, self.mask_ratio, generator=g, device=self._torch_device)
        else:
            n = self.grid[0] * self.grid[1] * self.grid[2]
            mask = random_mask(b, n, self.mask_ratio, generator=g, device=self._torch_device)
        samples = info[:, 0]
        return {
            "video": video,
            "teacher_video": teacher,
            "mask": mask,
            "label": self._host(self.table.label[samples]),
            "key": [self.table.keys[i] for i in samples],
            "index": self._host(samples),
            "valid": self._host(self._planned(epoch, step)[1], torch.bool),
        }


class FinetuneLoader(_ClipLoader):
    """Fine-tuning batches: `num_sample` augmented views per video (repeated augmentation).

    Per view: random-resized crop (default, as VideoMAE fine-tuning) or the multi-scale crop,
    optional horizontal flip, RandAugment (rand-m7-n4-mstd0.5 by default, None to turn off) on
    the whole clip before the crop, random erasing (probability per frame, in torch on the
    device, pixel mode). Mixup/cutmix are left to the training step.

    Yields dicts: video (B * num_sample, 3, T, S, S), views of one video adjacent; label, key,
    index, valid repeated per view.
    """

    def __init__(
        self,
        data_dir,
        batch_size: int,
        *,
        device: str = "gpu",
        seed: int = 0,
        shard_id: int = 0,
        num_shards: int = 1,
        num_frames: int = 16,
        sampling_rate: int = 4,
        sampling: str = "dense",
        input_size: int = 224,
        crop: str = "random_resized",
        flip: bool = True,
        rand_augment: tuple[int, float, float] | None = (4, 7.0, 0.5),
        erase_prob: float = 0.25,
        num_sample: int = 2,
        drop_last: bool = True,
        decoder: str = "auto",
        num_workers: int | None = None,
        num_threads: int | None = None,
        max_failure_fraction: float = 0.01,
        prefetch: int = 2,
    ):
        if crop not in ("random_resized", "multiscale"):
            raise ValueError(f"crop must be 'random_resized' or 'multiscale', got {crop!r}")
        if num_sample < 1:
            raise ValueError(f"num_sample must be >= 1, got {num_sample}")
        if not 0.0 <= erase_prob <= 1.0:
            raise ValueError(f"erase_prob must be in [0, 1], got {erase_prob}")
        ra = dali_stage.rand_augment_spec(*rand_augment) if rand_augment else None
        cfg = ReaderConfig(
            kind="train", seed=seed, batch_size=batch_size, num_shards=num_shards,
            shard_id=shard_id, drop_last=drop_last, shuffle=True, num_frames=num_frames,
            sampling_rate=sampling_rate, sampling=sampling, input_size=input_size, crop=crop,
            num_views=num_sample, flip=flip, rand_augment=ra, erase_prob=erase_prob,
        )
        super().__init__(
            data_dir, batch_size, cfg, device=device, decoder=decoder, num_workers=num_workers,
            num_threads=num_threads, max_failure_fraction=max_failure_fraction, prefetch=prefetch,
        )
        self.num_sample = num_sample

    def _batch(self, outputs, epoch: int, step: int) -> dict:
        v = self.num_sample
        views = [self._tensor(outputs[k]) for k in range(v)]
        info = self._meta(outputs, v)
        video = torch.stack(views, dim=1).flatten(0, 1)  # (B * V, 3, T, S, S), video-major
        if self._cfg.erase_prob > 0:
            boxes = np.stack([outputs[v + 2 + k].as_array() for k in range(v)], axis=1)  # (B, V, T, 4)
            erase(video, boxes.reshape(-1, *boxes.shape[2:]), self._step_generator(epoch, step))
        samples = np.repeat(info[:, 0], v)
        return {
            "video": video,
            "label": self._host(self.table.label[samples]),
            "key": [self.table.keys[i] for i in samples],
            "index": self._host(samples),
            "valid": self._host(np.repeat(self._planned(epoch, step)[1], v), torch.bool),
        }


class EvalLoader(_ClipLoader):
    """Test views: every video x `num_clips` temporal clips x `num_crops` spatial crops, in
    manifest order, each exactly once across ranks (the last batch padded, `valid` False).

    The short side is resized to `short_side_size` (default input_size) and `num_crops` squares
    of input_size are taken along the long side. `batch_size` counts views and must be a
    multiple of num_crops (the crops of a clip share one decode).

    Yields dicts: video (B, 3, T, S, S); label, key; index (B,) the video's manifest index (to
    average scores per video); clip, crop (B,) int64; valid (B,) bool.
    """

    def __init__(
        self,
        data_dir,
        batch_size: int,
        *,
        device: str = "gpu",
        shard_id: int = 0,
        num_shards: int = 1,
        num_frames: int = 16,
        sampling_rate: int = 4,
        sampling: str = "dense",
        input_size: int = 224,
        short_side_size: int | None = None,
        num_clips: int = 5,
        num_crops: int = 3,
        decoder: str = "auto",
        num_workers: int | None = None,
        num_threads: int | None = None,
        max_failure_fraction: float = 0.01,
        prefetch: int = 2,
    ):
        short_side_size = short_side_size or input_size
        if input_size > short_side_size:
            raise ValueError(
                f"crop input_size={input_size} is larger than the frames after resizing their "
                f"short side to short_side_size={short_side_size}"
            )
        if num_clips < 1 or num_crops < 1:
            raise ValueError(f"num_clips and num_crops must be >= 1, got {num_clips}, {num_crops}")
        if batch_size % num_crops:
            raise ValueError(
                f"EvalLoader batch_size counts views and must be a multiple of num_crops="
                f"{num_crops}, got {batch_size}"
            )
        cfg = ReaderConfig(
            kind="eval", seed=0, batch_size=batch_size // num_crops, num_shards=num_shards,
            shard_id=shard_id, drop_last=False, shuffle=False, num_frames=num_frames,
            sampling_rate=sampling_rate, sampling=sampling, input_size=input_size, crop="eval",
            num_views=num_crops, num_clips=num_clips, short_side_size=short_side_size,
        )
        super().__init__(
            data_dir, batch_size, cfg, device=device, decoder=decoder, num_workers=num_workers,
            num_threads=num_threads, max_failure_fraction=max_failure_fraction, prefetch=prefetch,
        )
        self.num_clips, self.num_crops = num_clips, num_crops

    @property
    def num_views(self) -> int:
        """Views this rank yields per epoch, padding included."""
        return self.steps * self.batch_size

    def _batch(self, outputs, epoch: int, step: int) -> dict:
        c = self.num_crops
        views = [self._tensor(outputs[k]) for k in range(c)]
        info = self._meta(outputs, c)
        video = torch.stack(views, dim=1).flatten(0, 1)  # (B, 3, T, S, S), crops of a clip adjacent
        samples = np.repeat(info[:, 0], c)
        return {
            "video": video,
            "label": self._host(self.table.label[samples]),
            "key": [self.table.keys[i] for i in samples],
            "index": self._host(samples),
            "clip": self._host(np.repeat(info[:, 2], c)),
            "crop": self._host(np.tile(np.arange(c), len(info))),
            "valid": self._host(np.repeat(self._planned(epoch, step)[1], c), torch.bool),
        }


def erase(video: torch.Tensor, boxes: np.ndarray, generator: torch.Generator) -> None:
    """Random erasing in place, pixel mode: video (V, C, T, H, W) normalised; boxes (V, T, 4)
    int rows (top, left, h, w), h == 0 for none; erased pixels ~ N(0, 1) from `generator`."""
    for v, t in zip(*np.nonzero(boxes[:, :, 2])):
        top, left, h, w = (int(x) for x in boxes[v, t])
        noise = torch.randn((video.shape[1], h, w), generator=generator, device=video.device)
        video[v, :, t, top : top + h, left : left + w] = noise


def _check_tokens(num_frames: int, tubelet: int, size: int, patch: int, name: str) -> None:
    if num_frames % tubelet:
        raise ValueError(f"num_frames={num_frames} is not divisible by tubelet_size={tubelet}")
    if size % patch:
        raise ValueError(f"{name}={size} is not divisible by patch_size={patch}")


def _check_videos(shards: ShardDir) -> None:
    """Samples whose recorded frame count or size makes any clip impossible."""
    t = shards.table
    bad = np.nonzero((t.num_frames < 1) | (t.width < 1) | (t.height < 1))[0]
    if len(bad):
        raise ValueError(
            f"{shards.path}: samples with no frames or zero size in their .meta: "
            f"{', '.join(t.where(i) for i in bad[:10])}"
        )


def _default_workers(decode: str, device: str, cpus: int) -> int:
    """Reader worker processes by default. PyAV decodes in them: one per core. When DALI decodes,
    they only read bytes: on the CPU the reader then runs in the calling process, as worker
    processes only compete with DALI's decoding threads for the cores (on 2 cores, 16x4 clips at
    224 from VP9: 40-42 clips/s in-process against 24-38 with 2 workers); on GPU two workers keep
    the reads off the training loop's thread."""
    if decode == "pyav":
        return cpus
    return 0 if device == "cpu" else min(cpus, 2)


def _choose_decoder(shards: ShardDir, device: str, decoder: str) -> str:
    unsupported = {c for c, n in shards.codecs.items() if n and c not in DALI_CODECS[device]}
    if decoder == "dali" and unsupported:
        raise ValueError(
            f"{shards.path}: codecs {sorted(unsupported)} cannot be decoded by DALI on {device} "
            f"(it decodes {sorted(DALI_CODECS[device])}); use decoder='auto' or 'pyav' for the "
            f"PyAV fallback"
        )
    if decoder == "auto":
        return "pyav" if unsupported else "dali"
    return decoder
