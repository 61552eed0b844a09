"""The DALI graph of a loader's pipelines: decode the reader's bytes (or take its PyAV frames),
RandAugment, crop + resize every view, then either normalise to float C,T,H,W or keep uint8
C,T,H,W (the step normalises on its device). Augmentation is written as plain functions of
DataNodes.

Every random choice was already drawn by the reader (`dali_pipelines.reader`) and arrives as
per-sample data, so the graph itself is deterministic: no DALI random operator is used.

No output of the (parallel) external source is returned as it is: each goes through `fn.copy`
(`passed_through`). DALI 2.1.1's release notes list a known issue: with the dynamic executor
(`exec_dynamic=True`), a parallel external source, an output returned directly and one
contiguous chunk (`batch=True`, or a batch size of 1, which `gpu_decoders` gives when it splits
a small batch) that output may be corrupted; the notes' workaround is an extra `fn.copy`. DALI
pull request #6413 ("Fix parallel external source forwarding recycled output buffers", merged
2026-06-30) looks like the fix, but no release note up to 2.4 says the issue is fixed, so the
copies stay: a few bytes per sample, plus the PyAV frames where the graph returns them as is.

Worker processes: a CPU loader's reader workers are forked (DALI refuses `fork` once the CUDA
driver is initialised in the process: then the reads run in this process, never a spawned
interpreter, and a warning says so); a GPU loader's are spawned.
"""

from __future__ import annotations

import logging

import numpy as np
from nvidia.dali import backend, fn, pipeline_def, types
from nvidia.dali.auto_aug import augmentations
from nvidia.dali.auto_aug.core import augmentation, signed_bin
from nvidia.dali.auto_aug.core._args import filter_extra_accepted_kwargs

from dali_pipelines.normalize import IMAGENET_MEAN, IMAGENET_STD
from dali_pipelines.outputs import Outputs, per_view
from dali_pipelines.reader import ClipReader
from dali_pipelines.reader_config import RandAugmentSpec

log = logging.getLogger("dali_pipelines")


@augmentation(
    mag_range=(0, 0.9), randomly_negate=True, mag_to_param=augmentations.shift_enhance_range,
    name="contrast",
)
def contrast(data, parameter):
    """DALI's `contrast` (PIL's: the centre is the luma-weighted mean) for FHWC clips, with the
    channel weights as scalars: DALI's array constant would not follow a batch split."""
    mean = fn.reductions.mean(data, axis_names="HW", keep_dims=True)  # (F, 1, 1, 3)
    center = mean[:, :, :, 0:1] * 0.299 + mean[:, :, :, 1:2] * 0.587 + mean[:, :, :, 2:3] * 0.114
    return fn.cast_like(center + (data - center) * parameter, data)


@augmentation(
    mag_range=(0, 0.9), randomly_negate=True, mag_to_param=augmentations.sharpness_kernel,
    param_device="auto", name="sharpness",
)
def sharpness(data, kernel):
    """DALI's `sharpness` through `fn.filter` (DALI's own calls a deprecated alias)."""
    return fn.filter(data, kernel)


@augmentation(name="equalize")
def equalize(data, _):
    """DALI's `equalize` through `fn.equalize` (DALI's own calls a deprecated alias)."""
    return fn.equalize(data)


def _posterize_mask(removed):
    """timm's PosterizeIncreasing: keep 4 - int(removed) bits (at least 1, as DALI keeps)."""
    return augmentations.poster_mask_uint8(4 - int(removed))


def rand_augment_suite():
    """timm's `rand-...-inc1` operations, DALI implementations, in timm's order, then identity
    (what a layer applies when its coin says not to; never drawn as an op).

    Magnitude m in [0, 10] maps to: rotate 30 deg, shear 0.3, translate 0.45 of the frame,
    enhance factors 1 +- 0.9 m/10, posterize 4 - int(4 m/10) bits, solarize threshold
    256 (1 - m/10), solarize-add 110 m/10 - as timm does. Equalize follows OpenCV's formula and
    posterize never keeps 0 bits (DALI's choices).
    """
    a = augmentations
    return [
        a.auto_contrast,
        equalize,
        a.invert,
        a.rotate.augmentation((0, 30), True),
        a.posterize.augmentation((0, 4), False, _posterize_mask),
        a.solarize.augmentation((256, 0)),
        a.solarize_add.augmentation((0, 110)),
        a.color.augmentation((0, 0.9), True, a.shift_enhance_range),
        contrast,
        a.brightness.augmentation((0, 0.9), True, a.shift_enhance_range),
        sharpness,
        a.shear_x.augmentation((0, 0.3), True),
        a.shear_y.augmentation((0, 0.3), True),
        a.translate_x.augmentation((0, 0.45), True),
        a.translate_y.augmentation((0, 0.45), True),
        a.identity,
    ]


def rand_augment_spec(n: int = 4, m: float = 7.0, mstd: float = 0.5) -> RandAugmentSpec:
    identity = len(rand_augment_suite()) - 1
    return RandAugmentSpec(n=n, m=m, mstd=mstd, num_ops=identity, identity_op=identity)


def decode(named: dict, device: str, decode_on: str | None = None):
    """(F, H, W, 3) uint8 frames of each sample on `device` ("cpu" or "gpu"): decoded by DALI on
    `decode_on` (default `device`; "gpu" is NVDEC through the mixed decoder, "cpu" DALI's CPU
    decoder, its frames moved to the GPU for a GPU pipeline), or the reader's PyAV frames."""
    decode_on = decode_on or device
    if "frames" in named:  # DALI decodes exactly the requested frames; out of range is an error
        frames = fn.decoders.video(
            named["data"], device="mixed" if decode_on == "gpu" else "cpu",
            frames=named["frames"], pad_mode="none",
        )
        return frames.gpu() if device == "gpu" and decode_on == "cpu" else frames
    frames = named["data"]  # decoded by the reader (PyAV fallback)
    return frames.gpu() if device == "gpu" else frames


def apply_rand_augment(video, ops, mags, signs, spec: RandAugmentSpec):
    """`spec.n` RandAugment layers with the reader's op choices, magnitude bins and signs; one
    set of parameters per clip (all frames alike, as VideoMAE applies it)."""
    suite = rand_augment_suite()
    shape = video.shape(dtype=types.FLOAT)[1:3]  # (H, W) of the frames
    for k in range(spec.n):
        signed = signed_bin(mags[k], random_sign=signs[k])
        # per-op parameters of every sample, computed before the split on the device each op
        # wants them (GPU clips take GPU masks/kernels for their arithmetic)
        params = [
            aug._get_param(signed, spec.num_bins, aug._infer_param_device(video)) for aug in suite
        ]
        video = select(suite, ops[k], params, data=video, shape=shape, fill_value=128)
    return video


def select(suite, op_idx, params, lo: int = 0, hi: int | None = None, **kwargs):
    """Each sample through `suite[op_idx]` with its parameter from `params[op]`.

    DALI's `auto_aug.core.select` does this under `enable_conditionals`, whose autograph
    conversion takes seconds per pipeline build (minutes with several views); this is the same
    binary split of the batch written with DALI's split/merge operators directly. Every per-
    sample input (parameters included, computed before the split) is split alongside the data.
    """
    hi = len(suite) - 1 if hi is None else hi
    if lo == hi:
        aug = suite[lo]
        extra = filter_extra_accepted_kwargs(aug.op, kwargs, 2)
        return aug.op(kwargs["data"], params[lo], **extra)
    mid = (lo + hi) // 2
    predicate = op_idx <= mid

    def split(node):
        if node is None or not hasattr(node, "name"):  # plain values go to both sides
            return node, node
        return fn._conditional.split(node, predicate=predicate)

    idx_t, idx_f = split(op_idx)
    params_t, params_f = zip(*(split(p) for p in params))
    kw_t, kw_f = {}, {}
    for key, value in kwargs.items():
        kw_t[key], kw_f[key] = split(value)
    low = select(suite, idx_t, params_t, lo, mid, **kw_t)
    high = select(suite, idx_f, params_f, mid + 1, hi, **kw_f)
    return fn._conditional.merge(low, high, predicate=predicate)


def crop_resize(video, roi, size: int, flip=None, normalize: bool = True):
    """Crop `roi` = [y0, x0, y1, x1] (source pixels) resized to size x size bilinear
    (antialiased), laid out (C, F, size, size): normalised with ImageNet mean/std to float, or
    uint8 when not `normalize`."""
    resized = fn.resize(
        video, roi_start=roi[0:2], roi_end=roi[2:4], size=[size, size],
        interp_type=types.INTERP_LINEAR, antialias=True,
    )
    mirror = 0 if flip is None else flip
    if not normalize:  # uint8 out: the transpose (and flip) only
        return fn.crop_mirror_normalize(resized, dtype=types.UINT8, output_layout="CFHW",
                                        mirror=mirror)
    return fn.crop_mirror_normalize(
        resized, dtype=types.FLOAT, output_layout="CFHW",
        mean=[255 * m for m in IMAGENET_MEAN], std=[255 * s for s in IMAGENET_STD],
        mirror=mirror,
    )


def build(
    reader: ClipReader,
    outputs: Outputs,
    *,
    device: str,
    input_size: int,
    teacher_input_size: int | None,
    dali_threads: int,
    reader_workers: int,
    device_id: int | None,
    prefetch: int = 2,
    normalize: bool = True,
    decode_on: str | None = None,
):
    """The built pipeline for `reader`; its run() returns the DataNodes named `outputs.stage`
    (per view the student video, and the teacher video when `outputs.teacher`, float32
    normalised or uint8 (`normalize`); `info`, `error`; per view the erasing boxes when the
    reader draws them), taking the reader's `outputs.reader`. Its batches are the reader's
    share of each planned batch (`reader.positions`); `decode_on` as in `decode`."""
    cfg = reader.cfg
    start_method, reader_workers = worker_start(device, reader_workers)
    parallel = reader_workers > 0

    @pipeline_def(
        batch_size=reader.pipeline_batch_size, num_threads=dali_threads, device_id=device_id,
        prefetch_queue_depth=prefetch, py_num_workers=max(reader_workers, 1),
        py_start_method=start_method, exec_dynamic=True,
    )
    def clip_pipeline():
        layouts = ["FHWC" if n == "data" and cfg.decode == "pyav" else "" for n in outputs.reader]
        kwargs = {"parallel": True, "prefetch_queue_depth": prefetch} if parallel else {}
        sources = fn.external_source(
            source=reader, num_outputs=len(outputs.reader), batch=False, layout=layouts, **kwargs
        )
        named = dict(zip(outputs.reader, sources))
        video = decode(named, device, decode_on)
        out = {"info": passed_through(named["info"]), "error": passed_through(named["error"])}
        if outputs.decode_only:
            return outputs.stage_tuple({**out, "decoded": returned(video, named)})
        for v in range(cfg.num_views):
            clip = video
            if cfg.rand_augment is not None:
                clip = apply_rand_augment(
                    clip, named[per_view("ra_ops", v)], named[per_view("ra_mags", v)],
                    named[per_view("ra_signs", v)], cfg.rand_augment,
                )
            roi, flip = named[per_view("roi", v)], named.get(per_view("flip", v))
            if outputs.resize == "torch":  # the loader crops and resizes (tensors.crop_resize)
                out[per_view("clip", v)] = returned(clip, named)
                out[per_view("roi", v)] = passed_through(roi)
                if flip is not None:
                    out[per_view("flip", v)] = passed_through(flip)
            else:
                out[per_view("video", v)] = crop_resize(clip, roi, input_size, flip, normalize)
                if outputs.teacher:
                    out[per_view("teacher", v)] = crop_resize(clip, roi, teacher_input_size,
                                                              flip, normalize)
            if cfg.erase_prob > 0:
                out[per_view("erase", v)] = passed_through(named[per_view("erase", v)])
        return outputs.stage_tuple(out)

    pipe = clip_pipeline()
    pipe.build()
    return pipe


def decode_only(videos: list[bytes], frames: list, device: str, device_id: int | None):
    """A one-thread pipeline whose every run decodes `frames[i]` of `videos[i]` (one batch of
    them) with DALI's video decoder on `device`; not built yet."""
    encoded = [np.frombuffer(data, np.uint8) for data in videos]
    indices = [np.asarray(f, np.int32) for f in frames]

    @pipeline_def(batch_size=len(encoded), num_threads=1, device_id=device_id, exec_dynamic=True)
    def decode_pipeline():
        video = fn.external_source(source=lambda: encoded, batch=True)
        wanted = fn.external_source(source=lambda: indices, batch=True)
        return fn.decoders.video(video, device="mixed" if device == "gpu" else "cpu",
                                 frames=wanted, pad_mode="none")

    return decode_pipeline()


def decode_error(data: bytes, frames, device: str, device_id: int | None) -> str | None:
    """Why DALI's video decoder on `device` fails on one sample's `frames`, or None if it does
    not: the probe that finds the culprit of a failed batch. A fresh one-sample pipeline, as a
    pipeline may not be reused after an operator failure."""
    pipe = decode_only([data], [frames], device, device_id)
    try:
        pipe.build()
        pipe.run()
    except Exception as exc:  # DALI reports decoder failures as generic errors
        return _dali_reason(str(exc)) or type(exc).__name__
    finally:
        del pipe
    return None


def _dali_reason(message: str) -> str:
    """The operator's own message out of DALI's error text (after "encountered:")."""
    tail = message.split("encountered:", 1)[-1]
    noise = ("C++ context", "Current pipeline")
    return " ".join(line for line in tail.strip().splitlines() if not line.startswith(noise)).strip()


def passed_through(node):
    """A reader output the pipeline returns as it is, copied first (DALI 2.1.1's known issue with
    a parallel external source's pass-through outputs; see the module docstring)."""
    return fn.copy(node)


def returned(node, named: dict):
    """`node` as the pipeline may return it: copied when it is the reader's own output (the
    PyAV frames on the host, when no operator came between)."""
    return passed_through(node) if any(node is source for source in named.values()) else node


def worker_start(device: str, reader_workers: int) -> tuple[str, int]:
    """(py_start_method, reader workers) of a pipeline on `device`: a GPU pipeline spawns its
    workers; a CPU pipeline forks them, or, when the CUDA driver is already initialised in this
    process (DALI then refuses to fork), reads in this process. Asks DALI's backend, never
    torch.cuda: a CPU loader does not initialise CUDA."""
    if device == "gpu":
        return "spawn", reader_workers
    if reader_workers > 0 and backend.IsDriverInitialized():
        log.warning("the CUDA driver is initialised in this process, so a CPU loader's %d reader "
                    "workers cannot be forked; reading in this process instead (a GPU loader, or "
                    "a process whose step does not use CUDA, keeps its workers)", reader_workers)
        return "fork", 0
    return "fork", reader_workers
