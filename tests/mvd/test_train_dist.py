"""Two processes under real ``torchrun --nproc_per_node 2`` (gloo on CPU) on the synthetic shards:
every task, stage-1 checkpoints loading as stage-2 teachers, a stage-2 checkpoint fine-tuning and
evaluating, stop-and-resume (DDP and FSDP2) and a SIGKILLed worker resuming to the uninterrupted
losses, a corrupted newest checkpoint skipped, and a NaN on one rank stopping both without a
hang."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # every test here runs torchrun with two processes

ROOT = Path(__file__).resolve().parents[2]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
            "--standalone"]


def rows(path):
    return [(r["step"], r["loss"]) for r in map(json.loads, open(path))]


@pytest.fixture(scope="module")
def val_shards(tmp_path_factory):
    from shard_tools.synth import make_synth_dataset

    out = tmp_path_factory.mktemp("val_shards") / "val"
    make_synth_dataset(out, num_videos=16, num_frames=40, width=64, height=48, num_classes=8,
                       seed=0, split="val", shard_samples=8, workers=2)
    return out


@pytest.fixture(scope="module")
def chain(synth_shards, val_shards, tmp_path_factory):
    """All tasks, stage after stage, in one 2-process torchrun group (train_dist_worker.py)."""
    out = tmp_path_factory.mktemp("dist_chain")
    proc = subprocess.run([*TORCHRUN, str(ROOT / "tests/mvd/train_dist_worker.py"), str(out),
                           str(synth_shards), str(val_shards)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out, json.loads((out / "results.json").read_text())


def test_every_task_runs_under_torchrun_with_two_processes(chain):
    out, results = chain
    for name, steps in (("mae", 4), ("videomae", 14), ("mvd", 6), ("finetune", 4)):
        assert results[name]["status"] == "finished" and results[name]["step"] == steps
        metrics = rows(out / name / "metrics.jsonl")
        assert [s for s, _ in metrics] == list(range(1, steps + 1))  # one row per step, rank 0
        assert all(loss is not None for _, loss in metrics)
        assert (out / name / "model.safetensors").is_file()
    assert "loss_img" in json.loads(open(out / "mvd" / "metrics.jsonl").readline())


def test_stage1_checkpoints_serve_as_stage2_teachers_and_stage2_fine_tunes_then_evaluates(chain):
    out, results = chain
    # the mvd run loaded the stage-1 MAE export and VideoMAE checkpoint as its teachers
    config = (out / "mvd" / "config.yaml").read_text()
    assert str(out / "mae") in config and "step-00000014.pt" in config
    # fine-tuning started from the stage-2 run and its end-of-run validation covered every
    # held-out video once (16 videos x 2 clips) across the two ranks
    ev = results["finetune"]["eval"]
    assert (ev["videos"], ev["views"]) == (16, 32)
    assert json.loads((out / "finetune" / "eval.json").read_text())["videos"] == 16
    assert results["eval"]["videos"] == 16 and 0.0 <= results["eval"]["top1"] <= 100.0
    assert (out / "eval" / "eval.json").is_file()


def test_two_process_stop_and_resume_reproduces_the_uninterrupted_losses(chain):
    out, results = chain
    assert results["mvd_resumed_from"] == 3
    assert rows(out / "mvd" / "metrics.jsonl") == rows(out / "mvd_resumed" / "metrics.jsonl")


def test_fsdp_run_checkpoints_and_resumes_to_the_same_losses(chain):
    out, results = chain
    assert results["fsdp"]["step"] == results["fsdp_resumed"]["step"] == 4
    assert rows(out / "fsdp" / "metrics.jsonl") == rows(out / "fsdp_resumed" / "metrics.jsonl")
    assert (out / "fsdp" / "model.safetensors").is_file()


def test_nan_on_one_rank_stops_both_ranks_naming_the_step(chain):
    out, _ = chain
    msgs = [(out / f"nonfinite-rank{r}.txt").read_text() for r in (0, 1)]
    assert msgs[0] == msgs[1] and "non-finite loss at step 3" in msgs[0]
    assert "last good checkpoint is step 2" in msgs[0]
    ckpts = sorted(p.name for p in (out / "nonfinite" / "checkpoints").iterdir())
    assert ckpts == ["step-00000002.pt"]


def _workers(agent_pid):
    """PIDs of the torchrun agent's child processes (the workers)."""
    kids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == agent_pid:
                    kids.append(int(d.name))
            except (OSError, IndexError, ValueError):
                pass
    return kids


def test_sigkill_of_a_worker_then_resume_auto_skipping_a_corrupted_newest_checkpoint(
        chain, synth_shards, tmp_path):
    out, _ = chain
    run = tmp_path / "run"
    cmd = [*TORCHRUN, "-m", "mvd.train", "--config", str(ROOT / "configs/tiny/pretrain_videomae.yaml"),
           f"data.dir={synth_shards}", f"run.dir={run}", "checkpoint.every_steps=2",
           "run.log_every=2", "checkpoint.keep_last=3"]
    agent = subprocess.Popen([*cmd, "train.max_steps=24"], cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    ckpts = run / "checkpoints"
    deadline = time.time() + 120
    while not (ckpts.is_dir() and len(list(ckpts.glob("step-*.pt"))) >= 2):
        assert agent.poll() is None and time.time() < deadline, "the run ended before the kill"
        time.sleep(0.05)
    victim = _workers(agent.pid)[-1]
    os.kill(victim, signal.SIGKILL)
    agent.wait(timeout=60)
    assert agent.returncode != 0  # torchrun saw its worker die and tore the group down
    saved = sorted(ckpts.glob("step-*.pt"))
    killed_at = int(saved[-1].stem.split("-")[1])
    assert killed_at < 14, "killed too late to test the resume"
    newest = saved[-1]
    newest.write_bytes(newest.read_bytes()[:1000])  # and the newest file is damaged
    proc = subprocess.run([*cmd, "train.max_steps=14"], cwd=ROOT, capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert f"step-{killed_at:08d}.pt" in proc.stderr and "skipping it" in proc.stderr
    assert f"resuming from {ckpts / f'step-{killed_at - 2:08d}.pt'}" in proc.stderr
    # the same 14 steps as the chain's uninterrupted 2-process run of the same config
    assert rows(run / "metrics.jsonl") == rows(out / "videomae" / "metrics.jsonl")
