"""Batch assembly: the pipelines' parts of one batch written into the batch's rows.

`BatchBuilder.common` makes what every loader's batch holds: `video` (B * V, 3, T, S, S) with the
V views (or crops) of a sample adjacent (sample position b, view k -> row b * V + k), `key`, and
the per-clip host fields (`label`, `index`, `valid`, plus a loader's own) repeated per view. Each
view is written once into its row: copied there by DALI on GPU (DALI crops and resizes), written
there by torch's crop + resize on CPU (`views`, see `tensors`). A loader adds its extras (mask,
erasing, person boxes) with `clips`, `host_rows` and `to_device`.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from dali_pipelines import tensors
from dali_pipelines.manifest import SampleTable
from dali_pipelines.normalize import Normalize
from dali_pipelines.outputs import per_view
from dali_pipelines.reader_config import ReaderConfig
from dali_pipelines.runner import Part

# views(part, i, size) -> the (T, 3, size, size) uint8 views of sample i of a part (torch path)
Views = Callable[[Part, int, int], list]


def roi_views(part: Part, i: int, size: int) -> list[torch.Tensor]:
    """The views of sample i of `part` cropped and resized in torch, (T, 3, size, size) uint8
    each: the reader's roi (and flip) of every view."""
    views = []
    for k in range(part.outputs.num_views):
        frames = tensors.frames(part.named[part.outputs.clip(k)], i)
        roi = np.asarray(part.named[per_view("roi", k)][i])
        flip = part.named.get(per_view("flip", k))
        flip = flip is not None and bool(np.asarray(flip[i]))
        views.append(tensors.crop_resize(frames, roi, size, flip))
    return views


class BatchBuilder:
    """Writes one batch from its parts (`runner.Part`, one per pipeline) on `device`.

    `resize` "dali": the parts hold DALI's views; "torch": their frames, cut by `views`
    (default `roi_views`). Float batches made in torch are normalised as their rows are written.
    """

    def __init__(self, cfg: ReaderConfig, table: SampleTable, device: torch.device, *,
                 resize: str, normalize: bool, teacher_input_size: int | None = None,
                 views: Views | None = None):
        self.cfg, self.table, self.device, self.resize = cfg, table, device, resize
        self.teacher_input_size = teacher_input_size
        self.views = views or roi_views
        self._normalize = Normalize(device) if normalize and resize == "torch" else None

    def info(self, parts: list[Part]) -> np.ndarray:
        """(B, 3) int64 rows [sample, failed item or -1, clip] at their batch positions."""
        info = np.empty((self.cfg.batch_size, 3), np.int64)
        for part in parts:
            info[part.positions] = part.named["info"].as_array()
        return info

    def common(self, parts: list[Part], info: np.ndarray, valid: np.ndarray,
               host_fields: dict[str, np.ndarray] | None = None) -> dict:
        """`video`, `key`, `label`, `index`, `valid` (and `host_fields`, per view, int64) of
        the batch; `valid` (B,) as planned."""
        v = self.cfg.num_views
        samples = np.repeat(info[:, 0], v)
        host = {"label": self.table.label[samples], "index": samples,
                "valid": np.repeat(valid, v), **(host_fields or {})}
        batch = {"video": self.clips(parts, "video"),
                 "key": [self.table.keys[i] for i in samples]}
        batch.update(tensors.to_device(host, {"valid": torch.bool}, self.device))
        return batch

    def clips(self, parts: list[Part], name: str) -> torch.Tensor:
        """The views `name` ("video", or "teacher" at the teacher size) of every part as one
        (B * V, 3, T, S, S) tensor, each view written once into its row."""
        v, rows = self.cfg.num_views, self.cfg.batch_size * self.cfg.num_views
        if self.resize == "dali":
            out = None
            for part in parts:
                for k in range(v):
                    tl = part.named[per_view(name, k)]
                    if out is None:
                        out = tensors.new_batch(tl, rows, self.device)
                    tensors.write_rows(tl, out, part.positions * v + k)
            return out
        size = self.cfg.input_size if name == "video" else self.teacher_input_size
        dtype = torch.uint8 if self._normalize is None else torch.float32
        out = torch.empty((rows, 3, self.cfg.num_frames, size, size), dtype=dtype)
        for part in parts:
            for i, position in enumerate(part.positions):
                for k, view in enumerate(self.views(part, i, size)):
                    tensors.put(out[position * v + k], view, self._normalize)
        return out

    def host_rows(self, parts: list[Part], name: str) -> np.ndarray:
        """The per-view host outputs `name` of every part as one (B * V, ...) array."""
        v = self.cfg.num_views
        out = None
        for part in parts:
            for k in range(v):
                rows = part.named[per_view(name, k)].as_array()
                if out is None:
                    out = np.empty((self.cfg.batch_size * v, *rows.shape[1:]), rows.dtype)
                out[part.positions * v + k] = rows
        return out

    def to_device(self, array: np.ndarray) -> torch.Tensor:
        """A small host array on the batch's device (through pinned memory on a GPU: the copy
        is queued, the host does not wait for it)."""
        t = torch.from_numpy(np.ascontiguousarray(array))
        if self.device.type == "cuda":
            return t.pin_memory().to(self.device, non_blocking=True)
        return t

    def step_generator(self, epoch: int, step: int) -> torch.Generator:
        """A torch generator on the batch's device for the per-step draws (mask, erasing)."""
        seed = np.random.SeedSequence([self.cfg.seed, epoch, self.cfg.shard_id, step, 1])
        g = torch.Generator(device=self.device)
        g.manual_seed(int(seed.generate_state(1, np.uint64)[0] >> 1))
        return g
