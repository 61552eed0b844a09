"""Report formatting, record validation, targets and the CLI's handling of modes, on small fake
modules (the real modules are exercised by test_bench_cli.py)."""

import json
import math
import sys
import types

import pytest

from benchmarks import cli, report, targets


def rec(name, value, unit="clips/s", **fields):
    return {"name": name, "value": value, "unit": unit, **fields}


@pytest.mark.parametrize(
    "bad, message",
    [
        (rec("x", float("nan")), "not finite"),
        (rec("x", float("inf")), "not finite"),
        (rec("x", True), "must be a number"),
        (rec("x", "12"), "must be a number"),
        ({"name": "x", "value": 1.0}, "missing 'unit'"),
        ({"value": 1.0, "unit": "s"}, "missing 'name'"),
        ({"name": "x", "skipped": ""}, "reason"),
        ("x", "expected a dict"),
    ],
)
def test_validate_records_rejects_what_is_not_a_finite_figure_with_a_unit(bad, message):
    with pytest.raises(report.RecordError, match=message) as err:
        report.validate_records("loader", [rec("ok", 1.0), bad])
    assert "loader record 1" in str(err.value)


def test_validate_records_keeps_skipped_records_and_makes_values_float():
    out = report.validate_records("model", [rec("a", 3), {"name": "b", "skipped": "no GPU"}])
    assert out[0]["value"] == 3.0 and isinstance(out[0]["value"], float)
    assert out[1] == {"name": "b", "skipped": "no GPU"}
    assert report.measured(out) == [out[0]]


def test_pivot_puts_figures_of_one_configuration_side_by_side():
    records = [
        rec("end_to_end", 10.0, batch_size=2),
        rec("compute_only", 12.0, batch_size=2),
        rec("data_wait_share", 5.0, "%", batch_size=2),
        rec("end_to_end", 18.0, batch_size=4),
        rec("compute_only", 20.0, batch_size=4),
    ]
    fields, columns, rows = report.pivot(records)
    assert fields == ["batch_size"]
    assert columns == ["end_to_end [clips/s]", "compute_only [clips/s]", "data_wait_share [%]"]
    assert rows == [["2", 10.0, 12.0, 5.0], ["4", 18.0, 20.0, None]]


def test_pivot_opens_a_new_row_for_a_repeated_figure():
    _, _, rows = report.pivot([rec("a", 1.0, b=1), rec("a", 2.0, b=1)])
    assert rows == [["1", 1.0], ["1", 2.0]]


@pytest.mark.parametrize(
    "value, text", [(0.0, "0"), (1234.5, "1234"), (12.345, "12.35"), (0.5, "0.5000"),
                    (1.5e-5, "1.500e-05"), (2.5e6, "2.500e+06")]
)
def test_format_value_gives_four_significant_digits(value, text):
    assert report.format_value(value) == text


def test_plot_series_groups_by_the_other_fields_and_drops_single_points():
    records = [
        rec("clips", 1.0, batch_size=1, backend="math"),
        rec("clips", 2.0, batch_size=2, backend="math"),
        rec("clips", 3.0, batch_size=1, backend="flash"),  # one point: not a line
        rec("share", 9.0, "%", batch_size=1),  # not a rate
        rec("share", 8.0, "%", batch_size=2),
    ]
    series = report.plot_series(records, "batch_size")
    assert series == {"clips/s": {"backend=math": [(1, 1.0), (2, 2.0)]}}
    assert report.plot_series(records, "workers") == {}


def test_plot_series_puts_figures_of_one_unit_together():
    # `bound` changes only along with the batch size: it must not split the lines
    records = [rec(name, v * b, batch_size=b, bound="data" if b > 2 else "compute")
               for b in (2, 4) for name, v in (("end_to_end", 1.0), ("compute_only", 2.0))]
    records.append(rec("tflops", 1.0, "TFLOP/s", batch_size=2))
    records.append(rec("tflops", 2.0, "TFLOP/s", batch_size=4))
    assert report.plot_series(records, "batch_size") == {
        "clips/s": {"end_to_end": [(2, 2.0), (4, 4.0)], "compute_only": [(2, 4.0), (4, 8.0)]},
        "TFLOP/s": {"tflops": [(2, 1.0), (4, 2.0)]},
    }


def test_write_plots_orders_models_by_size(tmp_path):
    records = [rec("clips", v, model=m) for m, v in
               [("mvd_student_large", 1.0), ("mvd_student_small", 3.0), ("mvd_student_base", 2.0)]]
    assert report._axis_order("model", [r["model"] for r in records]) == [
        "mvd_student_small", "mvd_student_base", "mvd_student_large"]
    files = report.write_plots("model", records, tmp_path)
    assert files == ["model-clips_s-vs-model.png"]
    assert (tmp_path / files[0]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def fake_results(gpu_name=""):
    step = dict(model="mvd_student_base", teachers="mae_teacher_base+videomae_teacher_base",
                clip="16x224", precision="bf16")
    loader = dict(clip="16x4@224", device="cpu")
    return {
        "step": {"status": "ok", "seconds": 1.0, "records": [
            rec("end_to_end", 380.0, batch_size=16, **step),
            rec("end_to_end", 420.0, batch_size=32, **step),
            rec("loader_over_compute", 1.7, "x", batch_size=16, **step),
            rec("loader_over_compute", 1.2, "x", batch_size=32, **step),
        ]},
        "model": {"status": "skipped", "reason": "no GPU"},
        "loader": {"status": "ok", "seconds": 1.0, "records": [
            rec("pretrain_speedup_vs_baseline", 5.0, "x", codec="vp9", teacher_size=224, **loader),
            rec("pretrain_speedup_vs_baseline", 4.5, "x", codec="vp9", teacher_size=196, **loader),
            rec("pretrain_speedup_vs_baseline", 1.4, "x", codec="h264", teacher_size=224,
                clip="8x4@112", device="cpu"),
        ]},
    }, {"gpu": {"name": gpu_name} if gpu_name else None}


def by_name(rows):
    return {t.name + ("/h264" if t.select.get("codec") == "h264" else ""): row
            for t, row in zip(targets.TARGETS, rows)}


def test_targets_are_judged_only_on_the_reference_configuration():
    rows = by_name(targets.evaluate(*fake_results("NVIDIA H100 80GB HBM3")))
    # the best batch size counts for the step rate, the worst for the loader's head room
    assert (rows["end_to_end"]["status"], rows["end_to_end"]["measured"]) == (targets.PASS, 420.0)
    assert (rows["loader_over_compute"]["status"],
            rows["loader_over_compute"]["measured"]) == (targets.FAIL, 1.2)
    assert rows["mfu_end_to_end"]["status"] == targets.NOT_MEASURED
    assert "no GPU" in rows["mfu"]["note"]
    # CPU loader figures are judged on the reference clip, whatever the GPU
    speedup = rows["pretrain_speedup_vs_baseline"]
    assert (speedup["status"], speedup["measured"]) == (targets.PASS, 4.5)
    assert "teacher_size=196" in speedup["note"]
    h264 = rows["pretrain_speedup_vs_baseline/h264"]
    assert (h264["status"], h264["measured"]) == (targets.INDICATIVE, 1.4)
    assert "8x4@112" in h264["note"]
    gpu_loader = rows["pretrain_clips_per_s/h264"]
    assert gpu_loader["status"] == targets.NOT_MEASURED
    assert "device=gpu" in gpu_loader["note"]

    rows = by_name(targets.evaluate(*fake_results("NVIDIA A100-SXM4-80GB")))
    assert rows["end_to_end"]["status"] == targets.INDICATIVE
    assert "on NVIDIA A100" in rows["end_to_end"]["note"]

    rows = by_name(targets.evaluate(*fake_results()))  # no GPU
    assert rows["end_to_end"]["status"] == targets.INDICATIVE
    assert rows["pretrain_speedup_vs_baseline"]["status"] == targets.PASS
    assert "needs a GPU; this run had none" in rows["pretrain_clips_per_s/h264"]["note"]


def test_the_demo_is_judged_on_the_mean_margin_and_on_never_falling_behind():
    margins = [18.8, 30.0, 5.0, -1.0]  # one run behind
    records = [rec("demo_margin_top1", m, "points", seed=i // 2, threads=1 + i % 2, budget="default")
               for i, m in enumerate(margins)]
    records.append(rec("demo_margin_top1", -50.0, "points", seed=0, threads=1, budget="quick"))  # not judged
    rows = [row for t, row in zip(targets.TARGETS, targets.evaluate({"demo": {"status": "ok", "records": records}},
                                                                    {"gpu": None})) if t.mode == "demo"]
    mean, lowest = rows
    assert mean["measured"] == pytest.approx(sum(margins) / 4) and mean["status"] == targets.PASS
    assert mean["note"].startswith("the mean of 4 figures (-1 to 30; lowest: seed=1, threads=2")
    assert (lowest["measured"], lowest["status"]) == (-1.0, targets.FAIL)
    records[3]["value"] = 0.0
    _, lowest = [row for t, row in zip(targets.TARGETS, targets.evaluate(
        {"demo": {"status": "ok", "records": records}}, {"gpu": None})) if t.mode == "demo"]
    assert lowest["status"] == targets.PASS  # level is not behind


def test_targets_say_why_a_figure_is_missing():
    rows = targets.evaluate({"step": {"status": "skipped", "reason": "no CUDA"}}, {"gpu": None})
    assert all(r["status"] == targets.NOT_MEASURED for r in rows)
    assert [r["note"] for r in rows if r["note"].startswith("`step`")] == \
        ["`step` skipped: no CUDA"] * 3
    assert all("not run" in r["note"] for r in rows if not r["note"].startswith("`step`"))


@pytest.fixture
def fake_modes(monkeypatch):
    """benchmarks.shard and benchmarks.demo return records; benchmarks.loader raises; the others
    are absent."""
    shard = types.ModuleType("benchmarks.shard")
    shard.run = lambda out_dir, *, quick: [
        rec("videos_per_s", v, "videos/s", workers=w, reencode=False)
        for w, v in [(1, 2.0), (2, 3.5)]
    ]
    loader = types.ModuleType("benchmarks.loader")

    def broken(out_dir, *, quick, device):
        raise RuntimeError("decoder exploded")

    loader.run = broken
    demo = types.ModuleType("benchmarks.demo")
    demo.run = lambda out_dir, *, quick, seeds=None, threads=None: [rec("demo_margin_curve_top1", 12.5, "points", seed=0)]
    monkeypatch.setitem(sys.modules, "benchmarks.demo", demo)
    monkeypatch.setitem(sys.modules, "benchmarks.shard", shard)
    monkeypatch.setitem(sys.modules, "benchmarks.loader", loader)


def test_cli_reports_a_failing_mode_and_keeps_the_others(fake_modes, tmp_path, capsys):
    assert cli.main(["shard", "--quick", "--out", str(tmp_path)]) == 0
    assert cli.main(["loader", "--quick", "--out", str(tmp_path / "l")]) == 1
    data = json.loads((tmp_path / "l" / "report.json").read_text())
    assert data["modes"]["loader"]["status"] == "failed"
    assert "decoder exploded" in data["modes"]["loader"]["error"]
    assert "decoder exploded" in (tmp_path / "l" / "report.md").read_text()

    data = json.loads((tmp_path / "report.json").read_text())
    assert data["command"] == "mvd-bench shard --quick --out " + str(tmp_path)
    assert data["config"] == {"mode": "shard", "modes": ["shard"], "device": "cpu",
                              "quick": True, "out": str(tmp_path), "work": None}
    records = data["modes"]["shard"]["records"]
    assert [r["value"] for r in records] == [2.0, 3.5]
    assert data["modes"]["shard"]["plots"] == ["shard-videos_s-vs-workers.png"]
    assert (tmp_path / "shard-videos_s-vs-workers.png").exists()
    assert "| workers | reencode | videos_per_s [videos/s] |" in (tmp_path / "report.md").read_text()


def test_cli_skips_device_modes_on_gpu_without_cuda(fake_modes, tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cli.main(["all", "--device", "gpu", "--quick", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "report.json").read_text())
    statuses = {m: r["status"] for m, r in data["modes"].items()}
    assert statuses == {"shard": "ok", "loader": "skipped", "model": "skipped", "step": "skipped",
                        "demo": "ok"}  # the demo trains on whatever device there is
    assert "no CUDA device" in data["modes"]["step"]["reason"]
    assert "No GPU was visible" in (tmp_path / "report.md").read_text()


def test_report_json_refuses_non_finite_numbers(tmp_path):
    with pytest.raises(ValueError):
        report.write_report({"x": math.nan}, tmp_path)
