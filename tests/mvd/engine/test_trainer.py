"""The training loop on an in-memory loader (tests/mvd/engine/fakes.py): exact resume for every
task, non-finite loss handling, stop on a signal with a checkpoint, teachers kept frozen and out
of the optimizer and the checkpoint. The same loop on the real loaders and under torchrun is in
tests/mvd/test_train*.py."""

import json
import os
import signal
import sys
from pathlib import Path

import pytest
import torch

from mvd.config import load_config
from mvd.engine.checkpoint import list_checkpoints, load_valid
from mvd.engine.trainer import NonFiniteLoss, Trainer

sys.path.insert(0, str(Path(__file__).parent))
from engine_fakes import fake_loaders, fake_manifest  # noqa: E402

TINY = Path(__file__).resolve().parents[3] / "configs" / "tiny"
TRAIN_TASKS = ["pretrain_mvd", "pretrain_videomae", "pretrain_mae", "finetune"]


@pytest.fixture(autouse=True)
def fake_loader(monkeypatch, tmp_path):
    fake_loaders(monkeypatch)
    fake_manifest(tmp_path / "data", ["c0", "c1", "c2", "c3"])


def make(task, run_dir, *overrides):
    data = Path(run_dir).parent / "data"
    cfg = load_config(TINY / f"{task}.yaml", [f"data.dir={data}", f"run.dir={run_dir}",
                                              "run.progress=false", "checkpoint.every_steps=3",
                                              "run.log_every=2", *overrides])
    return Trainer(cfg)


def losses(run_dir):
    return [(r["step"], r["loss"]) for r in map(json.loads, open(Path(run_dir) / "metrics.jsonl"))]


@pytest.mark.parametrize("task", TRAIN_TASKS)
def test_stop_then_resume_auto_reproduces_the_uninterrupted_losses_exactly(task, tmp_path):
    make(task, tmp_path / "a", "train.max_steps=8").train()
    make(task, tmp_path / "b", "train.max_steps=5").train()
    resumed = make(task, tmp_path / "b", "train.max_steps=8")
    assert resumed.step == 5
    resumed.train()
    a, b = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert [s for s, _ in a] == list(range(1, 9))
    assert a == b  # bit-for-bit: same batches, masks, dropout/mixup RNG, optimizer state


def test_metrics_rows_past_the_checkpoint_are_dropped_on_resume(tmp_path):
    make("pretrain_videomae", tmp_path / "r", "train.max_steps=7").train()
    ckpt = list_checkpoints(tmp_path / "r" / "checkpoints")[0][1]
    ckpt.unlink()  # as if killed after step 7's rows were written but before its checkpoint
    t = make("pretrain_videomae", tmp_path / "r", "train.max_steps=7")
    assert t.step == 6
    assert [s for s, _ in losses(tmp_path / "r")] == list(range(1, 7))


def test_validation_rows_past_the_checkpoint_are_dropped_on_resume(tmp_path):
    args = ("eval.dir=" + str(tmp_path / "data"), "eval.every_epochs=1", "finetune.mixup=0", "finetune.cutmix=0",
            "schedule.epochs=3")
    t = make("finetune", tmp_path / "r", *args)
    spe = t.derived.steps_per_epoch
    t.train()
    evals = tmp_path / "r" / "evals.jsonl"
    assert [json.loads(line)["step"] for line in evals.read_text().splitlines()] == [spe, 2 * spe, 3 * spe]
    for _, ckpt in list_checkpoints(tmp_path / "r" / "checkpoints"):
        if int(ckpt.stem.split("-")[-1]) > 2 * spe:
            ckpt.unlink()  # as if killed after the last validation but before its checkpoint
    resumed = make("finetune", tmp_path / "r", *args)
    assert resumed.step <= 2 * spe
    kept = [json.loads(line)["step"] for line in evals.read_text().splitlines()]
    assert kept == [s for s in (spe, 2 * spe) if s <= resumed.step]
    resumed.train()
    assert [json.loads(line)["step"] for line in evals.read_text().splitlines()] == [spe, 2 * spe, 3 * spe]


def _nan_at(trainer, step, rank_fn=lambda: True):
    real = trainer.task.loss

    def loss(model, batch, micro):
        value, parts = real(model, batch, micro)
        if micro == step - 1 and rank_fn():
            value = value * float("nan")
        return value, parts

    trainer.task.loss = loss


def test_nonfinite_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    t = make("pretrain_videomae", tmp_path / "r", "train.max_steps=12")
    _nan_at(t, 5)
    with pytest.raises(NonFiniteLoss, match="step 5") as e:
        t.train()
    assert "step 3" in str(e.value)  # names the last good checkpoint
    assert [s for s, _ in list_checkpoints(tmp_path / "r" / "checkpoints")] == [3]
    ckpt = load_valid(tmp_path / "r" / "checkpoints" / "step-00000003.pt")
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())


def test_nonfinite_loss_can_be_skipped_and_counted(tmp_path):
    t = make("pretrain_videomae", tmp_path / "r", "train.max_steps=6", "train.nonfinite=skip")
    _nan_at(t, 2)
    result = t.train()
    assert result == {"status": "finished", "step": 6, "skipped": 1}
    ckpt = load_valid(list_checkpoints(tmp_path / "r" / "checkpoints")[0][1])
    assert ckpt["counters"]["skipped"] == 1
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())
    rows = [json.loads(x) for x in open(tmp_path / "r" / "metrics.jsonl")]
    assert rows[1]["loss"] is None and all(r["loss"] is not None for r in rows[2:])


def test_sigint_stops_at_the_next_sync_with_a_checkpoint(tmp_path):
    t = make("pretrain_videomae", tmp_path / "r", "train.max_steps=20",
             "checkpoint.every_steps=0", "run.log_every=4")
    real = t.train_step

    def step_then_interrupt(group):
        if t.step == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return real(group)

    t.train_step = step_then_interrupt
    result = t.train()
    assert result["status"] == "interrupted" and result["step"] == 4
    assert [s for s, _ in list_checkpoints(tmp_path / "r" / "checkpoints")] == [4]
    assert not (tmp_path / "r" / "model.safetensors").exists()  # only a finished run exports


def test_teachers_stay_frozen_in_eval_mode_outside_optimizer_and_checkpoint(tmp_path):
    t = make("pretrain_mvd", tmp_path / "r", "train.max_steps=2")
    teachers = [t.task.image_teacher, t.task.video_teacher]
    before = [{k: v.clone() for k, v in m.state_dict().items()} for m in teachers]
    optimized = {id(p) for g in t.optimizer.param_groups for p in g["params"]}
    t.train()
    for m, sd in zip(teachers, before):
        m.train()
        assert not m.training and not any(p.requires_grad for p in m.parameters())
        assert not optimized & {id(p) for p in m.parameters()}
        assert all(torch.equal(v, sd[k]) for k, v in m.state_dict().items())
    ckpt = load_valid(list_checkpoints(tmp_path / "r" / "checkpoints")[0][1])
    assert set(ckpt["model"]) == set(t.task.model.state_dict())
    assert not any(k.startswith(("module.", "image_teacher", "video_teacher")) for k in ckpt["model"])


def test_gradient_accumulation_counts_optimizer_steps(tmp_path):
    t = make("pretrain_videomae", tmp_path / "r", "train.max_steps=3", "train.accum_steps=2")
    assert t.derived.global_batch == 2 * t.cfg.data.batch_size
    assert t.derived.steps_per_epoch == len(t.loader) // 2
    t.train()
    assert [s for s, _ in losses(tmp_path / "r")] == [1, 2, 3]
    assert t.loader.position == 6


def test_pinned_global_batch_sets_the_loader_batch_and_the_accumulation(tmp_path):
    # 12 videos a step on one process, at most 8 each: 6 per micro-step, accumulated twice
    t = make("pretrain_videomae", tmp_path / "r", "train.max_steps=2", "train.global_batch=12",
             "data.batch_size=8")
    d = t.derived
    assert (d.global_batch, d.per_gpu_batch, d.accum_steps) == (12, 6, 2)
    assert t.loader.batch_size == 6 and d.steps_per_epoch == len(t.loader) // 2
    assert d.lr == pytest.approx(t.cfg.optim.base_lr * 12 / 256)
    t.train()
    assert [s for s, _ in losses(tmp_path / "r")] == [1, 2] and t.loader.position == 4


def test_finetune_validates_every_n_epochs_and_at_the_end(tmp_path):
    t = make("finetune", tmp_path / "r", "eval.dir=" + str(tmp_path / "data"),
             "eval.every_epochs=1", "schedule.epochs=2", "finetune.mixup=0", "finetune.cutmix=0")
    seen = []
    real = t.validate
    t.validate = lambda: seen.append(t.step) or real()
    result = t.train()
    spe = t.derived.steps_per_epoch
    assert seen == [spe, 2 * spe]  # after each epoch; the last one serves as the end-of-run one
    assert result["eval"]["videos"] == 32
    assert (tmp_path / "r" / "predictions.csv").is_file()
    assert json.loads((tmp_path / "r" / "eval.json").read_text())["step"] == 2 * spe
    # every validation is a row of evals.jsonl; the last row is what eval.json holds
    rows = [json.loads(line) for line in (tmp_path / "r" / "evals.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [spe, 2 * spe]
    last = json.loads((tmp_path / "r" / "eval.json").read_text())
    assert rows[-1] == {k: v for k, v in last.items() if isinstance(v, (int, float))}
    assert all(0 <= r["top1"] <= 100 and r["videos"] == 32 for r in rows)
