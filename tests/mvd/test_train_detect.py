"""`mvd-train` with task detect on synthetic AVA shards (shard_tools.synth_ava) and the real
loaders: the loss learns a fixed batch, stop-and-resume reproduces the losses, validation writes
eval.json (frame mAP) and detections.csv, which the evaluator's own CLI scores the same from the
original AVA files, and ``task: eval`` of the trained detector gives the same mAP; under torchrun
with 2 processes (gloo) every keyframe is scored once and the 2-rank evaluation of a model equals
the 1-process one."""

import csv
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mvd.ava_eval import main as ava_eval_main
from mvd.config import load_config
from mvd.engine.distributed import DistInfo
from mvd.engine.precision import plan_precision
from mvd.engine.tasks import Detect
from mvd.engine.trainer import Trainer
from mvd.models import create_model, load_checkpoint
from mvd.train import main

sys.path.insert(0, str(Path(__file__).parent / "engine"))
from test_host_sync import (COUNTED_STEPS, counter, pause_during_optimizer_step,  # noqa: E402,F401
                            prefetch, run_counted_steps)

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs" / "tiny"
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone"]


@pytest.fixture(scope="module")
def ava(ava_shards, ava_val_shards):
    """(train, val) synthetic AVA shards (tests/conftest.py): 58 and 28 keyframes of 16-frame 64x64 clips."""
    return ava_shards, ava_val_shards


def config(train, run_dir, *overrides):
    return load_config(TINY / "detect.yaml", [f"data.dir={train.out_dir}", f"run.dir={run_dir}",
                                              "run.progress=false", *overrides])


def rows(path):
    return [(r["step"], r["loss"]) for r in map(json.loads, open(path))]


def cli_map(val, detections: Path, capsys) -> float:
    """The mAP mvd-ava-eval gives the detections against the original files."""
    f = val.files
    capsys.readouterr()
    assert ava_eval_main(["-l", str(f.eval_labels), "-g", str(f.annotations), "-d", str(detections),
                          "-e", str(f.excluded)]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])["mAP"]


def test_loss_goes_down_on_a_fixed_batch(ava, tmp_path):
    train, _ = ava
    t = Trainer(config(train, tmp_path, "optim.base_lr=2.0", "schedule.warmup_steps=0"))
    batch = next(iter(t.loader))
    assert batch["boxes"].shape[0] >= 8 and batch["box_labels"].shape[1] == 7
    losses = [float(t.train_step([batch])["loss"]) for _ in range(12)]
    t.metrics.close()
    assert losses[0] == pytest.approx(math.log(2), rel=0.02)  # sigmoid(~0) before training
    assert sum(losses[-3:]) / 3 < 0.8 * losses[0], losses


def test_steady_state_detect_step_has_no_host_sync(ava, tmp_path, counter, monkeypatch):
    """tests/mvd/engine/test_host_sync.py's two counters on the detect step (RoIAlign, BCE)."""
    train, _ = ava
    trainer = Trainer(config(train, tmp_path, "checkpoint.resume=none", "checkpoint.every_steps=0",
                             "run.log_every=1000"))
    try:
        batches = prefetch(trainer, 1 + COUNTED_STEPS)
        pause_during_optimizer_step(trainer, counter, monkeypatch)
        steps = run_counted_steps(trainer, batches, counter)
    finally:
        trainer.metrics.close()
    assert len(steps) == COUNTED_STEPS
    assert not counter.hits, f"{len(counter.hits)} host sync(s) in the detect step:\n{counter.report()}"


def test_stop_and_resume_reproduces_the_losses(ava, tmp_path):
    train, _ = ava
    common = ["checkpoint.every_steps=0", "run.log_every=3"]
    Trainer(config(train, tmp_path / "a", "train.max_steps=6", *common)).train()
    Trainer(config(train, tmp_path / "b", "train.max_steps=4", *common)).train()
    Trainer(config(train, tmp_path / "b", "train.max_steps=6", *common)).train()
    assert rows(tmp_path / "a" / "metrics.jsonl") == rows(tmp_path / "b" / "metrics.jsonl")
    assert [s for s, _ in rows(tmp_path / "a" / "metrics.jsonl")] == list(range(1, 7))


def test_cli_trains_validates_and_writes_detections_the_evaluator_cli_scores_alike(ava, tmp_path, capsys):
    train, val = ava
    run = tmp_path / "run"
    # 2 epochs of 14 steps, validating after each (eval.every_epochs=1) and at the end
    assert main(["--config", str(TINY / "detect.yaml"), f"data.dir={train.out_dir}", f"eval.dir={val.out_dir}",
                 f"run.dir={run}", "train.max_steps=28", "eval.every_epochs=1"]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out.strip().splitlines()[-1])
    assert out["status"] == "finished" and out["step"] == 28
    assert "step 14: eval frame mAP@0.5IoU" in captured.err  # after epoch 1, then at the end
    assert "step 28: eval frame mAP@0.5IoU" in captured.err
    ev = json.loads((run / "eval.json").read_text())
    assert ev == out["eval"] and ev["step"] == 28
    assert math.isfinite(ev["mAP"]) and 0.0 <= ev["mAP"] <= 1.0
    assert ev["eval_boxes"] == "proposals" and ev["keyframes"] == val.manifest["detection"]["keyframes"]
    assert set(ev["per_class"]) == {"1", "2", "3", "5", "6", "7"}  # the evaluated subset
    with open(run / "detections.csv") as f:
        dets = list(csv.reader(f))
    assert len(dets) == ev["detections"] == ev["boxes_scored"] * 6
    assert {int(r[6]) for r in dets} == {1, 2, 3, 5, 6, 7}
    assert all(0.0 <= float(r[7]) <= 1.0 for r in dets)
    assert cli_map(val, run / "detections.csv", capsys) == pytest.approx(ev["mAP"], abs=1e-9)

    # task eval of the trained detector: the AVA evaluation, the mAP training's validation gave
    evaluated = tmp_path / "eval"
    assert main(["--config", str(TINY / "detect.yaml"), "task=eval", f"model.init={run}",
                 f"eval.dir={val.out_dir}", f"run.dir={evaluated}"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    again = json.loads((evaluated / "eval.json").read_text())
    assert out["task"] == "eval" and again["mAP"] == ev["mAP"]
    assert {k: again[k] for k in ("per_class", "keyframes", "boxes_scored", "detections")} == \
        {k: ev[k] for k in ("per_class", "keyframes", "boxes_scored", "detections")}
    assert (evaluated / "detections.csv").read_text() == (run / "detections.csv").read_text()


def evaluate_untrained(train, val_dir, run_dir, *overrides):
    """Detect.evaluate of a fresh tiny detector (seed 0) in this process."""
    cfg = config(train, run_dir, f"eval.dir={val_dir}", *overrides)
    torch.manual_seed(0)
    model = create_model("video_vit_det_small", img_size=32, num_frames=8, num_classes=7, head_init_scale=1.0,
                         **cfg.model.overrides)
    result = Detect.evaluate(cfg, DistInfo(0, 1, 0, torch.device("cpu")), model,
                             plan_precision("fp32", "cpu"), [], run_dir)
    with open(run_dir / "detections.csv") as f:
        return result, list(csv.reader(f))


def test_detection_scores_are_the_sigmoid_times_the_proposals_person_score(ava, tmp_path):
    train, val = ava
    scaled, dets = evaluate_untrained(train, val.out_dir, tmp_path / "a")
    plain, raw = evaluate_untrained(train, val.out_dir, tmp_path / "b", "detect.score_by_proposal=false")
    person = {}  # (video, ts, box) -> the proposal's score, from the original proposals CSV
    for r in csv.reader(open(val.files.proposals)):
        person[(r[0], r[1], *(round(float(v), 5) for v in r[2:6]))] = float(r[6])
    assert len(dets) == len(raw) == scaled["detections"] > 0
    plain_by_row = {tuple(b[:7]): float(b[7]) for b in raw}  # (rows come in the evaluator's heap order)
    for a in dets:
        key = (a[0], a[1], *(round(float(v), 5) for v in a[2:6]))
        assert person[key] >= 0.8  # detect.proposal_min_score
        assert float(a[7]) == pytest.approx(plain_by_row[tuple(a[:7])] * person[key], rel=1e-6)
    assert math.isfinite(scaled["mAP"]) and math.isfinite(plain["mAP"])


def test_shards_without_proposals_are_scored_on_their_ground_truth_boxes(ava, ava_no_proposals, tmp_path):
    train, val = ava[0], ava_no_proposals
    result, dets = evaluate_untrained(train, val.out_dir, tmp_path / "run")
    assert result["eval_boxes"] == "groundtruth" and result["keyframes"] == val.manifest["detection"]["keyframes"]
    gt = {(r[0], r[1], *(round(float(v), 5) for v in r[2:6])) for r in csv.reader(open(val.files.annotations))}
    assert {(r[0], r[1], *(round(float(v), 5) for v in r[2:6])) for r in dets} <= gt
    assert result["boxes_scored"] == val.manifest["detection"]["boxes"]
    assert all(0.0 < float(r[7]) < 1.0 for r in dets) and math.isfinite(result["mAP"])


@pytest.mark.parametrize("field", ["classes", "action_ids"])
def test_eval_shards_of_another_label_map_are_refused_before_any_work(ava, tmp_path, capsys, field):
    train, val = ava
    other = tmp_path / "val"
    shutil.copytree(val.out_dir, other)
    manifest = json.loads((other / "manifest.json").read_text())
    if field == "classes":
        manifest["classes"][2] = "jump"
    else:
        manifest["detection"]["action_ids"][-1] = 9
    (other / "manifest.json").write_text(json.dumps(manifest))
    assert main(["--config", str(TINY / "detect.yaml"), f"data.dir={train.out_dir}", f"eval.dir={other}",
                 f"run.dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err
    assert "config error: class lists differ" in err and f"eval.dir={other}" in err
    assert ("index 2: 'move up' vs 'jump'" if field == "classes" else "index 6: '7' vs '9'") in err
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def dist_run(ava, tmp_path_factory):
    """task detect in a 2-process torchrun group, DDP then FSDP2 (train_detect_dist_worker.py)."""
    train, val = ava
    out = tmp_path_factory.mktemp("detect_dist")
    proc = subprocess.run([*TORCHRUN, str(ROOT / "tests/mvd/train_detect_dist_worker.py"), str(out),
                           str(train.out_dir), str(val.out_dir)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out, json.loads((out / "results.json").read_text())


@pytest.mark.slow
def test_two_processes_train_and_score_every_keyframe_once_with_ddp_and_fsdp(ava, dist_run, capsys):
    train, val = ava
    out, results = dist_run
    run = out / "detect"
    assert results["detect"]["status"] == "finished" and results["detect"]["step"] == 6
    assert [s for s, _ in rows(run / "metrics.jsonl")] == list(range(1, 7))
    ev = json.loads((run / "eval.json").read_text())
    assert ev["keyframes"] == val.manifest["detection"]["keyframes"] and math.isfinite(ev["mAP"])
    assert results["rank1_eval"] == results["detect"]["eval"]  # every rank gets the result
    fsdp = results["fsdp"]
    assert fsdp["status"] == "finished" and math.isfinite(fsdp["eval"]["mAP"])
    assert fsdp["eval"]["keyframes"] == ev["keyframes"] and (out / "fsdp" / "detections.csv").is_file()
    assert cli_map(val, run / "detections.csv", capsys) == pytest.approx(ev["mAP"], abs=1e-9)


@pytest.mark.slow
def test_two_rank_evaluation_equals_the_one_process_evaluation(ava, dist_run, tmp_path):
    train, val = ava
    out, _ = dist_run
    cfg = config(train, tmp_path, f"eval.dir={val.out_dir}")
    model = create_model("video_vit_det_small", img_size=32, num_frames=8, num_classes=7,
                         **cfg.model.overrides)
    load_checkpoint(model, out / "detect" / "model.safetensors")
    one = Detect.evaluate(cfg, DistInfo(0, 1, 0, torch.device("cpu")), model, plan_precision("fp32", "cpu"),
                          [], tmp_path)
    two = json.loads((out / "detect" / "eval.json").read_text())
    assert one["mAP"] == pytest.approx(two["mAP"], abs=1e-6)
    assert one["boxes_scored"] == two["boxes_scored"] and one["keyframes"] == two["keyframes"]

    def parsed(path):
        with open(path) as f:
            return sorted((r[0], r[1], r[6], *map(float, r[2:6]), float(r[7])) for r in csv.reader(f))

    for a, b in zip(parsed(tmp_path / "detections.csv"), parsed(out / "detect" / "detections.csv")):
        assert a[:7] == b[:7] and a[7] == pytest.approx(b[7], abs=1e-5)
