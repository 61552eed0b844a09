"""run.wandb=true: an offline W&B run (the real library, WANDB_MODE=offline) records every step's
loss and lr as metrics.jsonl has them, clips/s, data-wait, memory, the eval result and the config;
without wandb installed the run stops before training saying how to install it."""

import glob
import json
import struct
import sys
import time
from pathlib import Path

import pytest

from mvd.config import load_config
from mvd.engine.trainer import Trainer
from mvd.train import main

TINY = Path(__file__).resolve().parents[3] / "configs" / "tiny"


def wandb_records(path: str):
    """The protobuf records of a .wandb file (a LevelDB-style log: 32 KiB blocks, records split
    into FULL / FIRST / MIDDLE / LAST chunks behind 7-byte headers), read with wandb's own schema."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", "not a W&B transaction log"
    pos, block, buf = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 0:
            continue
        buf = chunk if kind in (1, 2) else buf + chunk
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(buf)
            yield record
            buf = b""


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="run.wandb needs wandb (the wandb / dev extras)")
    monkeypatch.setenv("WANDB_MODE", "offline")
    for var in ("WANDB_DIR", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home"))


@pytest.mark.slow
def test_an_offline_wandb_run_records_the_losses_eval_and_config(offline_wandb, synth_shards, tmp_path):
    run = tmp_path / "run"
    trainer = Trainer(load_config(TINY / "finetune.yaml", [
        f"data.dir={synth_shards}", f"eval.dir={synth_shards}", f"run.dir={run}", "train.max_steps=4",
        "run.log_every=2", "run.progress=false", "run.wandb=true", "run.wandb_project=mvd-test"]))
    assert trainer.train()["status"] == "finished"
    trainer.metrics.wandb.finish()  # flush (a process running mvd-train finishes its W&B run at exit)
    files = glob.glob(str(run / "wandb" / "offline-run-*" / "run-*.wandb"))
    assert len(files) == 1, files
    # wandb's core process writes the log after finish() returns: wait for its "all finished"
    internal = Path(files[0]).parent / "logs" / "debug-internal.log"
    deadline = time.monotonic() + 60
    while "stream: all finished" not in internal.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    history, config = {}, None
    for record in wandb_records(files[0]):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            history[record.history.step.num] = {i.key or "/".join(i.nested_key): json.loads(i.value_json)
                                                for i in record.history.item}
        elif kind == "run":
            config = {i.key: json.loads(i.value_json) for i in record.run.config.update}
    rows = [json.loads(line) for line in open(run / "metrics.jsonl")]
    assert sorted(history) == [r["step"] for r in rows] == [1, 2, 3, 4]
    for r in rows:
        for k, v in r.items():
            if k != "step" and v is not None:
                assert history[r["step"]][f"train/{k}"] == pytest.approx(v, rel=1e-12), (r["step"], k)
    for step in (2, 4):  # each logging window: throughput, data-wait share, peak memory
        assert history[step]["train/clips_per_s"] > 0 and 0 <= history[step]["train/data_wait"] <= 1
        assert history[step]["train/peak_memory_gib"] > 0
    evaluation = json.loads((run / "eval.json").read_text())
    assert history[4]["eval/top1"] == pytest.approx(evaluation["top1"])
    assert history[4]["eval/top5"] == pytest.approx(evaluation["top5"])
    assert config["task"] == "finetune" and config["run"]["wandb"] is True
    assert (run / "wandb-run-id").read_text().strip() in files[0]


def test_without_wandb_installed_the_run_stops_saying_how_to_install_it(synth_shards, tmp_path, monkeypatch,
                                                                        capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    run = tmp_path / "run"
    assert main(["--config", str(TINY / "pretrain_videomae.yaml"), f"data.dir={synth_shards}", f"run.dir={run}",
                 "run.wandb=true", "run.progress=false"]) == 2
    err = capsys.readouterr().err
    assert "run.wandb=true but wandb is not installed: pip install 'mvd[wandb]'" in err, err
    assert not (run / "metrics.jsonl").exists()
