"""mvd-demo's logic end to end with its --quick budgets (seconds): data, both stage-1 teachers,
distillation, both fine-tunings, evaluation, the table and summary.json. The full demo (several
minutes a seed; the distilled student must beat scratch on every seed) is the benchmark
`mvd-bench demo`, too slow for CI; tests/benchmarks runs that mode on a shrunk budget."""

import json

import pytest

from mvd.demo import main


@pytest.mark.slow
def test_quick_demo_runs_every_stage_and_writes_the_summary(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["--out", str(out), "--quick"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    for name in ("distilled", "scratch"):
        assert 0.0 <= summary[name]["top1"] <= 100.0 and 0.0 <= summary[name]["top5"] <= 100.0
        assert summary[name]["steps"] == summary["distilled"]["steps"]  # the same budget
        assert summary[name]["heldout_videos"] == summary["budget"]["heldout"]
    for stage in ("image_teacher", "video_teacher", "student", "distilled", "scratch"):
        assert (out / stage / "model.safetensors").is_file()
        assert (out / stage / "config.yaml").is_file()
    # stage 2 loaded the stage-1 runs; the distilled fine-tuning started from stage 2
    student_cfg = (out / "student" / "config.yaml").read_text()
    assert str(out / "image_teacher") in student_cfg and str(out / "video_teacher") in student_cfg
    assert f"init: {out / 'student'}" in (out / "distilled" / "config.yaml").read_text()
    assert "init: ''" in (out / "scratch" / "config.yaml").read_text()
    captured = capsys.readouterr()
    assert "distilled" in captured.err and "scratch" in captured.err and str(out) in captured.err
    assert json.loads(captured.out.strip().splitlines()[-1])["out"] == str(out)


def test_every_stage_runs_on_the_thread_count_asked_for(tmp_path):
    from dataclasses import replace

    from mvd.config import load_config
    from mvd.demo import TINY, Budget, stages

    for threads in (0, 2):
        for stage in stages(tmp_path, replace(Budget(), threads=threads)):
            cfg = load_config(TINY / f"{stage.config}.yaml", stage.overrides)
            assert cfg.dist.cpu_threads == threads, stage.name


def test_a_negative_thread_count_is_refused_before_any_work(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--out", str(tmp_path / "demo"), "--threads", "-1"])
    assert exc.value.code == 2 and "--threads must be >= 0, got -1" in capsys.readouterr().err
    assert not (tmp_path / "demo").exists()
