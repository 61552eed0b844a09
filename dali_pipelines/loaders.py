"""PretrainLoader, FinetuneLoader, EvalLoader and DetectLoader: iterate shards into batches of
torch tensors.

Each loader is a checkpointable reader stage (`reader.ClipReader`) feeding a DALI decoding and
augmenting stage (`pipeline.build`), run by `runner.PipelineRunner`. Iterating yields the rest of
the current epoch, then moves to the next: a fresh loader yields epoch 0, iterating again yields
epoch 1. The state is (epoch, step) plus the samples known to be bad; `load_state_dict` rebuilds
the pipeline at that step, and since every random draw is a function of (seed, epoch, sample) or
(seed, epoch, step), the resumed loader yields exactly the batches an uninterrupted one would.

Clips: `normalize=True` (the default) yields float32 ImageNet-normalised clips, DALI normalising;
`normalize=False` yields the uint8 clips (a quarter of the bytes to copy and move) for a training
step that normalises on its own device (`dali_pipelines.normalize`). Either way each view is
written once into its row of the batch tensor: copied there by DALI on GPU (DALI crops and
resizes), written there by torch's crop + resize on CPU (see `tensors`).

The loaders build their batches on one path (`_ClipLoader._batch`): the views of every
pipeline's samples written into their rows (`_clips`), the per-clip host fields (label, index,
valid, ...) repeated per view, then what each loader adds (mask, erasing, clip and crop, person
boxes).

Failures (`failures`): a sample that fails to decode is replaced by another sample of its batch,
counted and logged with its shard and key; past `max_failure_fraction` of the dataset every rank
raises DecodeFailureError at the same step naming the shards and keys.

Keywords shared by the loaders, beyond the clip's:
  device "gpu" | "cpu"; decoder "auto" | "dali" | "pyav"; normalize (above);
  gpu_decoders: concurrent decode pipelines (default: the GPU's NVDEC engines,
    `budget.nvdec_engines`; 1 on CPU), each decoding whole samples at fixed batch positions;
  cpu_decode_share: the share of each batch decoded by one host pipeline (DALI's CPU decoder for
    VP8/VP9/MJPEG, PyAV otherwise) while the device pipelines decode the rest (see `runner`);
  num_threads / num_workers: DALI threads and reader worker processes (None: from
    `budget.cpu_budget`, given the training step beside the loader: `step_device` "cpu" |
    "cuda" | None and its `torch_threads`, 0 = auto); the split used is `loader.budget`;
  max_failure_fraction, process_group (the torch.distributed group of the failure vote; default
    the default group when one is initialised); prefetch (batches each pipeline runs ahead).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from dali_pipelines import pipeline as dali_stage
from dali_pipelines import sampling, tensors
from dali_pipelines.budget import cpu_budget, nvdec_engines
from dali_pipelines.failures import DecodeFailureError, FailureLog
from dali_pipelines.manifest import (DALI_CODECS, AvaAnnotations, SampleTable, ShardDir, load_ava,
                                     load_shard_dir)
from dali_pipelines.normalize import Normalize, erase_
from dali_pipelines.outputs import per_view
from dali_pipelines.reader import ClipReader, ReaderConfig
from dali_pipelines.runner import BatchFailed, Part, PipelinePlan, PipelineRunner, plan_pipelines
from dali_pipelines.masks import random_mask, tube_mask

__all__ = ["PretrainLoader", "FinetuneLoader", "EvalLoader", "DetectLoader", "DecodeFailureError"]

STATE_VERSION = 1


class _ClipLoader:
    """What the loaders share: shard dir, epoch/step state, the pipelines, failures, and the
    batch building."""

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
        normalize: bool,
        gpu_decoders: int | None,
        cpu_decode_share: float,
        process_group,
        step_device: str | None,
        torch_threads: int,
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
        if cfg.sampling not in ("dense", "segment", "keyframe"):
            raise ValueError(f"sampling must be 'dense' or 'segment' (or 'keyframe', the "
                             f"DetectLoader's), got {cfg.sampling!r}")
        if cfg.num_frames < 1 or cfg.sampling_rate < 1 or cfg.input_size < 1:
            raise ValueError("num_frames, sampling_rate and input_size must be positive")
        if gpu_decoders is not None and gpu_decoders < 1:
            raise ValueError(f"gpu_decoders must be >= 1 (or None for the default), got {gpu_decoders}")
        if not 0.0 <= cpu_decode_share <= 1.0:
            raise ValueError(f"cpu_decode_share must be in [0, 1], got {cpu_decode_share}")
        self.shards: ShardDir = load_shard_dir(data_dir)
        self.table = self._sample_table(self.shards)
        if cfg.sampling == "keyframe" and self.table.keyframe is None:
            raise ValueError(f"{self.shards.path}: sampling='keyframe' needs the AVA keyframes of "
                             f"the samples (DetectLoader reads them)")
        _check_videos(self.shards)
        self.device = device
        self.batch_size = batch_size
        if device == "gpu":
            self._torch_device = torch.device("cuda", torch.cuda.current_device())
        else:
            self._torch_device = torch.device("cpu")
        self._cfg = replace(cfg, decode=_choose_decoder(self.shards, device, decoder))
        self._prefetch = prefetch
        num_items = cfg.num_items(len(self.table))
        self.steps = sampling.steps_per_epoch(num_items, cfg.batch_size, cfg.num_shards, cfg.drop_last)
        if self.steps == 0:
            raise ValueError(
                f"{self.shards.path}: {len(self.table)} samples give no full batch of "
                f"{cfg.batch_size} per rank over {cfg.num_shards} ranks; lower batch_size or "
                f"set drop_last=False"
            )
        self.epoch, self.step = 0, 0
        # the samples this rank reads per epoch: the base of max_failure_fraction
        self.failures = FailureLog(
            self.table, self._cfg.split, max_failure_fraction,
            len(self.table) / self._cfg.num_shards, group=process_group,
            vote_device=torch.device("cuda", torch.cuda.current_device())
            if torch.cuda.is_available() else None)
        if gpu_decoders is None:  # NVDEC engines on GPU; one CPU pipeline
            gpu_decoders = nvdec_engines(torch.cuda.get_device_name(self._torch_device)) \
                if device == "gpu" else 1
        host_decode = _choose_decoder(self.shards, "cpu", "auto")
        pyav = self._cfg.decode == "pyav" or (cpu_decode_share > 0 and host_decode == "pyav")
        self.budget = cpu_budget(
            loader_device=device, decoder="pyav" if pyav else "dali", step_device=step_device,
            torch_threads=torch_threads, dali_threads=num_threads or 0,
            reader_workers=-1 if num_workers is None else num_workers,
        )
        plans = plan_pipelines(
            cfg.batch_size, device_pipelines=gpu_decoders, device_decode=self._cfg.decode,
            device_decode_on="gpu" if device == "gpu" and self._cfg.decode == "dali" else "cpu",
            host_share=cpu_decode_share, host_decode=host_decode,
            num_threads=self.budget.dali_threads, num_workers=self.budget.reader_workers,
        )
        # who crops and resizes the views: DALI on GPU; torch on CPU (see dali_pipelines.tensors)
        self._resize = "dali" if device == "gpu" else "torch"
        self._runner = PipelineRunner(
            self._cfg, self.table, self.steps, plans, device=device,
            device_id=self._torch_device.index if device == "gpu" else None,
            input_size=self._cfg.input_size, teacher_input_size=teacher_input_size,
            prefetch=prefetch, normalize=normalize, resize=self._resize,
        )
        self.normalize = normalize
        self._teacher_input_size = teacher_input_size
        # float batches resized in torch are normalised as their rows are written
        torch_float = normalize and self._resize == "torch"
        self._normalize = Normalize(self._torch_device) if torch_float else None
        self._planner = ClipReader(self._cfg, self.table, 0, 0, self.steps)  # cached epoch plans

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

    @property
    def max_failure_fraction(self) -> float:
        return self.failures.max_failure_fraction

    @property
    def bad(self) -> dict[int, str]:
        """Samples known to be bad: sample -> why."""
        return self.failures.bad

    @property
    def num_failures(self) -> int:
        """Replacement events so far (a bad sample seen twice counts twice)."""
        return self.failures.num_failures

    @property
    def failed_keys(self) -> list[str]:
        return self.failures.failed_keys

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        return self.steps

    def __iter__(self):
        if self.step >= self.steps:
            self.epoch, self.step = self.epoch + 1, 0
        while self.step < self.steps:
            batch = self._batch(self._run(), self.epoch, self.step)
            self.failures.check(self.epoch, self.step)  # every rank, every batch: stop together
            self.step += 1
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
            "bad": {int(k): v for k, v in self.failures.bad.items()},
            "num_failures": self.failures.num_failures,
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
        self.failures.bad = {int(k): v for k, v in state.get("bad", {}).items()}
        self.failures.num_failures = int(state.get("num_failures", 0))
        self._runner.close()

    def close(self) -> None:
        self._runner.close()

    def __del__(self):
        try:
            self._runner.close()
        except Exception:  # interpreter shutdown
            pass

    def decode_stage(self) -> PipelineRunner:
        """A runner of this loader's pipelines that stop after decoding (the same readers,
        threads, workers and prefetch; `run(epoch, step, bad)` returns parts whose outputs are
        `decoded`, `info`, `error`): what `mvd-bench loader` times as decoding alone."""
        return self._runner.with_decode_only()

    @property
    def pipelines(self) -> tuple[PipelinePlan, ...]:
        """The decode pipelines: the batch positions each decodes, its decoder, threads and
        reader workers."""
        return self._runner.plans

    def _sample_table(self, shards: ShardDir) -> SampleTable:
        """The table the readers sample from (a loader may attach per-sample data to it)."""
        return shards.table

    # -- the pipelines -------------------------------------------------------------------------

    @property
    def _pipe(self):
        """The built pipelines (None when closed): the same object until they are rebuilt."""
        return self._runner.pipes

    def _run(self) -> list[Part]:
        """The pipelines' outputs for (epoch, step), recovering from DALI decode errors."""
        while True:
            try:
                return self._runner.run(self.epoch, self.step, self.failures.bad)
            except BatchFailed as failed:
                device_id = self._torch_device.index if failed.decode_on == "gpu" else None
                self.failures.probe(failed.reader, self._prefetch, failed.decode_on, device_id,
                                    failed.cause)

    def _planned(self, epoch: int, step: int) -> tuple[np.ndarray, np.ndarray]:
        """(items, valid) of one batch as planned (before any replacement)."""
        items, valid = self._planner.plan(epoch)
        b = self._cfg.batch_size
        return items[step * b : (step + 1) * b], valid[step * b : (step + 1) * b]

    # -- the batch -----------------------------------------------------------------------------

    def _batch(self, parts: list[Part], epoch: int, step: int) -> dict:
        """The batch dict of one step: `video` (B * V, ...) with the V views (or crops) of a
        sample adjacent, the per-clip host fields, then what the loader adds (`_extend`)."""
        v = self._cfg.num_views
        info = np.empty((self._cfg.batch_size, 3), np.int64)  # sample, failed item, clip
        for part in parts:
            rows = part.named["info"].as_array()
            info[part.positions] = rows
            self.failures.note(rows, part.named["error"])
        samples = np.repeat(info[:, 0], v)
        host = {"label": self.table.label[samples], "index": samples,
                "valid": np.repeat(self._planned(epoch, step)[1], v), **self._host_fields(info)}
        batch = {"video": self._clips(parts, "video"),
                 "key": [self.table.keys[i] for i in samples]}
        batch.update(tensors.to_device(host, {"valid": torch.bool}, self._torch_device))
        self._extend(batch, parts, epoch, step)
        return batch

    def _clips(self, parts: list[Part], name: str) -> torch.Tensor:
        """The views `name` ("video", or "teacher" at the teacher size) of every part as one
        (B * V, 3, T, S, S) tensor, each view written once into its row (sample position b,
        view k -> row b * V + k): copied from DALI's views, or cropped and resized here."""
        v, rows = self._cfg.num_views, self._cfg.batch_size * self._cfg.num_views
        if self._resize == "dali":
            out = None
            for part in parts:
                for k in range(v):
                    tl = part.named[per_view(name, k)]
                    if out is None:
                        out = tensors.new_batch(tl, rows, self._torch_device)
                    tensors.write_rows(tl, out, part.positions * v + k)
            return out
        size = self._cfg.input_size if name == "video" else self._teacher_input_size
        dtype = torch.uint8 if self._normalize is None else torch.float32
        out = torch.empty((rows, 3, self._cfg.num_frames, size, size), dtype=dtype)
        for part in parts:
            for i, position in enumerate(part.positions):
                for k, view in enumerate(self._resized_views(part, i, size)):
                    tensors.put(out[position * v + k], view, self._normalize)
        return out

    def _resized_views(self, part: Part, i: int, size: int) -> list[torch.Tensor]:
        """The views of sample i of `part` cropped and resized in torch, (T, 3, size, size)
        uint8 each: the reader's roi (and flip) of every view."""
        views = []
        for k in range(self._cfg.num_views):
            frames = tensors.frames(part.named[part.outputs.clip(k)], i)
            roi = np.asarray(part.named[per_view("roi", k)][i])
            flip = part.named.get(per_view("flip", k))
            flip = flip is not None and bool(np.asarray(flip[i]))
            views.append(tensors.crop_resize(frames, roi, size, flip))
        return views

    def _host_rows(self, parts: list[Part], name: str) -> np.ndarray:
        """The per-view host outputs `name` of every part as one (B * V, ...) array."""
        v = self._cfg.num_views
        out = None
        for part in parts:
            for k in range(v):
                rows = part.named[per_view(name, k)].as_array()
                if out is None:
                    out = np.empty((self._cfg.batch_size * v, *rows.shape[1:]), rows.dtype)
                out[part.positions * v + k] = rows
        return out

    def _host_fields(self, info: np.ndarray) -> dict[str, np.ndarray]:
        """Extra per-clip host fields of this loader (int64 tensors in the batch)."""
        return {}

    def _extend(self, batch: dict, parts: list[Part], epoch: int, step: int) -> None:
        """What this loader adds to the batch."""

    def _step_generator(self, epoch: int, step: int) -> torch.Generator:
        """A torch generator on the loader's device for the per-step draws (mask, erasing)."""
        seed = np.random.SeedSequence([self._cfg.seed, epoch, self._cfg.shard_id, step, 1])
        g = torch.Generator(device=self._torch_device)
        g.manual_seed(int(seed.generate_state(1, np.uint64)[0] >> 1))
        return g


class PretrainLoader(_ClipLoader):
    """Pretraining batches: the multi-scale crop at the student and teacher sizes, and a mask.

    Yields dicts:
      video (B, 3, T, S, S) float32, normalised (uint8 0..255 with normalize=False);
      teacher_video (B, 3, T, S_t, S_t) (the same tensor when S_t == S); mask (B, N) bool,
      N = T/tubelet * (S/patch)^2, True = masked; label (B,) int64; key list[str]; index (B,) int64 (sample in the manifest); valid (B,)
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
        normalize: bool = True,
        gpu_decoders: int | None = None,
        cpu_decode_share: float = 0.0,
        process_group=None,
        step_device: str | None = None,
        torch_threads: int = 0,
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
            prefetch=prefetch, normalize=normalize, gpu_decoders=gpu_decoders,
            cpu_decode_share=cpu_decode_share, process_group=process_group,
            step_device=step_device, torch_threads=torch_threads,
            teacher_input_size=teacher_input_size,
        )
        self.mask_type, self.mask_ratio = mask_type, mask_ratio
        self.grid = (num_frames // tubelet_size, input_size // patch_size, input_size // patch_size)
        self.teacher_input_size = teacher_input_size

    def _extend(self, batch: dict, parts: list[Part], epoch: int, step: int) -> None:
        video = batch["video"]  # (B, 3, T, S, S)
        separate_teacher = self.teacher_input_size != self._cfg.input_size
        batch["teacher_video"] = self._clips(parts, "teacher") if separate_teacher else video
        g = self._step_generator(epoch, step)
        b = video.shape[0]
        if self.mask_type == "tube":
            mask = tube_mask(b, self.grid, self.mask_ratio, generator=g, device=self._torch_device)
        else:
            n = self.grid[0] * self.grid[1] * self.grid[2]
            mask = random_mask(b, n, self.mask_ratio, generator=g, device=self._torch_device)
        batch["mask"] = mask


class FinetuneLoader(_ClipLoader):
    """Fine-tuning batches: `num_sample` augmented views per video (repeated augmentation).

    Per view: random-resized crop (default, as VideoMAE fine-tuning) or the multi-scale crop,
    optional horizontal flip, RandAugment (rand-m7-n4-mstd0.5 by default, None to turn off) on
    the whole clip before the crop, random erasing (probability per frame, pixel mode, in
    normalised space). Mixup/cutmix are left to the training step.

    Yields dicts: video (B * num_sample, 3, T, S, S), views of one video adjacent; label, key,
    index, valid repeated per view. With normalize=True (the default) video is float32
    normalised and already erased (noise from a per-step generator of the loader). With
    normalize=False video is uint8 and the batch carries `erase_boxes`, a host numpy int32
    (B * num_sample, T, 4) array of rows (top, left, h, w), h == 0 for none (when erase_prob >
    0): the step normalises (`dali_pipelines.normalize.Normalize`) and then erases with
    `dali_pipelines.normalize.erase_`, as timm erases after normalising.
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
        normalize: bool = True,
        gpu_decoders: int | None = None,
        cpu_decode_share: float = 0.0,
        process_group=None,
        step_device: str | None = None,
        torch_threads: int = 0,
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
            normalize=normalize, gpu_decoders=gpu_decoders, cpu_decode_share=cpu_decode_share,
            process_group=process_group, step_device=step_device, torch_threads=torch_threads,
        )
        self.num_sample = num_sample

    def _extend(self, batch: dict, parts: list[Part], epoch: int, step: int) -> None:
        if self._cfg.erase_prob > 0:
            boxes = self._host_rows(parts, "erase")  # (B * V, T, 4)
            if self.normalize:
                erase_(batch["video"], boxes, self._step_generator(epoch, step))
            else:  # erased by the step after it normalises (erasing is in normalised space)
                batch["erase_boxes"] = boxes


class EvalLoader(_ClipLoader):
    """Test views: every video x `num_clips` temporal clips x `num_crops` spatial crops, in
    manifest order, each exactly once across ranks (the last batch padded, `valid` False).

    The short side is resized to `short_side_size` (default input_size) and `num_crops` squares
    of input_size are taken along the long side. `batch_size` counts views and must be a
    multiple of num_crops (the crops of a clip share one decode).

    Yields dicts: video (B, 3, T, S, S) (float32 normalised, or uint8 with normalize=False);
    label, key; index (B,) the video's manifest index (to average scores per video); clip, crop
    (B,) int64; valid (B,) bool.
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
        normalize: bool = True,
        gpu_decoders: int | None = None,
        cpu_decode_share: float = 0.0,
        process_group=None,
        step_device: str | None = None,
        torch_threads: int = 0,
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
            normalize=normalize, gpu_decoders=gpu_decoders, cpu_decode_share=cpu_decode_share,
            process_group=process_group, step_device=step_device, torch_threads=torch_threads,
        )
        self.num_clips, self.num_crops = num_clips, num_crops

    @property
    def num_views(self) -> int:
        """Views this rank yields per epoch, padding included."""
        return self.steps * self.batch_size

    def _resized_views(self, part: Part, i: int, size: int) -> list[torch.Tensor]:
        """The reference's test views: the clip resized once (short side to short_side_size),
        then num_crops squares sliced from it."""
        sample = int(np.asarray(part.named["info"][i])[0])
        (w, h), offsets = sampling.eval_crop_layout(
            int(self.table.width[sample]), int(self.table.height[sample]), size, self.num_crops,
            self._cfg.short_side_size)
        resized = tensors.resize(tensors.frames(part.named["clip0"], i), h, w)
        return [resized[:, :, y : y + size, x : x + size] for x, y in offsets]

    def _host_fields(self, info: np.ndarray) -> dict[str, np.ndarray]:
        c = self.num_crops
        return {"clip": np.repeat(info[:, 2], c), "crop": np.tile(np.arange(c), len(info))}


class DetectLoader(_ClipLoader):
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

    def __init__(
        self,
        data_dir,
        batch_size: int,
        *,
        train: bool,
        device: str = "gpu",
        seed: int = 0,
        shard_id: int = 0,
        num_shards: int = 1,
        num_frames: int = 16,
        sampling_rate: int = 4,
        input_size: int = 224,
        flip: bool = True,
        min_crop: float = 0.75,
        min_visible: float = 0.25,
        jitter: tuple[float, float, float, float] | tuple = (0.2, 0.1, 0.1, 0.05),
        eval_boxes: str = "auto",
        proposal_min_score: float = 0.0,
        test_extend: tuple[float, float] = (0.1, 0.05),
        drop_last: bool | None = None,
        decoder: str = "auto",
        num_workers: int | None = None,
        num_threads: int | None = None,
        max_failure_fraction: float = 0.01,
        prefetch: int = 2,
        normalize: bool = True,
        gpu_decoders: int | None = None,
        cpu_decode_share: float = 0.0,
        process_group=None,
        step_device: str | None = None,
        torch_threads: int = 0,
    ):
        if not 0.0 < min_crop <= 1.0:
            raise ValueError(f"min_crop must be in (0, 1], got {min_crop}")
        if not 0.0 <= min_visible <= 1.0:
            raise ValueError(f"min_visible must be in [0, 1], got {min_visible}")
        if len(jitter) not in (0, 4) or any(j < 0 for j in jitter):
            raise ValueError(f"jitter must be () or four shares >= 0 (x_out, x_in, y_out, y_in), "
                             f"got {jitter}")
        if len(test_extend) != 2 or any(e < 0 for e in test_extend):
            raise ValueError(f"test_extend must be two shares >= 0 (x, y), got {test_extend}")
        if eval_boxes not in ("auto", "proposals", "groundtruth"):
            raise ValueError(f"eval_boxes must be 'auto', 'proposals' or 'groundtruth', got "
                             f"{eval_boxes!r}")
        cfg = ReaderConfig(
            kind="train" if train else "eval", seed=seed if train else 0, batch_size=batch_size,
            num_shards=num_shards, shard_id=shard_id,
            drop_last=train if drop_last is None else drop_last, shuffle=train,
            num_frames=num_frames, sampling_rate=sampling_rate, sampling="keyframe",
            input_size=input_size, crop="detect" if train else "full", flip=flip and train,
            min_crop=min_crop,
        )
        super().__init__(
            data_dir, batch_size, cfg, device=device, decoder=decoder, num_workers=num_workers,
            num_threads=num_threads, max_failure_fraction=max_failure_fraction, prefetch=prefetch,
            normalize=normalize, gpu_decoders=gpu_decoders, cpu_decode_share=cpu_decode_share,
            process_group=process_group, step_device=step_device, torch_threads=torch_threads,
        )
        self.train = train
        self.min_visible, self.jitter = min_visible, tuple(jitter)
        self.test_extend, self.proposal_min_score = tuple(test_extend), proposal_min_score
        has_proposals = any(len(s.proposals) for s in self.ava.samples)
        if eval_boxes == "proposals" and not has_proposals and not train:
            raise ValueError(f"{self.shards.path}: eval_boxes='proposals' but no sample holds "
                             f"proposals (shard with --proposals, or eval_boxes='groundtruth')")
        if eval_boxes == "auto":
            eval_boxes = "proposals" if has_proposals else "groundtruth"
        self.eval_boxes = eval_boxes
        # what eval scores, per sample: (positions in its list, boxes grown by test_extend)
        self.skipped_proposals = {"low_score": 0, "degenerate": 0}
        self._eval_rois = None if train else [self._scored_boxes(s) for s in self.ava.samples]

    @property
    def action_ids(self) -> tuple[int, ...]:
        """The label-map action id of each class index."""
        return self.ava.action_ids

    def _sample_table(self, shards: ShardDir) -> SampleTable:
        self.ava: AvaAnnotations = load_ava(shards)
        return replace(shards.table, keyframe=self.ava.keyframes)

    def _scored_boxes(self, sample) -> tuple[np.ndarray, np.ndarray]:
        """(positions (Q,), boxes (Q, 4)) of what eval scores on one sample."""
        if self.eval_boxes == "groundtruth":
            boxes, positions = sample.boxes, np.arange(len(sample.boxes))
        else:
            p = sample.proposals
            low = p[:, 4] < self.proposal_min_score
            degenerate = (p[:, 2] <= p[:, 0]) | (p[:, 3] <= p[:, 1])
            self.skipped_proposals["low_score"] += int(low.sum())
            self.skipped_proposals["degenerate"] += int((degenerate & ~low).sum())
            positions = np.nonzero(~low & ~degenerate)[0]
            boxes = p[positions, :4]
        return positions.astype(np.int64), sampling.extend_boxes(boxes, self.test_extend)

    def _samples(self, parts: list[Part]) -> np.ndarray:
        """(B,) the sample at each batch row (after any replacement), from the host `info`."""
        samples = np.empty(self._cfg.batch_size, np.int64)
        for part in parts:
            samples[part.positions] = part.named["info"].as_array()[:, 0]
        return samples

    def _train_boxes(self, sample: int, epoch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(view boxes (K, 4), labels (K, C), ground-truth positions (K,)) of one training view."""
        a = self.ava.samples[sample]
        view = self._planner.draw(sample, epoch)["views"][0]  # the reader's own crop and flip
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

    def _extend(self, batch: dict, parts: list[Part], epoch: int, step: int) -> None:
        rows, boxes, labels, positions = [], [], [], []
        for b, sample in enumerate(self._samples(parts)):
            if self.train:
                x, y, where = self._train_boxes(int(sample), epoch)
                labels.append(y)
            else:
                where, x = self._eval_rois[sample]
            rows.append(np.full(len(x), b, np.float32))
            boxes.append(x)
            positions.append(where)
        k = sum(len(x) for x in boxes)
        batch["boxes"] = self._to_device(np.concatenate(
            [np.concatenate(rows)[:, None], np.concatenate(boxes)], axis=1).astype(np.float32).reshape(k, 5))
        batch["box_index"] = self._to_device(np.concatenate(positions).astype(np.int64))
        if self.train:
            batch["box_labels"] = self._to_device(
                np.concatenate(labels).astype(np.float32).reshape(k, self.num_classes))

    def _to_device(self, array: np.ndarray) -> torch.Tensor:
        """A small host array on the loader's device (through pinned memory on a GPU: no sync)."""
        t = torch.from_numpy(np.ascontiguousarray(array))
        if self._torch_device.type == "cuda":
            return t.pin_memory().to(self._torch_device, non_blocking=True)
        return t


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
