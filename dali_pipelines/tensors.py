"""DALI outputs to torch tensors on the loader's device.

Where the host waits: once per pipeline per batch, in `pipe.run()` (`runner`), which is called
without a stream and so returns host-synchronous outputs (DALI's docstring; with prefetching the
batch it returns is usually done already). Nothing here waits again.

GPU loaders: DALI crops and resizes; each view is copied once, by DALI, straight into its row of
the batch tensor (`write_rows`): the views of a video, or the samples a pipeline decoded, land in
their final rows without a torch.stack or a second copy, queued on torch's current stream
(ordered with the training step; the copy itself adds no host wait).

CPU loaders: DALI decodes (and RandAugments); the views are cropped and resized here, in torch,
from a zero-copy view of DALI's frames (`frames`, `crop_resize`), and each is written once into
its row (`put`, normalising on the way for float batches). Why: at the reference clip (16 frames,
320x240 -> 224) DALI's CPU resize costs 7-17 CPU ms per clip (linear, antialiased; measured on
this project's 2-core machine), torch's uint8 antialiased bilinear kernel about 1.7 ms - and the
decode itself about 25 ms.
"""

from __future__ import annotations

import ctypes

import numpy as np
import torch
import torch.nn.functional as F
from nvidia.dali.plugin.pytorch import to_torch_type

from dali_pipelines.normalize import Normalize


def new_batch(tl, rows: int, device: torch.device) -> torch.Tensor:
    """An empty (rows, *sample shape) tensor of the TensorList's dtype on `device`."""
    shape = tuple(tl[0].shape())
    return torch.empty((rows, *shape), dtype=to_torch_type[tl.dtype], device=device)


def write_rows(tl, out: torch.Tensor, rows: np.ndarray) -> None:
    """Copy sample i of the DALI TensorList `tl` into out[rows[i]] (rows: int array).

    One copy of the whole list when the rows are out's rows in order; otherwise one copy per
    sample (each row of `out` is contiguous).
    """
    if tuple(tl[0].shape()) != tuple(out.shape[1:]) or to_torch_type[tl.dtype] != out.dtype:
        raise RuntimeError(f"DALI output {tuple(tl[0].shape())} {tl.dtype} does not fit the "
                           f"batch rows {tuple(out.shape[1:])} {out.dtype}")
    gpu = out.is_cuda
    stream = ctypes.c_void_p(torch.cuda.current_stream(out.device).cuda_stream) if gpu else None

    def copy(src, dst: torch.Tensor) -> None:
        ptr = ctypes.c_void_p(dst.data_ptr())
        if gpu:  # queued on torch's stream: ordered with the step, no further host wait
            src.copy_to_external(ptr, stream, non_blocking=True)
        else:
            src.copy_to_external(ptr)

    if len(rows) == out.shape[0] and np.array_equal(rows, np.arange(len(rows))):
        copy(tl, out)
        return
    for i, row in enumerate(rows):
        copy(tl[i], out[int(row)])


def to_device(arrays: dict[str, np.ndarray], dtypes: dict[str, torch.dtype],
              device: torch.device) -> dict[str, torch.Tensor]:
    """Small per-batch host arrays of one length (labels, indices, flags) as tensors on `device`
    (int64 unless `dtypes` says otherwise). On a GPU they travel as the rows of one pinned int64
    buffer in one non_blocking copy (from pageable memory CUDA would copy synchronously), then
    take their dtypes on the device; on the CPU they are the arrays' own memory."""
    if device.type != "cuda":
        return {name: torch.as_tensor(a, dtype=dtypes.get(name, torch.int64))
                for name, a in arrays.items()}
    names = list(arrays)
    host = torch.empty((len(names), len(arrays[names[0]])), dtype=torch.int64, pin_memory=True)
    for row, name in zip(host, names):
        row.copy_(torch.from_numpy(np.asarray(arrays[name], dtype=np.int64)))
    rows = host.to(device, non_blocking=True)  # pinned: the copy overlaps, no host wait
    return {name: rows[k].to(dtypes.get(name, torch.int64)) for k, name in enumerate(names)}


def frames(tl, i: int) -> torch.Tensor:
    """Sample i of a CPU TensorList of (F, H, W, 3) uint8 frames as a torch tensor (a view of
    DALI's buffer, no copy; valid while the TensorList is)."""
    return torch.from_dlpack(tl[i])


def resize(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(T, h, w, 3) uint8 -> (T, 3, height, width) uint8 (channels-last memory), bilinear,
    antialiased when shrinking (torch's uint8 kernel)."""
    return F.interpolate(frames.permute(0, 3, 1, 2), size=(height, width), mode="bilinear",
                         antialias=True, align_corners=False)


def crop_resize(frames: torch.Tensor, roi: np.ndarray, size: int, flip: bool = False) -> torch.Tensor:
    """(T, H, W, 3) uint8 frames cropped to roi = [y0, x0, y1, x1] (whole pixels), resized to
    size x size, flipped horizontally when `flip`: (T, 3, size, size) uint8."""
    y0, x0, y1, x1 = (int(round(float(c))) for c in roi)
    view = resize(frames[:, y0:y1, x0:x1], size, size)
    return view.flip(-1) if flip else view


def put(row: torch.Tensor, view: torch.Tensor, normalize: Normalize | None) -> None:
    """Write a (T, 3, S, S) uint8 view into its batch row (3, T, S, S): as it is for a uint8
    batch, normalised on the way (one pass) for a float32 batch."""
    if normalize is None:
        row.copy_(view.transpose(0, 1))
    else:
        normalize.into(row, view.transpose(0, 1))
