"""Decode failures on one rank stop every rank at the same step: two processes under real
``torchrun`` (gloo on CPU) run mvd-train on shards where only rank 1's samples are corrupted;
both ranks raise DecodeFailureError at the same step naming the shards and keys, and mvd-train
exits with status 4 on each. With every sample rotted (no batch ever succeeds) both ranks stop
at the failure limit while probing, never claiming that the samples decode."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import corrupt_copy

from dali_pipelines import load_shard_dir
from dali_pipelines.sampling import epoch_order, rank_items

ROOT = Path(__file__).resolve().parents[2]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone"]


def _run_two_ranks(data: Path, tmp_path: Path, *, max_failure_fraction: float, timeout: int):
    """mvd-train (tiny VideoMAE stage 1) on ``data`` in a 2-process torchrun group; it must fail.
    -> (the finished process, each rank's record from failures_dist_worker.py)."""
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.run(
        [*TORCHRUN, str(ROOT / "tests/dali_pipelines/failures_dist_worker.py"), str(out),
         "--config", str(ROOT / "configs/tiny/pretrain_videomae.yaml"), f"data.dir={data}",
         f"run.dir={tmp_path / 'run'}", "run.progress=false", "train.max_steps=6",
         "checkpoint.every_steps=0", f"data.max_failure_fraction={max_failure_fraction}"],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode != 0, proc.stderr[-3000:]
    return proc, [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


@pytest.mark.slow
def test_both_ranks_stop_at_the_same_step_naming_the_keys(synth_shards, tmp_path):
    table = load_shard_dir(synth_shards).table
    # rank 1's third batch of epoch 0 (seed 0, 4 clips per rank, 2 ranks): rank 0 reads none
    items, _ = rank_items(epoch_order(0, 0, len(table)), batch_size=4, num_shards=2, shard_id=1,
                          drop_last=True)
    keys = [table.keys[int(i)] for i in items[8:10]]
    proc, ranks = _run_two_ranks(corrupt_copy(synth_shards, tmp_path / "corrupt", keys), tmp_path,
                                 max_failure_fraction=0.0, timeout=240)
    assert [r["code"] for r in ranks] == [4, 4], proc.stderr[-3000:]
    steps = set()
    for r in ranks:
        (message,) = [m for m in r["errors"] if "max_failure_fraction" in m]
        steps.add(re.search(r"at epoch (\d+) step (\d+)", message).groups())
        assert "on rank(s) 1" in message and "rank 0: none failed" in message
        assert all(key in message for key in keys) and "shard-00000" in message
    assert len(steps) == 1  # the same step on both ranks


@pytest.mark.slow
def test_every_sample_rotted_stops_both_ranks_at_the_limit_naming_keys(synth_shards, tmp_path):
    table = load_shard_dir(synth_shards).table
    # the Done-when of the failure limit: a stop within 90 s (a hang would run to the timeout)
    proc, ranks = _run_two_ranks(corrupt_copy(synth_shards, tmp_path / "rotted", list(table.keys)),
                                 tmp_path, max_failure_fraction=0.01, timeout=90)
    assert "decodes on its own" not in proc.stderr
    assert [r["code"] for r in ranks] == [4, 4], proc.stderr[-3000:]
    for r in ranks:
        (message,) = [m for m in r["errors"] if "max_failure_fraction=0.01" in m]
        assert "while probing a failed batch" in message and "decodes on its own" not in message
        keys = re.findall(r"keys: ([^;(]+)", message)
        assert keys and all(k.strip() in table.keys for ks in keys for k in ks.split(","))
