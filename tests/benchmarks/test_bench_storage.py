"""`mvd-bench storage --quick` for real: the pretrain loader from a local S3 server (moto,
127.0.0.1) and from the same shards on disk, interleaved in one run, with their ratio and the
target row."""

import json

import pytest

from benchmarks import cli, targets


@pytest.mark.slow
def test_quick_storage_measures_s3_beside_disk_and_reports_the_ratio(tmp_path):
    pytest.importorskip("s3fs", reason="the storage mode reads s3:// through s3fs (dev extra)")
    pytest.importorskip("moto.server", reason="the storage mode starts moto's S3 server (dev extra)")
    out = tmp_path / "out"
    assert cli.main(["storage", "--quick", "--out", str(out)]) == 0
    data = json.loads((out / "report.json").read_text())
    records = data["modes"]["storage"]["records"]
    rates = {(r["source"], r["output"]): r["value"] for r in records if r["name"] == "pretrain_clips_per_s"}
    assert sorted(rates) == [("disk", "float32"), ("disk", "uint8"), ("s3", "float32"), ("s3", "uint8")]
    assert all(v > 0 for v in rates.values())
    for output in ("uint8", "float32"):
        ratio = next(r["value"] for r in records if r["name"] == "s3_over_disk" and r["output"] == output)
        assert ratio == pytest.approx(rates[("s3", output)] / rates[("disk", output)])
    row = next(t for t in data["targets"] if t["what"].startswith("Pretrain loader from a local S3"))
    assert row["status"] == targets.INDICATIVE  # the quick clip is not the reference clip
    assert "## storage" in (out / "report.md").read_text()
