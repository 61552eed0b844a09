"""Training from object storage: a 2-process torchrun pretraining run with data.dir=s3://... on a
real S3-compatible server (127.0.0.1) logs the same per-step losses as from the local folder; a
missing prefix stops the run before training, naming the URL."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dali_pipelines import ShardDirError
from mvd.config import ConfigError
from mvd.engine.class_lists import shard_classes
from mvd.train import main

ROOT = Path(__file__).resolve().parents[2]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone"]


@pytest.mark.slow
def test_two_process_pretraining_from_s3_logs_the_losses_of_the_local_folder(s3_store, synth_shards, tmp_path):
    url = s3_store.put(synth_shards, "s3://mvd-train/synth")
    proc = subprocess.run([*TORCHRUN, str(ROOT / "tests/mvd/train_s3_worker.py"), str(tmp_path), str(synth_shards), url],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {w: [(r["step"], r["loss"]) for r in map(json.loads, open(tmp_path / w / "metrics.jsonl"))]
            for w in ("local", "s3")}
    assert [s for s, _ in rows["s3"]] == [1, 2, 3]
    assert rows["s3"] == rows["local"]


def test_a_missing_prefix_stops_the_run_before_training_naming_the_url(s3_store, tmp_path):
    s3_store.put(tmp_path, "s3://mvd-train/elsewhere")  # the bucket exists, the prefix does not
    url = "s3://mvd-train/no-such-shards"
    with pytest.raises(ShardDirError, match=f"{url}: no such prefix"):
        main(["--config", str(ROOT / "configs/tiny/pretrain_mvd.yaml"), f"data.dir={url}",
              f"run.dir={tmp_path / 'run'}", "run.progress=false"])
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_the_class_list_of_an_s3_shard_directory_and_of_a_missing_one(s3_store, synth_shards):
    url = s3_store.put(synth_shards, "s3://mvd-train/classes")
    assert shard_classes(url, "eval.dir").names == shard_classes(str(synth_shards)).names
    with pytest.raises(ConfigError, match="config key 'eval.dir': s3://mvd-train/absent: no such prefix"):
        shard_classes("s3://mvd-train/absent", "eval.dir")


@pytest.mark.slow  # the dry run builds the fake student and teachers
def test_the_dry_run_says_it_does_not_check_an_s3_data_dir():
    from mvd.config import load_config
    from mvd.engine.dryrun import make_plan

    cfg = load_config(ROOT / "configs/tiny/pretrain_mvd.yaml", ["data.dir=s3://bucket/k400_train", "dist.device=cpu",
                                                                "data.expected_samples=48"])
    plan, notes = make_plan(cfg)
    assert plan is not None, notes.errors
    assert "data.dir=s3://bucket/k400_train is in object storage: not checked by the dry run" in notes.warnings
    assert not any("does not exist yet" in w and "s3://" in w for w in notes.warnings)
