"""`mvd-bench teachers`: the --quick run end to end through the CLI (its report's structure, not its
ordering: one epoch a stage means nothing), the similarity probe against independent
computations, and the ordering verdict on records made up for the purpose."""

import json
import math

import numpy as np
import pytest
import torch
import yaml

from benchmarks import cli, linear_probe, teachers
from benchmarks.cli import parse_args
from mvd.models import create_model

PNG = b"\x89PNG\r\n\x1a\n"
STAGES = ["image_teacher", "video_teacher", "student_image", "student_video", "student_both",
          *(f"{task}_{arm}" for task in ("spatial", "temporal") for arm in ("image", "video", "both", "scratch"))]


@pytest.mark.slow
def test_quick_run_writes_the_teachers_block_the_configs_and_the_figures(tmp_path):
    out, work = tmp_path / "report", tmp_path / "work"
    assert cli.main(["teachers", "--quick", "--out", str(out), "--work", str(work)]) == 0
    data = json.loads((out / "report.json").read_text())
    assert data["modes"]["teachers"]["status"] == "ok"
    block = data["teachers"]
    assert block["seeds"] == [0] and block["budget"] == "quick"
    seed_dir = work / "teachers" / "seed0"
    for task in ("spatial", "temporal"):
        assert list(block["top1"][task]) == list(block["probe"][task]) == ["image", "video", "both", "scratch"]
        for arm, values in block["top1"][task].items():
            # the block holds what each fine-tuning's own evaluation wrote
            assert values == [json.loads((seed_dir / f"{task}_{arm}" / "eval.json").read_text())["top1"]]
            assert block["readouts"]["finetune"]["summary"][task][arm]["mean"] == values[0]
        for arm, values in block["probe"][task].items():
            assert len(values) == 1 and 0 <= values[0] <= 100
            assert values[0] * teachers.QUICK.heldout / 100 == pytest.approx(round(values[0] * teachers.QUICK.heldout
                                                                                  / 100))  # whole clips
    records = data["modes"]["teachers"]["records"]
    top1 = [r for r in records if r["name"] == "teachers_top1"]
    assert len(top1) == 8 and {r["heldout"] for r in top1} == {teachers.QUICK.heldout}
    assert len({r["finetune_steps"] for r in top1}) == 1  # one budget for every arm
    probed = [r for r in records if r["name"] == "teachers_probe_top1"]
    assert len(probed) == 8 and {(r["heldout"], r["train"]) for r in probed} == {(teachers.QUICK.heldout,
                                                                                  teachers.QUICK.labeled)}
    assert {r["strength"] for r in probed} <= set(linear_probe.STRENGTHS)
    for key in ("finetune", "probe"):
        r = block["readouts"][key]
        assert [row["claim"] for row in r["ordering"]] == [c[3] for c in teachers.CLAIMS]
        assert all(row["verdict"].startswith(("holds", "does not hold")) for row in r["ordering"])
        assert r["verdict"].startswith("The paper's ordering") and r["verdict"] in block["verdict"]
        assert set(r["learnt"]) == {"spatial", "temporal"}

    sim = block["similarity"]
    models = ["student_image", "student_video", "student_both", "teacher_image", "teacher_video"]
    assert list(sim["mean"]) == models and sim["distances"] == [1, 2, 3]  # 8 frames / tubelet 2
    for m in models:
        assert -1.0 <= sim["mean"][m][0] <= 1.0 and len(sim["by_distance"][m]) == 3
    assert sim["claim"]["verdict"].startswith(("holds", "does not hold"))
    assert list(block["stage_s"]) == ["data", *STAGES, "probe"]
    assert all(load is not None for loads in block["load_1min_at_stage_start"].values() for load in loads)

    # every stage is an mvd-train run whose resolved config lands in the report directory
    configs = out / "configs" / "seed0"
    assert sorted(p.stem for p in configs.glob("*.yaml")) == sorted(STAGES)
    cfg = {s: yaml.safe_load((configs / f"{s}.yaml").read_text()) for s in STAGES}
    assert cfg["student_image"]["teachers"]["video"]["name"] == ""
    assert cfg["student_video"]["teachers"]["image"]["name"] == ""
    assert cfg["student_both"]["teachers"]["image"]["checkpoint"] == str(seed_dir / "image_teacher")
    assert cfg["spatial_video"]["model"]["init"] == str(seed_dir / "student_video")
    assert cfg["temporal_scratch"]["model"]["init"] == ""
    assert cfg["temporal_both"]["data"]["dir"] == str(seed_dir / "data" / "temporal-train")
    assert len({json.dumps({k: v for k, v in cfg[s].items() if k not in ("model", "run", "data", "eval")})
                for s in STAGES if s.startswith(("spatial", "temporal"))}) == 1  # the same recipe for all 8
    data_recipes = json.loads((configs / "data.json").read_text())
    assert data_recipes[str(seed_dir / "data" / "spatial-train")]["label_by"] == "cue"

    md = (out / "report.md").read_text()
    for heading in ("### The paper's ordering", "### Fine-tuned: held-out top-1", "### Linear probe: held-out top-1",
                    "### How static the features are", "### Seconds per stage"):
        assert heading in md
    for r in block["readouts"].values():
        assert r["verdict"] in md
    assert block["plots"] == ["teachers-top1.png", "teachers-similarity.png"]
    for plot in block["plots"]:
        assert (out / plot).read_bytes()[:8] == PNG and f"]({plot})" in md


def test_seeds_are_parsed_and_only_taken_by_the_seeded_studies(capsys):
    assert parse_args(["teachers", "--seeds", "3,1", "--out", "x"]).seeds == (3, 1)
    assert parse_args(["detect", "--seeds", "2", "--out", "x"]).seeds == (2,)
    capsys.readouterr()
    assert parse_args(["demo", "--seeds", "4,0", "--threads", "2", "--out", "x"]).threads == (2,)
    for argv, message in ((["loader", "--seeds", "0", "--out", "x"],
                           "--seeds applies to demo, teachers, detect only, not to loader"),
                          (["teachers", "--threads", "1", "--out", "x"], "--threads applies to demo only, not to teachers"),
                          (["demo", "--threads", "0", "--out", "x"], "--threads must be distinct integers >= 1")):
        capsys.readouterr()
        with pytest.raises(SystemExit) as exc:
            parse_args(argv)
        assert exc.value.code == 2
        assert message in capsys.readouterr().err
    for argv in (["teachers", "--seeds", "0,a", "--out", "x"], ["teachers", "--seeds", "1,1", "--out", "x"]):
        with pytest.raises(SystemExit) as exc:
            parse_args(argv)
        assert exc.value.code == 2


# ---------------------------------------------------------------------------------------------
# The probe


def test_features_constant_over_time_have_similarity_one():
    frame = torch.randn(3, 1, 4, 5, 8)
    sim = teachers.time_similarity(frame.expand(3, 6, 4, 5, 8))
    assert torch.allclose(sim, torch.ones(6, 6), atol=1e-6)
    assert teachers.distance_profile(sim) == pytest.approx([1.0] * 5)
    assert teachers.pair_mean(sim) == pytest.approx(1.0)


def test_features_rotating_in_time_give_the_cosine_of_the_angle_between_slices():
    # slice t holds unit vectors turned by t * angle in a plane: cos = cos(angle * |t - s|)
    angle, T = 0.3, 4
    phase = torch.rand(2, 1, 3, 3) * 6.28  # a different start at every position
    theta = phase + angle * torch.arange(T).view(1, T, 1, 1)
    tokens = torch.stack([torch.cos(theta), torch.sin(theta)], dim=-1) * 2.5  # (B, T, H, W, 2)
    profile = teachers.distance_profile(teachers.time_similarity(tokens))
    assert profile == pytest.approx([math.cos(angle * d) for d in (1, 2, 3)], abs=1e-5)
    pairs = [math.cos(angle * (s - t)) for t in range(T) for s in range(t + 1, T)]
    assert teachers.pair_mean(teachers.time_similarity(tokens)) == pytest.approx(np.mean(pairs), abs=1e-5)


def test_similarity_matches_an_explicit_loop_over_positions():
    tokens = torch.randn(2, 3, 2, 2, 5, dtype=torch.float64)  # the probe computes in float32
    x = tokens.numpy()
    B, T, H, W, _ = x.shape
    want = np.zeros((T, T))
    for t in range(T):
        for s in range(T):
            for b in range(B):
                for h in range(H):
                    for w in range(W):
                        u, v = x[b, t, h, w], x[b, s, h, w]
                        want[t, s] += u @ v / np.linalg.norm(u) / np.linalg.norm(v) / (B * H * W)
    sim = teachers.time_similarity(tokens)
    assert np.allclose(sim.numpy(), want, atol=1e-6)
    assert teachers.distance_profile(sim) == pytest.approx([np.mean([want[t, t + d] for t in range(T - d)])
                                                            for d in (1, 2)], abs=1e-6)
    assert teachers.pair_mean(sim) == pytest.approx(np.mean([want[0, 1], want[0, 2], want[1, 2]]), abs=1e-6)


def test_student_tokens_are_every_encoder_token_in_t_h_w_order():
    student = create_model("mvd_student_small", img_size=32, num_frames=4, patch_size=8, embed_dim=16,
                           depth=1, num_heads=2, decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2,
                           targets=["image"], image_target_dim=16).eval()
    video = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        tokens = teachers.student_tokens(student, video)
        flat = student.norm(student.forward_blocks(student.embed(video)))  # (B, N, D), no masking
    assert tokens.shape == (2, 2, 4, 4, 16)
    t, h, w = 1, 2, 3
    assert torch.allclose(tokens[:, t, h, w], flat[:, t * 16 + h * 4 + w], atol=1e-5)


# ---------------------------------------------------------------------------------------------
# The ordering verdict


def _records(top1: dict, sim: dict, probe: dict | None = None) -> list[dict]:
    records = []
    for (task, arm), values in top1.items():
        records += [{"name": "teachers_top1", "value": v, "unit": "%", "task": task, "arm": arm, "seed": s,
                     "heldout": 160, "finetune_steps": 900, "budget": "default"} for s, v in enumerate(values)]
    for (task, arm), values in (probe or top1).items():
        records += [{"name": "teachers_probe_top1", "value": v, "unit": "%", "task": task, "arm": arm, "seed": s,
                     "heldout": 160, "train": 480} for s, v in enumerate(values)]
    for model, values in sim.items():
        records += [{"name": "teachers_similarity", "value": v, "unit": "cosine", "model": model, "seed": s}
                    for s, v in enumerate(values)]
        records += [{"name": "teachers_similarity_at", "value": v, "unit": "cosine", "model": model, "seed": s,
                     "distance": 1} for s, v in enumerate(values)]
    for s in range(2):
        records += [{"name": "teachers_stage_s", "value": 10.0, "unit": "s", "stage": "data", "seed": s,
                     "load_1min_at_start": 1.0},
                    {"name": "teachers_seed_wall_s", "value": 100.0, "unit": "s", "seed": s}]
    return records


PAPER = {("spatial", "image"): [60, 64], ("spatial", "video"): [50, 52], ("spatial", "both"): [66, 63],
         ("spatial", "scratch"): [40, 40], ("temporal", "image"): [60, 60], ("temporal", "video"): [70, 72],
         ("temporal", "both"): [75, 74], ("temporal", "scratch"): [56, 56]}  # chance: 25 % and 50 %
SIM = {"student_image": [0.9, 0.8], "student_video": [0.7, 0.75]}


def test_the_verdict_holds_when_every_claim_holds_on_the_means():
    block = teachers.summarise(_records(PAPER, SIM))
    fine = block["readouts"]["finetune"]
    assert fine["verdict"].startswith("The paper's ordering holds")
    assert block["verdict"] == f"Fine-tuned: {fine['verdict']} Linear probe: {block['readouts']['probe']['verdict']}"
    spatial_both = fine["ordering"][2]
    # against the better rival's mean (image, 62) and per seed against the best rival of that seed
    assert spatial_both["against"] == "image" and spatial_both["margin"] == pytest.approx(64.5 - 62)
    assert spatial_both["per_seed"] == [6, -1] and spatial_both["seeds_ahead"] == 1
    assert fine["summary"]["spatial"]["image"] == {"mean": 62, "std": pytest.approx(math.sqrt(8)),
                                                   "min": 60, "max": 64, "n": 2}
    assert fine["over_scratch"]["temporal"]["video"] == pytest.approx(15)
    # learnt: the best arm's mean at least 15 points above the 25 % chance
    assert fine["learnt"]["spatial"] == {"best": "both", "margin": pytest.approx(64.5 - 25), "learnt": True}
    claim = block["similarity"]["claim"]
    assert claim["holds"] and claim["margin"] == pytest.approx(0.125)


def test_the_verdict_names_each_claim_that_fails():
    worse = {**PAPER, ("temporal", "both"): [70, 71]}  # below the video-taught mean
    block = teachers.summarise(_records(worse, {**SIM, "student_video": [0.95, 0.9]}, probe=PAPER))
    assert block["readouts"]["probe"]["verdict"].startswith("The paper's ordering holds")
    block = block["readouts"]["finetune"] | {"similarity": block["similarity"]}
    assert block["verdict"] == ("The paper's ordering does not hold at this scale: 3 of 4 comparisons hold on "
                                "the means over 2 seeds; not: co-teaching beats either teacher alone on the "
                                "temporal task.")
    assert block["ordering"][3]["verdict"].startswith(
        "does not hold: -0.5 points on the mean (70.5 vs video 71.0)")
    assert not block["similarity"]["claim"]["holds"]


def test_a_task_no_arm_learnt_is_called_noise():
    guessed = {**PAPER, **{("spatial", arm): [26, 27] for arm in ("image", "video", "both", "scratch")}}
    block = teachers.summarise(_records(guessed, SIM))["readouts"]["finetune"]
    assert block["learnt"]["spatial"]["learnt"] is False and block["learnt"]["temporal"]["learnt"] is True
    se = 100 * math.sqrt(0.25 * 0.75 / (160 * 2))  # binomial, a mean of guesses over 2 seeds x 160 clips
    assert block["above_chance"]["se"] == {"spatial": pytest.approx(se),
                                           "temporal": pytest.approx(100 * math.sqrt(0.5 * 0.5 / 320))}
    # each task against its own chance: the temporal task's 2 classes put it at 50 %
    assert block["above_chance"]["arms"]["temporal"]["scratch"]["margin"] == pytest.approx(56 - 50)
    assert not any(arm["above"] for arm in block["above_chance"]["arms"]["spatial"].values())
    assert all(arm["above"] for arm in block["above_chance"]["arms"]["temporal"].values())
    assert block["verdict"].endswith(f"No arm is more than two standard errors ({2 * se:.1f} points) above "
                                     "chance on the spatial task: it was not learnt, and its comparisons are noise.")
    assert "temporal task: it was not learnt" not in block["verdict"]
