"""`mvd-bench ... --quick --device cpu` for real, in this process (tests/benchmarks/test_detect.py
runs `python -m benchmarks`): the modules run on this machine and the report files come out
complete and consistent."""

import json
import math
from dataclasses import replace
from importlib import metadata
from pathlib import Path

import pytest

from benchmarks import cli, report, targets

PNG = b"\x89PNG\r\n\x1a\n"


def load_report(out: Path) -> dict:
    def refuse(constant):
        raise AssertionError(f"report.json holds {constant}")

    return json.loads((out / "report.json").read_text(), parse_constant=refuse)


def check_report(out: Path, command: str, modes: list[str]) -> dict:
    """The consistency a reader relies on; returns the parsed report.json."""
    data = load_report(out)
    md = (out / "report.md").read_text()
    assert data["format"] == report.FORMAT
    assert data["command"] == command and f"`{command}`" in md
    assert data["config"]["modes"] == modes and data["config"]["device"] == "cpu"
    env = data["environment"]
    assert env["device"] == "cpu" and env["device_name"] and env["cpu_count"] >= 1
    assert env["date_utc"].endswith("Z")
    for package in ("python", "torch", "numpy", "timm", "av", "nvidia-dali"):
        assert env["packages"][package], package
    assert list(data["modes"]) == modes
    for mode, result in data["modes"].items():
        assert result["status"] == "ok", (mode, result.get("error") or result.get("reason"))
        assert f"## {mode}" in md
        assert report.measured(result["records"]), f"{mode} measured nothing"
        for rec in result["records"]:
            if "value" not in rec:
                assert rec["skipped"], rec
                continue
            assert isinstance(rec["value"], float) and math.isfinite(rec["value"]), rec
            assert rec["unit"] and rec["name"], rec
        for plot in result.get("plots", []):
            assert (out / plot).read_bytes()[:8] == PNG
            assert f"]({plot})" in md
    for row in data["targets"]:
        assert row["status"] in (targets.PASS, targets.FAIL, targets.INDICATIVE,
                                 targets.NOT_MEASURED)
        assert row["status"] not in (targets.PASS, targets.FAIL), \
            "a CPU run cannot judge the GPU targets"
    assert "No GPU was visible" in md
    return data


def test_mvd_bench_is_the_console_script():
    (script,) = [e for e in metadata.entry_points(group="console_scripts") if e.name == "mvd-bench"]
    assert script.value == "benchmarks.cli:main"


@pytest.mark.slow
def test_quick_step_on_cpu_writes_a_consistent_report(tmp_path):
    out = tmp_path / "report"
    assert cli.main(["step", "--quick", "--device", "cpu", "--out", str(out)]) == 0
    data = check_report(out, f"mvd-bench step --quick --device cpu --out {out}", ["step"])
    records = data["modes"]["step"]["records"]
    by_name = {}
    for rec in records:
        by_name.setdefault(rec["name"], []).append(rec)
    sizes = [r["batch_size"] for r in by_name["end_to_end"]]
    assert len(sizes) >= 2, "quick step measures at least two batch sizes"
    for name in ("end_to_end", "compute_only", "loader_only", "data_wait_share",
                 "loader_over_compute", "flops_per_clip", "flops_per_clip_counted"):
        assert [r["batch_size"] for r in by_name[name]] == sizes, name
    for rec in by_name["data_wait_share"]:
        assert 0.0 <= rec["value"] <= 100.0 and rec["unit"] == "%"
    for rec in by_name["end_to_end"]:
        assert rec["unit"] == "clips/s" and rec["value"] > 0
    # the analytical FLOP count and torch's counter agree on the tiny model within 10%
    for counted, analytic in zip(by_name["flops_per_clip_counted"], by_name["flops_per_clip"]):
        assert counted["value"] == pytest.approx(analytic["value"], rel=0.1)
    assert (out / "step-clips_s-vs-batch_size.png").exists()
    assert not list(out.glob("**/*.tar")), "scratch shards must not land in the report dir"
    # the same records, written one a line as each variant ended (a run cut short keeps them)
    lines = [json.loads(line) for line in (out / "step-records.jsonl").read_text().splitlines()]
    assert [(r["name"], r["value"]) for r in lines] == [(r["name"], r["value"]) for r in records]


@pytest.mark.slow
def test_all_modes_together_at_their_smallest_settings(tmp_path, monkeypatch):
    """`mvd-bench all` over the real shard, loader, model, step and demo modules, each shrunk to
    its smallest real configuration so that the five fit the test budget (the shipped --quick
    settings of all five take about two minutes on an idle 2-core machine)."""
    import mvd.demo
    from benchmarks import loader, model, shard, step

    monkeypatch.setattr(shard, "QUICK", replace(shard.QUICK, num_videos=4, num_frames=16,
                                                width=96, height=64))
    monkeypatch.setattr(shard, "AVA_QUICK", replace(shard.AVA_QUICK, seconds=3, width=64, height=48,
                                                    long_gop_size=(96, 64), long_gop_short_side=32))
    monkeypatch.setattr(loader, "QUICK", replace(
        loader.QUICK, num_videos=8, num_frames=24, width=96, height=64, clip_frames=8,
        sampling_rate=2, input_size=64, teacher_sizes=(64,), batch_size=2, batches=2, rounds=1))
    smallest = replace(model.cases("cpu", True)[0], batch_size=1, num_frames=4, img_size=32,
                       warmup=0, steps=1)
    monkeypatch.setattr(model, "cases", lambda device, quick: [smallest])
    monkeypatch.setattr(step, "QUICK", replace(step.QUICK, batch_sizes=(4,), warmup_steps=1,
                                               steps=2, rounds=1))
    monkeypatch.setattr(mvd.demo, "QUICK", replace(mvd.demo.QUICK, pool=16, labeled=16, heldout=8))
    out = tmp_path / "report"
    assert cli.main(["all", "--quick", "--device", "cpu", "--out", str(out)]) == 0
    data = check_report(out, f"mvd-bench all --quick --device cpu --out {out}",
                        list(report.MODES))
    names = {m: {r["name"] for r in res["records"]} for m, res in data["modes"].items()}
    assert {"shard_videos_per_s"} <= names["shard"]
    assert {"pretrain_clips_per_s", "pretrain_speedup_vs_baseline", "decode_cpu_ms_per_clip",
            "pretrain_speedup_ceiling"} <= names["loader"]
    loader_recs = data["modes"]["loader"]["records"]
    decoders = {(r["codec"], r["decoder"]) for r in loader_recs if r["name"] == "decode_cpu_ms_per_clip"}
    assert decoders == {("vp9", "dali"), ("vp9", "pyav"), ("h264", "pyav")}
    for ceiling in (r for r in loader_recs if r["name"] == "pretrain_speedup_ceiling"):
        baseline = next(r["value"] for r in loader_recs if r["name"] == "pretrain_cpu_ms_per_clip"
                        and r["loader"] == "baseline" and r["codec"] == ceiling["codec"])
        decode = next(r["value"] for r in loader_recs if r["name"] == "decode_cpu_ms_per_clip"
                      and (r["codec"], r["decoder"]) == (ceiling["codec"], ceiling["decoder"]))
        assert ceiling["value"] == pytest.approx(baseline / decode)
    assert {"fwd_bwd", "achieved"} <= names["model"]
    assert {"end_to_end", "compute_only", "loader_only", "data_wait_share"} <= names["step"]
    assert {"demo_top1", "demo_margin_top1", "demo_curve_top1", "demo_margin_curve_top1",
            "demo_wall_s"} <= names["demo"]
    demo = {(r["name"], r.get("student")): r for r in data["modes"]["demo"]["records"]}
    assert demo[("demo_margin_top1", None)]["value"] == pytest.approx(
        demo[("demo_top1", "distilled")]["value"] - demo[("demo_top1", "scratch")]["value"])
    for student in ("distilled", "scratch"):  # the mean of the fine-tuning's validations, the last at the end
        curve = demo[("demo_curve_top1", student)]
        assert curve["value"] == pytest.approx(sum(t for _, t in curve["curve"]) / len(curve["curve"]))
        assert curve["curve"][-1] == [demo[("demo_top1", student)]["finetune_steps"],
                                      demo[("demo_top1", student)]["value"]]
    assert demo[("demo_margin_curve_top1", None)]["value"] == pytest.approx(
        demo[("demo_curve_top1", "distilled")]["value"] - demo[("demo_curve_top1", "scratch")]["value"])
    assert demo[("demo_top1", "distilled")]["heldout"] == 8
    # a quick demo is not the reference budget: its margin is shown, never judged
    demo_row = next(t for t in data["targets"] if t["what"].startswith("mvd-demo"))
    assert demo_row["measured"] is not None and demo_row["status"] == "indicative only"
    # the CPU loader targets are evaluated from the loader's records, not left unmeasured
    loader_rows = [t for t in data["targets"] if "baseline" in t["what"]]
    assert loader_rows and all(t["measured"] is not None for t in loader_rows)
