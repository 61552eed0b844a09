"""The trainer on the real loaders and the synthetic shards, in one process: each task learns a
fixed batch, and stop-then-resume reproduces the uninterrupted losses exactly. Two processes
under torchrun, SIGKILL and stage-to-stage checkpoints are in test_train_dist.py."""

import json
from pathlib import Path

import pytest

from mvd.config import load_config
from mvd.engine.trainer import Trainer
from mvd.train import main

TINY = Path(__file__).resolve().parents[2] / "configs" / "tiny"


def trainer(task, synth_shards, run_dir, *overrides):
    cfg = load_config(TINY / f"{task}.yaml", [f"data.dir={synth_shards}", f"run.dir={run_dir}",
                                              "run.progress=false", *overrides])
    return Trainer(cfg)


@pytest.mark.parametrize("task", ["pretrain_mvd", "pretrain_videomae", "pretrain_mae", "finetune"])
def test_loss_goes_down_on_a_fixed_batch(task, synth_shards, tmp_path):
    t = trainer(task, synth_shards, tmp_path, "optim.base_lr=2.0", "schedule.warmup_steps=0",
                "finetune.mixup=0", "finetune.cutmix=0", "data.repeated_aug=1")
    batch = next(iter(t.loader))
    losses = [float(t.train_step([batch])["loss"]) for _ in range(12)]
    t.metrics.close()
    assert sum(losses[-3:]) / 3 < 0.9 * losses[0], losses


@pytest.mark.parametrize("task", ["pretrain_mvd", "finetune"])
def test_stop_and_resume_on_the_real_loader_reproduces_the_losses(task, synth_shards, tmp_path):
    def rows(d):
        return [(r["step"], r["loss"]) for r in map(json.loads, open(d / "metrics.jsonl"))]

    common = ["checkpoint.every_steps=0", "run.log_every=3"]
    trainer(task, synth_shards, tmp_path / "a", "train.max_steps=7", *common).train()
    trainer(task, synth_shards, tmp_path / "b", "train.max_steps=4", *common).train()
    trainer(task, synth_shards, tmp_path / "b", "train.max_steps=7", *common).train()
    assert rows(tmp_path / "a") == rows(tmp_path / "b")
    assert [s for s, _ in rows(tmp_path / "a")] == list(range(1, 8))


def test_cli_runs_a_task_writes_the_run_dir_and_prints_its_result(synth_shards, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["--config", str(TINY / "pretrain_videomae.yaml"), f"data.dir={synth_shards}",
                 f"run.dir={run}", "train.max_steps=2", "checkpoint.every_steps=1"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["status"] == "finished" and out["step"] == 2
    rows = [json.loads(x) for x in open(run / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [1, 2] and all("loss" in r and "lr" in r for r in rows)
    assert (run / "config.yaml").is_file() and (run / "model.safetensors").is_file()
    derived = (run / "derived.yaml").read_text()
    assert "global_batch: 4" in derived and "steps_per_epoch" in derived
