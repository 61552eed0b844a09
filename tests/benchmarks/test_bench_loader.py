"""benchmarks.loader at its smallest real configuration: the uint8 and float loaders are timed
beside decoding alone (the loader's own pipeline stopped after the decoder), with their ratios."""

from dataclasses import replace

import pytest

from benchmarks import loader, report

TINY = dict(num_videos=8, num_frames=24, width=96, height=64, clip_frames=8, sampling_rate=2,
            input_size=64, teacher_sizes=(64,), batch_size=2, batches=2, rounds=1,
            codecs=("vp9",), baseline=False)


def test_uint8_float_and_decode_alone_are_measured_side_by_side(tmp_path, monkeypatch):
    monkeypatch.setattr(loader, "QUICK", replace(loader.QUICK, **TINY))
    records = report.validate_records("loader", loader.run(tmp_path, device="cpu", quick=True))
    by = {}
    for rec in records:
        by.setdefault(rec["name"], []).append(rec)
    rates = {r["output"]: r["value"] for r in by["pretrain_clips_per_s"]}
    assert set(rates) == {"float32", "uint8"}
    (decode,) = by["decode_alone_clips_per_s"]
    assert decode["loader"] == "decode alone" and decode["decoder"] == "dali"
    ratios = {r["output"]: r["value"] for r in by["pretrain_over_decode_alone"]}
    for output in ("float32", "uint8"):
        assert ratios[output] == pytest.approx(rates[output] / decode["value"])
    cpu = {r["output"]: r["value"] for r in by["pretrain_cpu_ms_per_clip"]}
    (decode_ms,) = by["decode_alone_cpu_ms_per_clip"]
    for r in by["pretrain_over_decode_alone_cpu"]:
        assert r["value"] == pytest.approx(decode_ms["value"] / cpu[r["output"]])


def test_the_decoder_sweep_runs_cpu_pipelines_and_skips_the_nvdec_points(tmp_path, monkeypatch):
    monkeypatch.setattr(loader, "QUICK", replace(loader.QUICK, **TINY, sweep=(1, 2, 64)))
    records = report.validate_records("loader", loader.run(tmp_path, device="cpu", quick=True))
    sweep = [r for r in records if r["name"] == "decoder_sweep_clips_per_s"]
    assert {(r["gpu_decoders"], r["output"]) for r in sweep} == {
        (n, o) for n in (1, 2, 64) for o in ("uint8", "float32")}
    measured = {r["gpu_decoders"] for r in sweep if "value" in r}
    assert measured == {1, 2}
    (skipped,) = {r["skipped"] for r in sweep if "value" not in r}
    assert "--device gpu" in skipped
