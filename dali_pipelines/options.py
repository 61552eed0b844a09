"""The loaders' options: one frozen dataclass, one name per option, the names mvd's YAML uses.

Plain Python (no DALI, no torch, no numpy): the training config maps its `data`, `eval` and
`detect` fields onto `LoaderOptions` field for field, and a loader takes one object. Each loader
reads the fields it needs and leaves the others (a pretrain loader has no use for `num_crops`);
the docstring of each field group says which loader reads it.

"Auto" is spelled the way the YAML spells it: 0 for counts the loader works out
(`gpu_decoders`, `dali_threads`, `teacher_input_size`, `short_side_size`), -1 for
`reader_workers` (whose 0 means "read in this process"); the resulting split is `loader.budget`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Mapping

DEVICES = ("cpu", "gpu")
DECODERS = ("auto", "dali", "pyav")
SAMPLINGS = ("dense", "segment")
MASK_TYPES = ("tube", "random")
FINETUNE_CROPS = ("random_resized", "multiscale")
EVAL_BOXES = ("auto", "proposals", "groundtruth")
STEP_DEVICES = (None, "cpu", "cuda")


@dataclass(frozen=True)
class LoaderOptions:
    """Every option of PretrainLoader, FinetuneLoader, EvalLoader and DetectLoader."""

    # -- every loader: where it runs and what it samples -------------------------------------
    device: str = "gpu"  # "gpu" | "cpu": where the batches are made (and, for DALI, decoded)
    decoder: str = "auto"  # "auto" | "dali" | "pyav" (auto: PyAV for codecs DALI cannot decode)
    seed: int = 0  # training loaders' draws; the eval views are fixed
    shard_id: int = 0  # this rank
    num_shards: int = 1  # the ranks
    num_frames: int = 16
    sampling_rate: int = 4
    sampling: str = "dense"  # "dense" | "segment" (DetectLoader: centred on the keyframe)
    input_size: int = 224
    drop_last: bool = True  # training loaders; eval loaders read every sample once
    normalize: bool = True  # float32 ImageNet-normalised clips; False: uint8 (the step normalises)
    # -- PretrainLoader -----------------------------------------------------------------------
    teacher_input_size: int = 0  # 0 = input_size
    mask_type: str = "tube"  # "tube" | "random"
    mask_ratio: float = 0.9
    patch_size: int = 16  # the student's (the mask's grid)
    tubelet_size: int = 2
    # -- FinetuneLoader (flip: DetectLoader too) ----------------------------------------------
    crop: str = "random_resized"  # "random_resized" | "multiscale"
    repeated_aug: int = 2  # augmented views of each video per batch (repeated augmentation)
    flip: bool = True
    rand_augment: tuple = (4, 7.0, 0.5)  # (num_ops, magnitude, magnitude_std); () = off
    erase_prob: float = 0.25
    # -- EvalLoader ---------------------------------------------------------------------------
    num_clips: int = 5
    num_crops: int = 3
    short_side_size: int = 0  # the short side resized to this before the crops; 0 = input_size
    # -- DetectLoader -------------------------------------------------------------------------
    min_crop: float = 0.75
    min_visible: float = 0.25
    jitter: tuple = (0.2, 0.1, 0.1, 0.05)  # (x_out, x_in, y_out, y_in); () = no copies
    eval_boxes: str = "auto"  # "auto" | "proposals" | "groundtruth"
    proposal_min_score: float = 0.0
    test_extend: tuple = (0.1, 0.05)
    # -- decoding and the CPU split (dali_pipelines.budget) ----------------------------------
    gpu_decoders: int = 0  # concurrent decode pipelines; 0 = the GPU's NVDEC engines (1 on CPU)
    cpu_decode_share: float = 0.0  # share of each batch one host pipeline decodes, in [0, 1]
    dali_threads: int = 0  # 0 = from budget.cpu_budget
    reader_workers: int = -1  # reader worker processes; -1 = from budget.cpu_budget, 0 = none
    prefetch: int = 2  # batches each pipeline runs ahead
    max_failure_fraction: float = 0.01
    step_device: str | None = None  # the training step beside the loader: "cpu" | "cuda" | None
    torch_threads: int = 0  # its torch threads (0 = auto)

    def __post_init__(self):
        for name in ("rand_augment", "jitter", "test_extend"):  # YAML gives lists
            object.__setattr__(self, name, tuple(getattr(self, name)))
        _choice(self, "device", DEVICES)
        _choice(self, "decoder", DECODERS)
        _choice(self, "sampling", SAMPLINGS)
        _choice(self, "mask_type", MASK_TYPES)
        _choice(self, "crop", FINETUNE_CROPS)
        _choice(self, "eval_boxes", EVAL_BOXES)
        _choice(self, "step_device", STEP_DEVICES)
        for name in ("num_frames", "sampling_rate", "input_size", "patch_size", "tubelet_size",
                     "repeated_aug", "num_clips", "num_crops", "num_shards", "prefetch"):
            _at_least(self, name, 1)
        for name in ("teacher_input_size", "short_side_size", "gpu_decoders", "dali_threads",
                     "torch_threads"):
            _at_least(self, name, 0)
        _at_least(self, "reader_workers", -1)
        if not 0 <= self.shard_id < self.num_shards:
            raise ValueError(f"LoaderOptions.shard_id {self.shard_id} not in [0, num_shards="
                             f"{self.num_shards})")
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"LoaderOptions.mask_ratio must be in [0, 1), got {self.mask_ratio}")
        for name in ("erase_prob", "cpu_decode_share", "max_failure_fraction", "min_visible"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"LoaderOptions.{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0.0 < self.min_crop <= 1.0:
            raise ValueError(f"LoaderOptions.min_crop must be in (0, 1], got {self.min_crop}")
        if len(self.rand_augment) not in (0, 3):
            raise ValueError(f"LoaderOptions.rand_augment must be () or (num_ops, magnitude, "
                             f"magnitude_std), got {self.rand_augment}")
        if len(self.jitter) not in (0, 4) or any(j < 0 for j in self.jitter):
            raise ValueError(f"LoaderOptions.jitter must be () or four shares >= 0 (x_out, x_in, "
                             f"y_out, y_in), got {self.jitter}")
        if len(self.test_extend) != 2 or any(e < 0 for e in self.test_extend):
            raise ValueError(f"LoaderOptions.test_extend must be two shares >= 0 (x, y), got "
                             f"{self.test_extend}")

    @classmethod
    def of(cls, options: LoaderOptions | None = None, overrides: Mapping[str, Any] | None = None,
           where: str = "loader keyword") -> LoaderOptions:
        """`options` (default all defaults) with `overrides` by field name; an unknown name is a
        ValueError naming it (`where` says where it came from) and the fields there are."""
        base = options if options is not None else cls()
        if not overrides:
            return base
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"{where} {', '.join(map(repr, unknown))}: not a loader option; the "
                             f"options are {', '.join(sorted(known))}")
        return replace(base, **overrides)

    @property
    def teacher_size(self) -> int:
        """The teacher view's side (teacher_input_size, 0 = input_size)."""
        return self.teacher_input_size or self.input_size

    @property
    def eval_short_side(self) -> int:
        """The eval views' short side before the crops (short_side_size, 0 = input_size)."""
        return self.short_side_size or self.input_size


def _choice(options: LoaderOptions, name: str, allowed: tuple) -> None:
    value = getattr(options, name)
    if value not in allowed:
        raise ValueError(f"LoaderOptions.{name} must be one of {', '.join(map(repr, allowed))}, "
                         f"got {value!r}")


def _at_least(options: LoaderOptions, name: str, low: int) -> None:
    value = getattr(options, name)
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"LoaderOptions.{name} must be an integer >= {low}, got {value!r}")
