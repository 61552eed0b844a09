"""mvd.config: YAML -> typed dataclasses, dotted overrides, errors that name the key, derived
values; every shipped recipe loads."""

from pathlib import Path

import pytest

from mvd.config import Config, ConfigError, derive, describe, load_config, plan_batch
from mvd.engine.dryrun import make_plan
from mvd.engine.tasks import TASKS, task_class
from mvd.train import main

ROOT = Path(__file__).resolve().parents[2]

CONFIGS = sorted(Path(__file__).resolve().parents[2].joinpath("configs").rglob("*.yaml"))
TINY = Path(__file__).resolve().parents[2] / "configs" / "tiny"


def test_every_shipped_recipe_loads_and_names_registered_models():
    from mvd.models import list_models

    assert len(CONFIGS) >= 5 + 12  # tiny tasks + the reference recipes
    known = set(list_models())
    for path in CONFIGS:
        cfg = load_config(path, ["data.dir=/data/shards", "eval.dir=/data/val"])
        assert isinstance(cfg, Config), path
        names = [cfg.model.name] + ([t.name for t in (cfg.teachers.image, cfg.teachers.video)
                                     if t.name] if cfg.task == "pretrain_mvd" else [])
        assert set(names) <= known, (path, names)


@pytest.mark.parametrize("task", ["pretrain_mvd", "pretrain_videomae", "pretrain_mae", "finetune",
                                  "eval"])
def test_tiny_configs_exist_for_every_task_and_take_the_contract_overrides(task):
    cfg = load_config(TINY / f"{task}.yaml", ["data.dir=/d", "run.dir=/r", "train.max_steps=3",
                                              "checkpoint.every_steps=2", "seed=7"])
    assert (cfg.task, cfg.data.dir, cfg.run.dir, cfg.train.max_steps) == (task, "/d", "/r", 3)
    assert (cfg.checkpoint.every_steps, cfg.seed) == (2, 7)


def test_overrides_are_typed_by_yaml_including_exponent_floats_and_dicts():
    cfg = load_config(None, ["data.dir=x", "optim.base_lr=1e-3", "optim.betas=[0.9, 0.99]",
                             "model.overrides.embed_dim=32", "run.tensorboard=true",
                             "checkpoint.resume=none"])
    assert cfg.optim.base_lr == 1e-3 and isinstance(cfg.optim.base_lr, float)
    assert cfg.optim.betas == [0.9, 0.99]
    assert cfg.model.overrides == {"embed_dim": 32}
    assert cfg.run.tensorboard is True and cfg.checkpoint.resume == "none"


def test_int_given_for_float_is_accepted_as_float():
    assert load_config(None, ["data.dir=x", "optim.base_lr=1"]).optim.base_lr == 1.0


@pytest.mark.parametrize("override, names", [
    ("optim.lrr=1", ["optim.lrr", "base_lr"]),
    ("optimm.base_lr=1", ["optimm", "did you mean 'optim'"]),
    ("teachers.video.chekpoint=x", ["teachers.video.chekpoint", "checkpoint"]),
])
def test_unknown_key_is_an_error_naming_the_full_dotted_key(override, names):
    with pytest.raises(ConfigError) as e:
        load_config(None, ["data.dir=x", override])
    for name in names:
        assert name in str(e.value)


@pytest.mark.parametrize("override, key, want", [
    ("optim.base_lr=fast", "optim.base_lr", "a number"),
    ("train.max_steps=1.5", "train.max_steps", "an integer"),
    ("run.tensorboard=maybe", "run.tensorboard", "true or false"),
    ("model.overrides=3", "model.overrides", "a mapping"),
    ("data.batch_size=true", "data.batch_size", "an integer"),
])
def test_wrong_type_is_an_error_naming_the_key_and_the_expected_type(override, key, want):
    with pytest.raises(ConfigError) as e:
        load_config(None, ["data.dir=x", override])
    assert f"'{key}'" in str(e.value) and want in str(e.value)


def test_bad_task_lists_the_valid_tasks():
    with pytest.raises(ConfigError) as e:
        task_class(load_config(None, ["data.dir=x", "task=pretrain"]))
    assert "'task'" in str(e.value)
    for task in ("pretrain_mvd", "pretrain_videomae", "pretrain_mae", "finetune", "eval", "detect"):
        assert task in str(e.value)
    assert set(TASKS) == {"pretrain_mvd", "pretrain_videomae", "pretrain_mae", "finetune", "eval", "detect"}


def test_unknown_key_in_a_yaml_file_names_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("task: finetune\ndata:\n  dir: x\n  batch: 3\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert "data.batch" in str(e.value) and str(path) in str(e.value)


def checked(*overrides):
    """A config with its task's own checks run (as mvd-train, the trainer and the dry run do)."""
    cfg = load_config(None, list(overrides))
    task_class(cfg)
    return cfg


@pytest.mark.parametrize("overrides, key", [
    (["task=pretrain_mae"], "data.dir"),
    (["task=finetune", "data.dir=x", "data.batch_size=3"], "data.batch_size"),
    (["data.dir=x", "teachers.image.name=", "teachers.video.name="], "teachers"),
    (["data.dir=x", "schedule.epochs=0"], "schedule.epochs"),
    (["task=eval"], "eval.dir"),
    (["task=detect", "data.dir=x", "detect.min_crop=0"], "detect.min_crop"),
    (["task=detect", "data.dir=x", "detect.jitter=[0.1]"], "detect.jitter"),
    (["task=detect", "data.dir=x", "detect.test_extend=[0.1]"], "detect.test_extend"),
    (["task=detect", "data.dir=x", "detect.proposal_min_score=2"], "detect.proposal_min_score"),
])
def test_each_task_checks_its_own_fields(overrides, key):
    load_config(None, overrides)  # the shared checks pass: these are the task's
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        checked(*overrides)


def test_an_eval_needs_no_schedule_and_a_finetune_without_mixup_takes_an_odd_batch():
    checked("task=eval", "eval.dir=x", "schedule.epochs=0")
    checked("task=finetune", "data.dir=x", "data.batch_size=3", "finetune.mixup=0", "finetune.cutmix=0")


def test_cross_field_checks():
    with pytest.raises(ConfigError, match="optim.betas"):
        load_config(None, ["data.dir=x", "optim.betas=[0.9]"])
    with pytest.raises(ConfigError, match="dist.cpu_threads"):
        load_config(None, ["data.dir=x", "dist.cpu_threads=-1"])


def test_cli_reports_config_errors_before_any_work_with_exit_code_2(capsys, tmp_path):
    code = main(["--config", str(TINY / "pretrain_mvd.yaml"), "data.dir=x",
                 f"run.dir={tmp_path}/run", "optim.weight_decy=0.1"])
    err = capsys.readouterr().err
    assert code == 2 and "optim.weight_decy" in err and "weight_decay" in err
    assert not (tmp_path / "run").exists()
    assert main(["--config", str(tmp_path / "missing.yaml")]) == 2
    assert main(["--config", str(TINY / "eval.yaml"), "task=train"]) == 2
    assert "must be one of" in capsys.readouterr().err


def test_every_key_has_a_one_line_meaning():
    lines = describe()
    assert len(lines) > 60
    for line in lines:
        assert "#" in line and line.split("#", 1)[1].strip(), line


def test_derived_global_batch_lr_scaling_and_steps():
    cfg = load_config(None, ["data.dir=x", "data.batch_size=16", "train.accum_steps=2",
                             "optim.base_lr=1.5e-4", "optim.min_lr=1e-4", "schedule.epochs=10",
                             "schedule.warmup_epochs=2", "train.max_steps=25"])
    d = derive(cfg, world_size=8, batches_per_epoch=21)
    assert d.global_batch == 16 * 8 * 2
    assert d.lr == pytest.approx(1.5e-4 * 256 / 256) and d.min_lr == pytest.approx(1e-4)
    assert (d.steps_per_epoch, d.total_steps, d.warmup_steps, d.max_steps) == (10, 100, 20, 25)
    with pytest.raises(ConfigError, match="accum_steps"):
        derive(cfg, world_size=1, batches_per_epoch=1)


def test_finetune_lr_scales_with_the_videos_not_their_views():
    """The MVD release's run_class_finetuning.py scales lr by batch x update_freq x GPUs / 256:
    videos, each bringing num_sample = 2 views."""
    def derived(*overrides):
        cfg = load_config(None, ["task=finetune", "data.dir=x", "data.batch_size=8",
                                 "optim.base_lr=5e-4", *overrides])
        return derive(cfg, world_size=8, batches_per_epoch=100, views=task_class(cfg).clip_views(cfg))

    d = derived("data.repeated_aug=2")
    assert d.global_batch == 8 * 8 and d.lr == pytest.approx(5e-4 * 64 / 256)
    assert d.clips_per_step == 8 * 8 * 2
    one_view = derived("data.repeated_aug=1")
    assert one_view.lr == pytest.approx(d.lr) and one_view.clips_per_step == 64


@pytest.mark.parametrize("world, per_gpu, accum", [
    (32, 16, 2),  # the release's split of MVD-B: --batch_size 16 --update_freq 2 on 32 GPUs
    (8, 16, 8), (64, 16, 1), (128, 8, 1), (1, 16, 64), (2, 16, 32),
])
def test_pinned_global_batch_splits_over_any_world_that_divides_it(world, per_gpu, accum):
    cfg = load_config(None, ["data.dir=x", "data.batch_size=16", "train.global_batch=1024",
                             "optim.base_lr=1.5e-4"])
    split = plan_batch(cfg, world)
    assert (split.global_batch, split.per_process, split.accum_steps) == (1024, per_gpu, accum)
    d = derive(cfg, world, batches_per_epoch=10 * accum)
    assert (d.global_batch, d.per_gpu_batch, d.accum_steps) == (1024, per_gpu, accum)
    assert d.lr == pytest.approx(1.5e-4 * 4) and d.steps_per_epoch == 10


def test_largest_per_gpu_batch_that_divides_the_share_is_taken():
    cfg = load_config(None, ["task=finetune", "data.dir=x", "data.batch_size=8",
                             "train.global_batch=384"])
    assert plan_batch(cfg, 32).per_process == 6 and plan_batch(cfg, 32).accum_steps == 2
    assert plan_batch(cfg, 8).per_process == 8 and plan_batch(cfg, 8).accum_steps == 6


def test_a_world_that_cannot_reach_the_global_batch_names_the_key_and_the_nearest_choices():
    cfg = load_config(None, ["data.dir=x", "data.batch_size=16", "train.global_batch=1024"])
    with pytest.raises(ConfigError, match=r"train.global_batch.*1024.*12 processes.*run on 8 or 16"):
        plan_batch(cfg, 12)
    with pytest.raises(ConfigError, match="train.accum_steps"):
        load_config(None, ["data.dir=x", "train.global_batch=1024", "train.accum_steps=2"])


def test_unpinned_global_batch_keeps_batch_times_world_times_accum():
    cfg = load_config(None, ["data.dir=x", "data.batch_size=4", "train.accum_steps=3"])
    split = plan_batch(cfg, 5)
    assert (split.global_batch, split.per_process, split.accum_steps) == (60, 4, 3)


def test_a_task_that_needs_even_batches_gets_only_even_splits_and_the_dry_run_says_so():
    """Mixup pairs a batch's clips: the fine-tune task asks for a per-process batch of a multiple
    of 2, and the split honours it. 384 videos on 128 ranks is 3 per rank, which no even batch
    reaches: the dry run refuses it naming the key (before, it planned 3 per GPU and the real run
    then failed the task's own check on `data.batch_size`)."""
    cfg = load_config(ROOT / "configs/finetune_base_k400.yaml", ["data.dir=x"])
    multiple = task_class(cfg).batch_multiple(cfg)
    assert multiple == 2 and plan_batch(cfg, 32, multiple).per_process % 2 == 0
    with pytest.raises(ConfigError, match=r"train.global_batch.*384.*128 processes.*a multiple of 2"):
        plan_batch(cfg, 128, multiple)
    plan, messages = make_plan(cfg, {"WORLD_SIZE": "128"})
    assert plan is None and any("multiple of 2" in e for e in messages.errors), messages.errors
    no_mixup = load_config(None, ["task=finetune", "data.dir=x", "finetune.mixup=0", "finetune.cutmix=0"])
    assert task_class(no_mixup).batch_multiple(no_mixup) == 1
