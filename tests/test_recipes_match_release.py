"""Every shipped recipe held against the MVD release's scripts (ruiwang2021/mvd at 8248039).

``RELEASE`` is a table of facts read from the release: each row names its script and gives the
values its flags set, over the defaults of the script's Python entry point (``PRETRAIN_DEFAULTS``:
run_mvd_pretraining.py's argparse defaults, ``FINETUNE_DEFAULTS``: run_class_finetuning.py's).
Each recipe's plan (``mvd.config.derive`` at the planned per-GPU batch, as ``--dry-run`` makes it)
is compared with its row at the release's GPU count and at 8 GPUs. What we change on purpose is
listed in ``DEVIATIONS`` with its reason; recipes without a release counterpart are listed in
``NO_COUNTERPART`` with the reason. A recipe in configs/ that is in none of them fails.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from dali_pipelines.sampling import steps_per_epoch
from mvd.config import ConfigError, derive, load_config, plan_batch
from mvd.engine.precision import plan_precision
from mvd.engine.tasks import task_class
from mvd.models.registry import model_defaults

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p.relative_to(ROOT / "configs").as_posix() for p in (ROOT / "configs").rglob("*.yaml"))


@dataclass(frozen=True)
class Release:
    """One release script's run: its flags over its entry point's defaults."""

    script: str  # under scripts/ in ruiwang2021/mvd
    gpus: int  # the script's comment: "train on N V100 GPUs"
    batch_size: int  # --batch_size (videos per GPU)
    update_freq: int  # --update_freq
    lr: float  # --lr, per 256 videos (x batch_size x update_freq x GPUs / 256)
    min_lr: float  # --min_lr, scaled the same way
    epochs: int  # --epochs
    warmup_epochs: float  # --warmup_epochs
    drop_path: float  # --drop_path
    betas: tuple = (0.9, 0.999)  # --opt_betas
    weight_decay: float = 0.05  # --weight_decay
    warmup_lr: float = 0.0  # utils.cosine_scheduler is called without start_warmup_value: 0
    num_frames: int = 16  # --num_frames
    sampling_rate: int = 4  # --sampling_rate
    # fine-tuning only
    layer_decay: float | None = None  # --layer_decay
    dropout: float | None = None  # --fc_drop_rate
    mixup: float | None = None  # --mixup
    cutmix: float | None = None  # --cutmix
    mixup_switch_prob: float | None = None  # --mixup_switch_prob
    label_smoothing: float | None = None  # --smoothing
    repeated_aug: int | None = None  # --num_sample
    erase_prob: float | None = None  # --reprob
    rand_augment: tuple | None = None  # --aa rand-m7-n4-mstd0.5-inc1: [n, m, mstd]
    flip: bool | None = None  # datasets.py: no horizontal flip for SSV2
    sampling: str | None = None  # kinetics.py dense window / ssv2.py segments
    test_clips: int | None = None  # --test_num_segment
    test_crops: int | None = None  # --test_num_crop
    # pretraining only
    teacher_input_size: int | None = None  # --teacher_input_size

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.update_freq * self.gpus


# run_mvd_pretraining.py: --lr 1.5e-4, --min_lr 1e-5, --warmup_epochs 40, --drop_path 0.1,
# --opt_betas (set to 0.9 0.95 by every script), --weight_decay 0.05, --num_frames 16,
# --sampling_rate 4, --teacher_input_size 224
PRETRAIN_DEFAULTS = dict(lr=1.5e-4, min_lr=1e-5, warmup_epochs=40, drop_path=0.1, betas=(0.9, 0.95),
                         teacher_input_size=224)
# run_class_finetuning.py: --lr 1e-3, --min_lr 1e-6, --warmup_epochs 5, --drop_path 0.1,
# --layer_decay 0.75, --fc_drop_rate 0, --mixup 0.8, --cutmix 1.0, --mixup_switch_prob 0.5,
# --smoothing 0.1, --num_sample 2, --reprob 0.25, --aa rand-m7-n4-mstd0.5-inc1,
# --test_num_segment 5, --test_num_crop 3 (the scripts set --opt_betas 0.9 0.999)
FINETUNE_DEFAULTS = dict(lr=1e-3, min_lr=1e-6, warmup_epochs=5, drop_path=0.1, layer_decay=0.75,
                         dropout=0.0, mixup=0.8, cutmix=1.0, mixup_switch_prob=0.5,
                         label_smoothing=0.1, repeated_aug=2, erase_prob=0.25,
                         rand_augment=(4, 7.0, 0.5), test_clips=5, test_crops=3)
K400 = dict(flip=True, sampling="dense")
SSV2 = dict(flip=False, sampling="segment")  # its scripts pass no --sampling_rate (segments)


def pretrain(script: str, **flags) -> Release:
    return Release(script=script, **{**PRETRAIN_DEFAULTS, **flags})


def finetune(script: str, **flags) -> Release:
    return Release(script=script, **{**FINETUNE_DEFAULTS, **flags})


S, B = "mvd_vit_small_from_vit_base_teacher_epoch_400", "mvd_vit_base_from_vit_base_teacher_epoch_400"
L, H = "mvd_vit_large_from_vit_large_teacher_epoch_800", "mvd_vit_huge_from_vit_huge_teacher_epoch_800"
RELEASE = {
    # our pretraining recipes: S and B from ViT-B teachers at 400 epochs, L and H at 800
    "pretrain_mvd_small_k400.yaml": pretrain(f"{S}/pretrain_mvd_small_on_k400.sh", gpus=32,
                                             batch_size=16, update_freq=2, min_lr=1e-4, epochs=401),
    "pretrain_mvd_base_k400.yaml": pretrain(f"{B}/pretrain_mvd_base_on_k400.sh", gpus=32,
                                            batch_size=16, update_freq=2, min_lr=1e-4, epochs=401),
    # no --min_lr: the default 1e-5
    "pretrain_mvd_large_k400.yaml": pretrain(f"{L}/pretrain_mvd_large_on_k400.sh", gpus=32,
                                             batch_size=8, update_freq=2, epochs=801),
    "pretrain_mvd_huge_k400.yaml": pretrain(f"{H}/pretrain_mvd_huge_on_k400.sh", gpus=32,
                                            batch_size=8, update_freq=2, epochs=801, drop_path=0.2,
                                            teacher_input_size=196),
    # fine-tuning the students those recipes make (checkpoint-399 / -799)
    "finetune_small_k400.yaml": finetune(f"{S}/finetune_on_k400.sh", gpus=16, batch_size=12,
                                         update_freq=2, lr=5e-4, epochs=150, **K400),
    "finetune_small_ssv2.yaml": finetune(f"{S}/finetune_on_ssv2.sh", gpus=32, batch_size=12,
                                         update_freq=1, lr=1e-3, layer_decay=0.7, epochs=40,
                                         test_clips=2, **SSV2),
    "finetune_base_k400.yaml": finetune(f"{B}/finetune_on_k400.sh", gpus=32, batch_size=6,
                                        update_freq=2, lr=5e-4, epochs=75, **K400),
    "finetune_base_ssv2.yaml": finetune(f"{B}/finetune_on_ssv2.sh", gpus=16, batch_size=24,
                                        update_freq=1, lr=5e-4, epochs=30, test_clips=2, **SSV2),
    "finetune_large_k400.yaml": finetune(f"{L}/finetune_on_k400.sh", gpus=32, batch_size=16,
                                         update_freq=1, lr=1e-3, epochs=50, dropout=0.5,
                                         drop_path=0.3, **K400),
    "finetune_large_ssv2.yaml": finetune(f"{L}/finetune_on_ssv2.sh", gpus=16, batch_size=16,
                                         update_freq=1, lr=5e-4, epochs=30, dropout=0.5,
                                         drop_path=0.3, test_clips=2, **SSV2),
    "finetune_huge_k400.yaml": finetune(f"{H}/finetune_on_k400.sh", gpus=32, batch_size=8,
                                        update_freq=1, lr=1e-3, epochs=50, dropout=0.5,
                                        drop_path=0.3, **K400),
    "finetune_huge_ssv2.yaml": finetune(f"{H}/finetune_on_ssv2.sh", gpus=16, batch_size=8,
                                        update_freq=1, lr=5e-4, min_lr=1e-5, epochs=30, dropout=0.5,
                                        drop_path=0.3, test_clips=2, **SSV2),
}
# the eval recipes: the test views of the fine-tuning script of the same size and dataset
EVAL_OF = {f"eval_{size}_{data}.yaml": f"finetune_{size}_{data}.yaml"
           for size in ("small", "base", "large", "huge") for data in ("k400", "ssv2")}

# What we run differently on purpose, and why (the test checks that each one is really there).
DEVIATIONS = {
    "per-GPU batch and update_freq": "train.global_batch keeps the release's global batch on any "
        "GPU count; data.batch_size is what one H100/H200-class GPU holds (32 pretraining clips, "
        "4-8 fine-tuning videos), so the split differs (S/B: 32 x 1 on 32 GPUs, release 16 x 2). "
        "Accumulation averages the same samples: the gradient of a step is the release's.",
    "precision": "bf16 autocast (the release: fp16 with a loss scaler; its fine-tuning runs "
        "DeepSpeed fp16). Teacher weights stay fp32 as in the release (train.teacher_weights).",
    "epochs 401 / 801": "kept as the release's --epochs, so every step's lr is the release's; the "
        "release fine-tunes from checkpoint-399 / -799 (one epoch before the end), our run ends "
        "one epoch later at the schedule's floor (train.max_steps stops it at the release's).",
    "fine-tuning train clip": "the release's fine-tuning reader (kinetics.py VideoClsDataset) "
        "spreads 16 frames over a 64-frame window with linspace (stride 64/15, int-truncated); "
        "ours takes every 4th frame as in pretraining (kinetics.py VideoDistillation), one dense "
        "sampler for both stages. Not matched yet.",
}
NO_COUNTERPART = {
    "tiny/": "CPU recipes for the tests and the demo (32 px, 2 blocks): no release run",
    "detect_ava_": "the MVD release ships no AVA scripts; the recipes follow VideoMAE's "
                   "(VideoMAE-Action-Detection), cited in each file",
    "finetune_ucf101.yaml": "the MVD release ships no UCF101 script (its datasets.py reads the set)",
    "finetune_hmdb51.yaml": "the MVD release ships no HMDB51 script",
    "eval_ucf101.yaml": "no UCF101 script in the release",
    "eval_hmdb51.yaml": "no HMDB51 script in the release",
    "pretrain_mae_base_k400.yaml": "stage 1: the MVD release distils from released MAE "
                                   "checkpoints and ships no MAE training script",
    "pretrain_videomae_base_k400.yaml": "stage 1: the MVD release distils from released VideoMAE "
                                        "checkpoints and ships no VideoMAE training script",
}


def no_counterpart(name: str) -> str | None:
    return next((why for key, why in NO_COUNTERPART.items() if name.startswith(key)), None)


def plan(name: str, world: int):
    """The recipe's config and its derived plan on ``world`` GPUs, as --dry-run makes them."""
    cfg = load_config(ROOT / "configs" / name)
    split = plan_batch(cfg, world)
    batches = steps_per_epoch(cfg.data.expected_samples, split.per_process, world, drop_last=True)
    return cfg, derive(cfg, world, batches, views=task_class(cfg).clip_views(cfg))


def test_every_recipe_has_a_release_row_an_eval_source_or_a_reason():
    for name in CONFIGS:
        assert name in RELEASE or name in EVAL_OF or no_counterpart(name), \
            f"configs/{name}: add its release row to RELEASE, or its reason to NO_COUNTERPART"
    assert all(r.script.endswith(".sh") for r in RELEASE.values())
    assert all(reason for reason in DEVIATIONS.values())


@pytest.mark.parametrize("name", sorted(RELEASE))
@pytest.mark.parametrize("gpus", ["release", 8])
def test_recipe_plans_the_release_schedule(name, gpus):
    rel = RELEASE[name]
    world = rel.gpus if gpus == "release" else gpus
    cfg, d = plan(name, world)
    gb = rel.global_batch
    assert d.global_batch == gb, (rel.script, "batch_size x update_freq x GPUs")
    assert d.per_gpu_batch * world * d.accum_steps == gb and d.per_gpu_batch <= cfg.data.batch_size
    assert d.lr == pytest.approx(rel.lr * gb / 256), (rel.script, "--lr")
    assert d.min_lr == pytest.approx(rel.min_lr * gb / 256), (rel.script, "--min_lr")
    assert d.warmup_lr == pytest.approx(rel.warmup_lr)
    assert cfg.schedule.epochs == rel.epochs, (rel.script, "--epochs")
    assert cfg.schedule.warmup_epochs == rel.warmup_epochs and cfg.schedule.warmup_steps < 0
    assert d.warmup_steps == round(rel.warmup_epochs * d.steps_per_epoch)
    # the release: len(dataset) // global batch steps an epoch (ours floors per rank first)
    assert abs(d.steps_per_epoch - cfg.data.expected_samples // gb) <= 1
    drop_path = cfg.model.drop_path if cfg.model.drop_path >= 0 else \
        model_defaults(cfg.model.name)["drop_path_rate"]
    assert drop_path == rel.drop_path, (rel.script, "--drop_path")
    assert tuple(cfg.optim.betas) == rel.betas and cfg.optim.weight_decay == rel.weight_decay
    assert (cfg.data.num_frames, cfg.data.sampling_rate) == (rel.num_frames, rel.sampling_rate)
    if cfg.task == "pretrain_mvd":
        assert (cfg.data.teacher_input_size or cfg.data.input_size) == rel.teacher_input_size
        precision = plan_precision(cfg.train.precision, "cuda", fsdp=cfg.dist.fsdp,
                                   teacher_weights=cfg.train.teacher_weights)
        assert precision.teacher_dtype == torch.float32  # as the release keeps them
        return
    dropout = cfg.model.dropout if cfg.model.dropout >= 0 else \
        model_defaults(cfg.model.name).get("head_drop_rate", 0.0)
    got = dict(layer_decay=cfg.optim.layer_decay, dropout=dropout, mixup=cfg.finetune.mixup,
               cutmix=cfg.finetune.cutmix, mixup_switch_prob=cfg.finetune.mixup_switch_prob,
               label_smoothing=cfg.finetune.label_smoothing, repeated_aug=cfg.data.repeated_aug,
               erase_prob=cfg.data.erase_prob, rand_augment=tuple(cfg.data.rand_augment),
               flip=cfg.data.flip, sampling=cfg.data.sampling, test_clips=cfg.eval.num_clips,
               test_crops=cfg.eval.num_crops)
    want = {k: getattr(rel, k) for k in got}
    assert got == want, rel.script
    assert d.clips_per_step == gb * rel.repeated_aug  # each video brings num_sample views


@pytest.mark.parametrize("name", sorted(EVAL_OF))
def test_eval_recipe_uses_the_release_test_views(name):
    cfg = load_config(ROOT / "configs" / name)
    rel = RELEASE[EVAL_OF[name]]
    assert (cfg.eval.num_clips, cfg.eval.num_crops) == (rel.test_clips, rel.test_crops), rel.script
    assert (cfg.data.num_frames, cfg.data.sampling_rate, cfg.data.sampling) == \
        (rel.num_frames, rel.sampling_rate, rel.sampling)


def test_deviations_are_what_the_recipes_do():
    """Each listed deviation is visible in the plans (a stale entry fails)."""
    _, ours = plan("pretrain_mvd_base_k400.yaml", 32)
    rel = RELEASE["pretrain_mvd_base_k400.yaml"]
    assert (ours.per_gpu_batch, ours.accum_steps) != (rel.batch_size, rel.update_freq)
    cfg = load_config(ROOT / "configs/pretrain_mvd_base_k400.yaml")
    assert plan_precision(cfg.train.precision, "cuda").name == "bf16"
    assert cfg.schedule.epochs == 401 and cfg.train.max_steps == 0


def test_a_pretrain_recipe_refuses_a_world_that_cannot_reach_its_batch():
    cfg = load_config(ROOT / "configs/pretrain_mvd_large_k400.yaml")
    with pytest.raises(ConfigError, match=r"train.global_batch.*512.*24 processes.*16 or 32"):
        plan_batch(cfg, 24)
    assert plan_batch(cfg, 512).per_process == 1  # one clip per GPU, no accumulation
