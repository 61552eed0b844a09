"""`mvd-train --config FILE --dry-run`: every shipped recipe plans on shapes alone (no data, no
checkpoint, no GPU), the plan's numbers are the recipe's, and every inconsistent combination
stops it naming the config key."""

import json
from pathlib import Path

import pytest

from mvd.config import ConfigError, OptimConfig, load_config
from mvd.engine.dryrun import make_plan
from mvd.engine.optim import choose_implementation
from mvd.train import main

ROOT = Path(__file__).resolve().parents[3]
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))
# the ViT-L and ViT-H recipes take seconds each to plan: in the full suite only
RECIPES = [pytest.param(p, marks=pytest.mark.slow) if "large" in p.name or "huge" in p.name else p
           for p in CONFIGS]
# configs/tiny/ take their shard directories from the command line (the tests' and the demo's)
TINY = ["data.dir=missing/shards", "eval.dir=missing/heldout", "data.expected_samples=48"]
NO_TORCHRUN = {}  # plan for dist.world_size_hint (8), not this process's WORLD_SIZE


def overrides(path: Path) -> list[str]:
    return TINY if path.parent.name == "tiny" else []


def plan_of(path: Path, *extra: str) -> dict:
    cfg = load_config(path, [*overrides(path), *extra])
    plan, notes = make_plan(cfg, NO_TORCHRUN)
    assert plan is not None, notes.errors
    return plan


def test_configs_folder_holds_every_size_of_finetune_and_eval():
    names = {p.name for p in CONFIGS}
    for size in ("small", "base", "large", "huge"):
        for data in ("k400", "ssv2"):
            assert f"finetune_{size}_{data}.yaml" in names
            assert f"eval_{size}_{data}.yaml" in names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_every_recipe_plans_without_data_or_checkpoints(path):
    cfg = load_config(path, overrides(path))
    plan = plan_of(path)
    assert plan["task"] == cfg.task and plan["world_size"] == 8
    assert plan["params"]["model"] > 0 and plan["peak_memory_gib_per_rank"] > 0
    if cfg.task == "eval":
        assert plan["lr"] is None and plan["optimizer"] is None
        return
    assert plan["global_batch"] == (cfg.train.global_batch
                                    or cfg.data.batch_size * 8 * cfg.train.accum_steps)
    assert plan["per_gpu_batch"] * 8 * plan["accum_steps"] == plan["global_batch"]
    assert plan["per_gpu_batch"] <= cfg.data.batch_size
    assert plan["lr"] == pytest.approx(cfg.optim.base_lr * plan["global_batch"] / 256)
    assert plan["total_steps"] == plan["steps_per_epoch"] * cfg.schedule.epochs
    assert plan["train_flops_per_clip"] > 0
    assert plan["optimizer"] == "torch AdamW (fused)"  # a GPU target without apex
    assert plan["fsdp"] == cfg.dist.fsdp
    for key in ("data.dir", "model.init", "teachers.image.checkpoint"):
        value = {"data.dir": cfg.data.dir, "model.init": cfg.model.init,
                 "teachers.image.checkpoint": cfg.teachers.image.checkpoint}[key]
        if value and cfg.task in ("pretrain_mvd",) + (("finetune",) if key != "teachers.image.checkpoint" else ()):
            assert any(w.startswith(f"{key}={value}") for w in plan["warnings"]), plan["warnings"]


def test_base_recipe_plan_is_the_papers_step():
    """MVD-B: 3 x 154.5 G student + 281 G image teacher (8 frames) + 361 G video teacher."""
    plan = plan_of(ROOT / "configs/pretrain_mvd_base_k400.yaml")
    flops = plan["flops_per_clip"]
    assert flops["student_forward"] / 1e9 == pytest.approx(154.5, abs=0.1)
    assert flops["teachers_forward"] / 1e9 == pytest.approx(281 + 361, abs=1.5)
    assert plan["train_flops_per_clip"] / 1e12 == pytest.approx(1.105, abs=0.002)
    assert plan["samples"] == 240436 and plan["global_batch"] == 1024
    assert (plan["per_gpu_batch"], plan["accum_steps"]) == (32, 4)  # 1024 on 8 GPUs
    assert plan["steps_per_epoch"] == 240436 // 1024 and plan["warmup_steps"] == 40 * 234
    assert plan["precision"].startswith("bf16") and "teacher weights float32" in plan["precision"]



@pytest.mark.slow
def test_fsdp_plan_shards_the_trained_state():
    path = ROOT / "configs/pretrain_mvd_large_k400.yaml"
    sharded = plan_of(path)
    whole = plan_of(path, "dist.fsdp=false")
    assert sharded["fsdp"] and not whole["fsdp"]
    assert "FSDP2" in sharded["wrapping"] and "DDP" in whole["wrapping"]
    assert "FSDP2 applied over a fake 8-rank process group" in sharded["memory_method"]
    # the trained state (331M parameters x 16 bytes: param, grad, Adam m, v) is sharded 8 ways,
    # against FSDP's own transient all-gather / reduce-scatter buffers
    assert sharded["peak_memory_gib_per_rank"] < whole["peak_memory_gib_per_rank"]
    assert not __import__("torch").distributed.is_initialized()  # the fake group is gone


def test_world_size_comes_from_torchrun_first():
    cfg = load_config(ROOT / "configs/pretrain_mvd_small_k400.yaml")
    plan, _ = make_plan(cfg, {"WORLD_SIZE": "16"})
    assert plan["world_size"] == 16 and plan["global_batch"] == 1024
    assert (plan["per_gpu_batch"], plan["accum_steps"]) == (32, 2)


@pytest.mark.slow
def test_compile_plan_follows_the_wrapping():
    ddp = plan_of(ROOT / "configs/pretrain_mvd_base_k400.yaml", "model.compile=true")
    fsdp = plan_of(ROOT / "configs/pretrain_mvd_huge_k400.yaml", "model.compile=true")
    assert ddp["compile"] and "then compiled whole" in ddp["wrapping"]
    assert fsdp["wrapping"].startswith("each block compiled")


@pytest.mark.parametrize("extra, key", [
    (["data.teacher_input_size=192"], "data.teacher_input_size"),
    (["teachers.video.overrides={tubelet_size: 4}"], "teachers.video"),
    (["train.precision=fp16", "dist.fsdp=true"], "train.precision"),
    (["optim.implementation=apex"], "optim.implementation"),
    (["data.dir=missing", "data.expected_samples=0"], "data.expected_samples"),
    (["data.batch_size=4096", "data.expected_samples=1000"], "data.batch_size"),
    (["dist.world_size_hint=12"], "train.global_batch"),  # 1024 does not split over 12
])
def test_inconsistent_combinations_name_their_key(extra, key):
    cfg = load_config(ROOT / "configs/pretrain_mvd_base_k400.yaml", extra)
    plan, notes = make_plan(cfg, NO_TORCHRUN)
    assert plan is None
    assert any(key in e for e in notes.errors), notes.errors


def test_apex_is_never_chosen_under_fsdp():
    assert choose_implementation(OptimConfig(), "cuda", fsdp=False, apex=True) == "apex"
    assert choose_implementation(OptimConfig(), "cuda", fsdp=True, apex=True) == "fused"
    assert choose_implementation(OptimConfig(), "cpu", fsdp=False, apex=True) == "foreach"
    with pytest.raises(ConfigError, match="optim.implementation.*dist.fsdp"):
        choose_implementation(OptimConfig(implementation="apex"), "cuda", fsdp=True, apex=True)


def test_eval_batch_must_hold_whole_clips():
    cfg = load_config(ROOT / "configs/eval_base_k400.yaml", ["eval.batch_size=10"])
    plan, notes = make_plan(cfg, NO_TORCHRUN)
    assert plan is None and any("eval.batch_size" in e for e in notes.errors)


def test_cli_prints_the_plan_and_ends_with_one_json_line(monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "8")
    assert main(["--config", str(ROOT / "configs/pretrain_mvd_base_k400.yaml"), "--dry-run"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    plan = json.loads(lines[-1])
    for key in ("task", "params", "train_flops_per_clip", "global_batch", "lr", "total_steps",
                "peak_memory_gib_per_rank", "precision", "optimizer", "fsdp", "compile",
                "warnings"):
        assert key in plan, key
    assert lines[0].startswith("dry run: pretrain_mvd of mvd_student_base on 8 x cuda")


def test_cli_reports_every_inconsistent_key_and_exits_2(capsys):
    assert main(["--config", str(ROOT / "configs/pretrain_mvd_large_k400.yaml"), "--dry-run",
                 "train.precision=fp16", "optim.implementation=apex"]) == 2
    err = capsys.readouterr().err
    assert "train.precision" in err and "optim.implementation" in err
    assert "2 inconsistent setting(s)" in err


def test_an_eval_of_a_detector_plans_its_forward_on_boxes_and_ava_classes():
    plan = plan_of(ROOT / "configs/tiny/detect.yaml", "task=eval", "model.overrides.num_classes=7")
    assert plan["task"] == "eval" and plan["lr"] is None and plan["flops_per_clip"]["forward"] > 0
    plan = plan_of(ROOT / "configs/detect_ava_base.yaml", "task=eval")
    assert any("planned with 80 classes" in w for w in plan["warnings"])
