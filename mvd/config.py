"""Run configuration: YAML mapped onto typed dataclasses, one per component.

The only command line is ``--config FILE`` plus dotted overrides ``key.sub=value`` whose values
are parsed with YAML typing (``optim.base_lr=1e-3``, ``train.max_steps=10``, ``resume=auto``).
Every field has a default and a one-line meaning (``help`` in its metadata); unknown keys, wrong
types and bad choices raise :class:`ConfigError` naming the full dotted key and how to fix it,
before any work starts (the YAML typing and the key checks are ``mvd.yaml_config``'s; the checks
that hold for one task only are that task's, run when ``mvd.engine.tasks.task_class`` looks it
up). ``mvd-train --config FILE --help-config`` lists every key.

Derived values (global batch, scaled learning rates, steps per epoch, ...) are computed by
:func:`derive` once the world size and the loader length are known; the trainer prints them and
saves them as ``run.dir/derived.yaml`` beside the resolved ``run.dir/config.yaml``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from mvd.global_batch import BatchSplit, nearest_world_sizes, split_global_batch
from mvd.yaml_config import ConfigError, apply_override, from_dict, yaml_load


def F(default: Any, help: str) -> Any:
    """A dataclass field with a default (copied if mutable) and a one-line meaning."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help})
    return field(default=default, metadata={"help": help})


# --------------------------------------------------------------------------- components


@dataclass
class ModelConfig:
    """The trained model (student, stage-1 model or classifier)."""

    name: str = F("mvd_student_base", "registry name passed to mvd.models.create_model")
    overrides: dict = F({}, "extra keyword arguments for create_model (tiny dims, img_size, ...)")
    init: str = F("", "checkpoint to initialise the weights from (finetune: stage-2 run; eval: "
                      "fine-tuned run); '' = random init")
    drop_path: float = F(-1.0, "stochastic depth rate of the trained model; -1 = the registry's "
                               "default for the model size")
    dropout: float = F(-1.0, "dropout before the classification head (finetune, detect); -1 = "
                             "the registry's default for the size")
    head_init_scale: float = F(0.001, "classification (finetune) or action (detect) head weights "
                                      "and bias scaled by this at init")
    compile: bool = F(False, "wrap the trained model in torch.compile")
    activation_checkpointing: bool = F(False, "recompute each block's activations in backward")


@dataclass
class TeacherConfig:
    """One frozen stage-2 teacher."""

    name: str = F("", "registry name of the teacher; '' = no teacher of this kind")
    checkpoint: str = F("", "weights (MAE/VideoMAE release or a stage-1 run); '' = RANDOM init, "
                            "with a loud warning (tests and benchmarks only)")
    overrides: dict = F({}, "extra keyword arguments for create_model")


@dataclass
class TeachersConfig:
    """The frozen teachers of pretrain_mvd; one may be left out (single-teacher MVD)."""

    image: TeacherConfig = field(default_factory=lambda: TeacherConfig(name="mae_teacher_base"),
                                 metadata={"help": "image teacher (MAE ViT, sees every 2nd frame)"})
    video: TeacherConfig = field(
        default_factory=lambda: TeacherConfig(name="videomae_teacher_base"),
        metadata={"help": "video teacher (VideoMAE ViT)"})


@dataclass
class LossConfig:
    """Feature-distillation loss of pretrain_mvd."""

    type: Literal["smooth_l1", "l1", "l2"] = F("smooth_l1", "regression loss on teacher features")
    image_weight: float = F(1.0, "weight of the image-teacher term")
    video_weight: float = F(1.0, "weight of the video-teacher term")
    norm_target: bool = F(False, "LayerNorm (no affine) on teacher features before the loss")


@dataclass
class DataConfig:
    """Training data: the shard directory and the loader's clip and mask options."""

    dir: str = F("", "shard directory written by mvd-shard (holds manifest.json)")
    batch_size: int = F(16, "videos (clips; detect: keyframes) per GPU (per process) per "
                             "micro-step; with train.global_batch set, the most one process "
                             "takes (the rest is accumulated)")
    num_frames: int = F(16, "frames per clip")
    sampling_rate: int = F(4, "temporal stride between sampled frames")
    sampling: Literal["dense", "segment"] = F(
        "dense", "'dense': num_frames every sampling_rate frames at a random offset (K400); "
                 "'segment': one random frame in each of num_frames equal segments (SSv2)")
    input_size: int = F(224, "student clip side in pixels")
    teacher_input_size: int = F(0, "teacher clip side; 0 = input_size (196 for an H/14 teacher)")
    mask_type: Literal["tube", "random"] = F("tube", "masking of the student's tokens")
    mask_ratio: float = F(0.9, "fraction of tokens masked")
    device: Literal["auto", "cpu", "gpu"] = F("auto", "where the loader decodes: auto = the "
                                                       "training device")
    repeated_aug: int = F(2, "augmented views of each video per batch (repeated augmentation, "
                             "finetune); the batch holds batch_size x repeated_aug clips")
    flip: bool = F(True, "random horizontal flip (finetune; off for SSv2, whose labels name "
                         "directions)")
    rand_augment: list = F([4, 7.0, 0.5], "RandAugment [num_ops, magnitude, magnitude_std] "
                                         "(finetune); [] = off")
    erase_prob: float = F(0.25, "random erasing probability (finetune)")
    gpu_decoders: int = F(0, "concurrent DALI decode pipelines of a GPU loader, each feeding "
                             "its own NVDEC engine; 0 = the GPU's NVDEC engine count (H100/H200 "
                             "7, A100 5, L4 4, else 2)")
    cpu_decode_share: float = F(0.0, "share of each batch decoded on the host (DALI's CPU decoder "
                                     "for VP8/VP9/MJPEG, PyAV otherwise) while the GPU decodes "
                                     "the rest, in [0, 1]")
    max_failure_fraction: float = F(0.01, "share of a rank's videos that may fail to decode (each "
                                          "replaced and logged); past it every rank stops at the "
                                          "same step and mvd-train exits with status 4")
    dali_threads: int = F(0, "DALI CPU threads per process; 0 = from this process's share of "
                             "the node's cores (usable cores / LOCAL_WORLD_SIZE, less the step's "
                             "torch threads; logged at start)")
    reader_workers: int = F(-1, "reader worker processes per process (they decode on the PyAV "
                                "path); -1 = from this process's share of the cores, 0 = read in "
                                "the training process")
    loader_options: dict = F({}, "loader options by name (dali_pipelines.LoaderOptions fields, "
                                 "e.g. prefetch) over those mapped from the data keys; an "
                                 "unknown name is an error")
    expected_samples: int = F(0, "training videos the recipe expects in data.dir (K400 train "
                                 "240436); --dry-run plans with it when data.dir has no manifest "
                                 "and warns when the manifest disagrees; 0 = unknown")


@dataclass
class EvalConfig:
    """Evaluation (task eval, and the validation at the end of finetune)."""

    dir: str = F("", "held-out shard directory; '' = skip validation in finetune and detect")
    batch_size: int = F(8, "views per process per eval batch (detect: keyframes)")
    num_clips: int = F(5, "temporal clips per video (K400 5, SSv2 2)")
    num_crops: int = F(3, "spatial crops per clip")
    every_epochs: int = F(0, "validate every N epochs during finetune and detect; 0 = only at "
                             "the end")
    loader_options: dict = F({}, "eval loader options by name (dali_pipelines.LoaderOptions "
                                 "fields), over those mapped from the data and eval keys")


@dataclass
class OptimConfig:
    """AdamW and its parameter groups."""

    base_lr: float = F(1.5e-4, "lr for a global batch of 256; scaled by global_batch / 256")
    min_lr: float = F(1e-4, "final lr for a global batch of 256, scaled the same way")
    warmup_lr: float = F(0.0, "lr at step 0 of warm-up for a global batch of 256")
    weight_decay: float = F(0.05, "AdamW weight decay (not on biases, norms, positions, tokens)")
    betas: list = F([0.9, 0.95], "AdamW betas")
    eps: float = F(1e-8, "AdamW epsilon")
    layer_decay: float = F(1.0, "layer-wise lr decay (finetune; 1.0 = off)")
    clip_grad: float = F(0.0, "clip the global grad norm to this; 0 = no clipping (norm still "
                              "logged)")
    implementation: Literal["auto", "apex", "fused", "foreach"] = F(
        "auto", "auto: apex FusedAdam if importable, else torch fused on GPU, foreach on CPU")


@dataclass
class ScheduleConfig:
    """Per-step cosine lr schedule with linear warm-up, defined by epochs (not by max_steps)."""

    epochs: int = F(400, "length of the schedule in epochs")
    warmup_epochs: float = F(40, "linear warm-up in epochs")
    warmup_steps: int = F(-1, "linear warm-up in optimizer steps; -1 = from warmup_epochs")


@dataclass
class FinetuneConfig:
    """Classification training options (task finetune)."""

    mixup: float = F(0.8, "mixup alpha; 0 = off")
    cutmix: float = F(1.0, "cutmix alpha; 0 = off")
    mixup_prob: float = F(1.0, "probability of applying mixup or cutmix to a batch")
    mixup_switch_prob: float = F(0.5, "probability of cutmix instead of mixup")
    label_smoothing: float = F(0.1, "label smoothing")


@dataclass
class DetectConfig:
    """AVA spatio-temporal action detection (task detect): box augmentation and how eval scores.
    Defaults follow VideoMAE's AVA code (VideoMAE-Action-Detection, after AlphAction)."""

    min_crop: float = F(0.75, "train crop: each side covers at least this share of the frame's, "
                              "then resized to data.input_size square (random flip: data.flip)")
    min_visible: float = F(0.25, "a ground-truth box is dropped from a train view when less than "
                                 "this share of its area stays inside the crop")
    jitter: list = F([0.2, 0.1, 0.1, 0.05], "one jittered copy of each train box: corners move by "
                                            "shares of the box [x_out, x_in, y_out, y_in] "
                                            "(AlphAction random_aug); [] = no copies")
    eval_boxes: Literal["auto", "proposals", "groundtruth"] = F(
        "auto", "boxes eval scores: the shards' person proposals, or the ground-truth boxes; auto = "
                "proposals when eval.dir holds any")
    proposal_min_score: float = F(0.8, "eval: proposals with a person score below this are not "
                                       "scored (VideoMAE's box_thresh)")
    test_extend: list = F([0.1, 0.05], "eval: each box grown by [x, y] shares of its size before "
                                       "pooling (VideoMAE's test_ext); detections keep the box")
    score_by_proposal: bool = F(True, "eval: detection score = sigmoid x the proposal's person "
                                      "score (VideoMAE's PostProcessor; false: the sigmoid alone, "
                                      "as SlowFast)")


@dataclass
class TrainConfig:
    """The training loop."""

    max_steps: int = F(0, "stop after this many optimizer steps (the schedule is unchanged); "
                          "0 = run the whole schedule")
    global_batch: int = F(0, "videos per optimizer step on any world size that divides it "
                             "(the release's batch_size x update_freq x GPUs): each process "
                             "takes the largest batch <= data.batch_size that divides its share "
                             "and accumulates the rest; 0 = data.batch_size x processes x "
                             "train.accum_steps")
    accum_steps: int = F(1, "micro-batches accumulated per optimizer step (with "
                            "train.global_batch set it follows from it: leave it at 1)")
    precision: Literal["auto", "bf16", "fp16", "fp32"] = F(
        "auto", "autocast dtype: auto = bf16 on GPU, fp32 on CPU; fp16 uses a grad scaler")
    teacher_weights: Literal["fp32", "autocast"] = F(
        "fp32", "frozen teachers' weights under autocast: fp32 (as the MVD release keeps them, "
                "the residual stream stays fp32) or autocast (cast to bf16/fp16: half the weight "
                "bytes, noisier targets; README, Teacher precision)")
    nonfinite: Literal["stop", "skip"] = F(
        "stop", "non-finite loss or grad norm: stop naming the step, or skip the step and count "
                "it (skip costs one host sync per step)")
    max_skipped: int = F(100, "with nonfinite=skip, stop once this many steps were skipped")


@dataclass
class CheckpointConfig:
    """Training checkpoints (model, optimizer, schedule, loader, RNG, config)."""

    every_steps: int = F(1000, "write a checkpoint every N optimizer steps (and at the end); "
                               "0 = only at the end")
    keep_last: int = F(3, "checkpoints kept; older ones are deleted")
    resume: str = F("auto", "'auto' = newest valid checkpoint in run.dir/checkpoints, 'none' = "
                            "start fresh, or a checkpoint path")


@dataclass
class RunConfig:
    """Where the run writes and how it reports."""

    dir: str = F("runs/default", "run directory: config, metrics.jsonl, checkpoints, model")
    log_every: int = F(10, "optimizer steps between logging syncs (the only per-step host syncs)")
    progress: bool = F(True, "rich progress bar on rank 0 when stderr is a terminal (plain log "
                               "lines every log_every steps otherwise)")
    tensorboard: bool = F(False, "also write TensorBoard events (if tensorboard is installed)")
    wandb: bool = F(False, "also log to Weights & Biases on rank 0: every metrics.jsonl row, "
                           "clips/s, data-wait share, memory, eval results and the config (needs "
                           "pip install 'mvd[wandb]'; WANDB_MODE=offline logs to run.dir/wandb)")
    wandb_project: str = F("mvd", "W&B project of run.wandb (the run is named after run.dir)")


@dataclass
class DistConfig:
    """Distributed training."""

    backend: Literal["auto", "nccl", "gloo"] = F("auto", "auto = nccl on GPU, gloo on CPU")
    fsdp: bool = F(False, "shard the model with FSDP2 fully_shard (L/H) instead of DDP")
    device: Literal["auto", "cpu", "cuda"] = F("auto", "auto = cuda when available")
    timeout_s: int = F(1800, "collective timeout in seconds")
    world_size_hint: int = F(8, "processes --dry-run plans for when not under torchrun "
                                "(WORLD_SIZE wins)")
    cpu_threads: int = F(0, "torch threads per process when training on CPU; 0 = half of this "
                            "node's usable cores per process (the loader's DALI threads use the "
                            "rest), at least 1")


@dataclass
class Config:
    """One training or evaluation run."""

    task: str = F("pretrain_mvd", "what the run does: a task of mvd.engine.tasks (pretrain_mvd, "
                                  "finetune, eval, ...; mvd-train --help lists them)")
    seed: int = F(0, "base seed; rank r seeds its RNGs with seed + r")
    model: ModelConfig = field(default_factory=ModelConfig, metadata={"help": "trained model"})
    teachers: TeachersConfig = field(default_factory=TeachersConfig,
                                     metadata={"help": "frozen teachers (pretrain_mvd)"})
    loss: LossConfig = field(default_factory=LossConfig, metadata={"help": "MVD loss"})
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "training data"})
    eval: EvalConfig = field(default_factory=EvalConfig, metadata={"help": "evaluation"})
    optim: OptimConfig = field(default_factory=OptimConfig, metadata={"help": "optimizer"})
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig,
                                     metadata={"help": "lr schedule"})
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig,
                                     metadata={"help": "classification options"})
    detect: DetectConfig = field(default_factory=DetectConfig,
                                 metadata={"help": "action detection options (AVA)"})
    train: TrainConfig = field(default_factory=TrainConfig, metadata={"help": "training loop"})
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig,
                                         metadata={"help": "checkpoints"})
    run: RunConfig = field(default_factory=RunConfig, metadata={"help": "run directory, logging"})
    dist: DistConfig = field(default_factory=DistConfig, metadata={"help": "distributed"})


# --------------------------------------------------------------------------- loading


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """YAML file (or none: all defaults) + dotted overrides -> a validated :class:`Config`."""
    raw: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            raw = yaml_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of keys, got "
                              f"{type(raw).__name__}")
    for item in overrides:
        apply_override(raw, item)
    source = " + ".join(([str(path)] if path else []) + (["overrides"] if overrides else []))
    cfg = from_dict(Config, raw, source=source)
    validate(cfg)
    return cfg


def need(ok: bool, key: str, msg: str) -> None:
    """Raise ConfigError naming ``key`` unless ``ok`` (the form of every cross-field check)."""
    if not ok:
        raise ConfigError(f"config key '{key}' {msg}")


def validate(cfg: Config) -> None:
    """Cross-field checks that types alone cannot express and that hold for every task; each task
    adds its own (``check_config`` of its class in mvd.engine.tasks, run when the task is looked
    up, before any work)."""
    need(cfg.data.batch_size >= 1, "data.batch_size", "must be >= 1")
    need(cfg.train.accum_steps >= 1, "train.accum_steps", "must be >= 1")
    need(cfg.train.global_batch >= 0, "train.global_batch", "must be >= 0 (0 = not pinned)")
    need(not cfg.train.global_batch or cfg.train.accum_steps == 1, "train.accum_steps",
         f"is {cfg.train.accum_steps} but train.global_batch={cfg.train.global_batch} decides the "
         f"accumulation from the world size; leave train.accum_steps at 1 (or set "
         f"train.global_batch=0 to choose it by hand)")
    need(cfg.train.max_steps >= 0, "train.max_steps", "must be >= 0 (0 = whole schedule)")
    need(0.0 <= cfg.data.mask_ratio < 1.0, "data.mask_ratio", "must be in [0, 1)")
    need(len(cfg.optim.betas) == 2 and all(isinstance(b, (int, float)) for b in cfg.optim.betas),
         "optim.betas", "must be a list of two numbers, e.g. [0.9, 0.95]")
    need(0.0 < cfg.optim.layer_decay <= 1.0, "optim.layer_decay", "must be in (0, 1]")
    need(cfg.checkpoint.every_steps >= 0, "checkpoint.every_steps", "must be >= 0")
    need(cfg.checkpoint.keep_last >= 1, "checkpoint.keep_last", "must be >= 1")
    need(cfg.run.log_every >= 1, "run.log_every", "must be >= 1")
    need(cfg.dist.world_size_hint >= 1, "dist.world_size_hint", "must be >= 1")
    need(cfg.data.expected_samples >= 0, "data.expected_samples", "must be >= 0 (0 = unknown)")
    need(cfg.dist.cpu_threads >= 0, "dist.cpu_threads", "must be >= 0 (0 = half the cores per process)")
    need(bool(cfg.run.dir), "run.dir", "must name a directory")


def to_dict(cfg: Any) -> dict:
    """A plain nested dict (YAML/JSON-safe) of a config dataclass."""
    return dataclasses.asdict(cfg)


def dump_yaml(obj: Any) -> str:
    return yaml.safe_dump(to_dict(obj) if dataclasses.is_dataclass(obj) else obj,
                          sort_keys=False, default_flow_style=None)


def describe(cls: type = Config, prefix: str = "") -> list[str]:
    """One line per key: ``dotted.key = default  # meaning`` (for --help-config)."""
    lines = []
    inst = cls()
    for f in dataclasses.fields(cls):
        value = getattr(inst, f.name)
        if dataclasses.is_dataclass(value):
            lines.append(f"{prefix}{f.name}:  # {f.metadata.get('help', '')}")
            lines += describe(type(value), prefix + f.name + ".")
        else:
            lines.append(f"{prefix}{f.name} = {value!r}  # {f.metadata.get('help', '')}")
    return lines


# --------------------------------------------------------------------------- derived values


@dataclass
class Derived:
    """Values computed from the config, the world size and the loader (saved as derived.yaml)."""

    world_size: int
    global_batch: int  # videos per optimizer step = per_gpu_batch x world x accum_steps
    per_gpu_batch: int  # videos per process per micro-step (the loader's batch)
    accum_steps: int  # micro-steps per optimizer step
    clips_per_step: int  # clips the model sees per optimizer step (x repeated_aug when fine-tuning)
    lr: float  # peak lr = base_lr x global_batch / 256
    min_lr: float
    warmup_lr: float
    steps_per_epoch: int  # optimizer steps per epoch
    total_steps: int  # optimizer steps of the whole schedule
    warmup_steps: int
    max_steps: int  # steps this run will reach (<= total_steps)


def plan_batch(cfg: Config, world_size: int, multiple_of: int = 1) -> BatchSplit:
    """Per-process batch and accumulation on ``world_size`` processes (:mod:`mvd.global_batch`):
    from ``train.global_batch`` when the recipe pins it, else ``data.batch_size`` and
    ``train.accum_steps`` as given. ``multiple_of``: what the task needs the per-process batch
    to be a multiple of (``Task.batch_multiple``). A world size that cannot reach the pinned
    batch exactly is a ConfigError naming the key and the nearest world sizes that can, before
    any work."""
    d, t = cfg.data, cfg.train
    if not t.global_batch:
        return BatchSplit(d.batch_size * world_size * t.accum_steps, d.batch_size, t.accum_steps)
    split = split_global_batch(t.global_batch, world_size, d.batch_size, multiple_of)
    if split is None:
        near = nearest_world_sizes(t.global_batch, world_size, d.batch_size, multiple_of)
        each = f"at most data.batch_size={d.batch_size}" + (
            f", a multiple of {multiple_of} (the task's need)" if multiple_of > 1 else "")
        raise ConfigError(
            f"config key 'train.global_batch' is {t.global_batch}, which {world_size} processes "
            f"cannot reach exactly with {each} each"
            f"; run on {' or '.join(map(str, near)) or 'another number of'} processes, or "
              f"change train.global_batch (0 = data.batch_size x processes x train.accum_steps)")
    return split


def per_process_config(cfg: Config, split: BatchSplit) -> Config:
    """``cfg`` with ``data.batch_size`` set to the planned per-process batch, for the parts that
    build the loader and its batches (the trainer and the dry run give this to the task).
    Planning it again gives the same split: the per-process batch divides its share."""
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, batch_size=split.per_process))


def derive(cfg: Config, world_size: int, batches_per_epoch: int, views: int = 1) -> Derived:
    """Global batch (:func:`plan_batch`), lr scaling (x global_batch / 256) and step counts;
    ``batches_per_epoch`` is the loader's length at the planned per-process batch, ``views``
    the clips each video gives per step (the task's ``clip_views``).

    The global batch counts videos, as both MVD release scripts do: pretraining's
    ``batch_size x update_freq x GPUs`` (one clip per video), and fine-tuning's too, although
    each video there brings ``data.repeated_aug`` augmented views (run_class_finetuning.py
    scales lr by ``batch_size x update_freq x world_size / 256``, without ``num_sample``)."""
    split = plan_batch(cfg, world_size)
    gb = split.global_batch
    scale = gb / 256.0
    spe = batches_per_epoch // split.accum_steps
    if spe < 1:
        raise ConfigError(f"the loader gives {batches_per_epoch} batches per epoch per process, "
                          f"fewer than the {split.accum_steps} accumulated per step: lower "
                          f"data.batch_size, train.accum_steps or train.global_batch, or use "
                          f"more data")
    total = spe * cfg.schedule.epochs
    warm = cfg.schedule.warmup_steps
    if warm < 0:
        warm = round(cfg.schedule.warmup_epochs * spe)
    max_steps = min(cfg.train.max_steps, total) if cfg.train.max_steps else total
    return Derived(world_size=world_size, global_batch=gb, per_gpu_batch=split.per_process,
                   accum_steps=split.accum_steps, clips_per_step=gb * views,
                   lr=cfg.optim.base_lr * scale, min_lr=cfg.optim.min_lr * scale,
                   warmup_lr=cfg.optim.warmup_lr * scale, steps_per_epoch=spe, total_steps=total,
                   warmup_steps=min(warm, total), max_steps=max_steps)
