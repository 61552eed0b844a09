"""`python -m benchmarks.teacher_precision`: each teacher precision's targets against an fp32
forward, on the tiny teachers (the mode's CLI, in-process)."""

import json

import pytest

from benchmarks import teacher_precision


@pytest.mark.slow  # eight tiny teacher forwards, a few seconds on 2 cores
def test_tiny_run_reports_every_choice_and_fp32_weights_err_less_than_bf16(tmp_path):
    assert teacher_precision.main(["--out", str(tmp_path), "--sizes", "tiny", "--repeats", "1",
                                   "--commit", "abc123"]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    rows = {(r["kind"], r["choice"]): r for r in report["rows"]}
    for kind in ("image", "video"):
        assert rows[(kind, "fp32 (reference)")]["rel_rms"] == 0.0
        fp32_weights = rows[(kind, "bf16, teacher weights fp32")]
        bf16_weights = rows[(kind, "bf16, teacher weights bf16")]
        release = rows[(kind, "fp16, teacher weights fp32 (the release)")]
        assert 0 < release["rel_rms"] < fp32_weights["rel_rms"] < bf16_weights["rel_rms"]
        assert all(r["seconds"] > 0 for r in (fp32_weights, bf16_weights, release))
    assert "abc123" in (tmp_path / "report.md").read_text()
