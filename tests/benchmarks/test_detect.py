"""`mvd-bench detect`: the --quick run end to end through the CLI (its records, configs and target
row, not its margin: one epoch a stage means nothing), and the one budget both detectors share."""

import json
import subprocess
import sys

import pytest
import yaml

from benchmarks import detect

STAGES = ["image_teacher", "video_teacher", "student", "distilled", "scratch"]


@pytest.mark.slow
def test_quick_run_reports_both_detectors_their_margin_and_replayable_configs(tmp_path):
    """Through `python -m benchmarks` (the other mode tests call the CLI in this process)."""
    out, work = tmp_path / "report", tmp_path / "work"
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "detect", "--quick", "--out", str(out),
                           "--work", str(work)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads((out / "report.json").read_text())
    assert data["modes"]["detect"]["status"] == "ok"
    records = data["modes"]["detect"]["records"]
    seed_dir = work / "detect" / "seed0"
    scores = {r["student"]: r for r in records if r["name"] == "detect_map"}
    assert sorted(scores) == ["distilled", "scratch"]
    for arm, rec in scores.items():
        # each figure is what the fine-tuning's own validation wrote (mAP in [0, 1] -> percent)
        written = json.loads((seed_dir / arm / "eval.json").read_text())
        assert rec["value"] == 100 * written["mAP"] and rec["heldout_keyframes"] == written["keyframes"]
    assert scores["distilled"]["finetune_steps"] == scores["scratch"]["finetune_steps"]
    margin = next(r for r in records if r["name"] == "detect_margin_map")
    assert margin["value"] == scores["distilled"]["value"] - scores["scratch"]["value"]
    # the detections behind each figure are the official CSV
    assert (seed_dir / "distilled" / "detections.csv").stat().st_size > 0
    # a quick run is not the reference budget: its margin is shown, never judged
    row = next(t for t in data["targets"] if t["what"].startswith("mvd-bench detect"))
    assert row["measured"] == margin["value"] and row["status"] == "indicative only"

    configs = out / "configs" / "seed0"
    assert sorted(p.stem for p in configs.glob("*.yaml")) == sorted(STAGES)
    cfg = {s: yaml.safe_load((configs / f"{s}.yaml").read_text()) for s in STAGES}
    assert cfg["distilled"]["task"] == cfg["scratch"]["task"] == "detect"
    assert cfg["distilled"]["model"]["init"] == str(seed_dir / "student") and cfg["scratch"]["model"]["init"] == ""
    # one budget for both detectors: their configs differ in the init and the run directory only
    for c in (cfg["distilled"], cfg["scratch"]):
        c["model"].pop("init"), c["run"].pop("dir")
    assert cfg["distilled"] == cfg["scratch"]
    assert cfg["student"]["data"]["dir"] == str(seed_dir / "data" / "pool")
    recipes = json.loads((configs / "data.json").read_text())
    assert recipes[str(seed_dir / "data" / "ava-train")]["function"] == "make_synth_ava_shards"
    assert recipes[str(seed_dir / "data" / "pool")]["spatial_cue"] == "shape"


def test_the_pool_moves_objects_in_every_direction_the_actions_name():
    """The pretraining pool's 16-class grid holds all four directions (the demo's 8 classes only
    two), so the student has seen every motion the synthetic actions name."""
    from shard_tools.synth import synth_grid

    for budget in (detect.DetectBudget(), detect.QUICK):
        recipe = detect.data_recipes(budget)["pool"][1]
        directions = {d for _, d in synth_grid(recipe["num_classes"], recipe["spatial_cue"])}
        assert directions == {"left", "right", "up", "down"}
