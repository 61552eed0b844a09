"""benchmarks.shard at its smallest: copy and re-encode records for the GPU target, the K400
projection, and AVA's per-keyframe vs one-pass cutting (whose clips it checks are the same)."""

from dataclasses import replace

from benchmarks import shard


def test_shard_bench_records_copy_reencode_and_the_ava_cut_speedup(tmp_path, monkeypatch):
    monkeypatch.setattr(shard, "QUICK", replace(shard.QUICK, num_videos=2, num_frames=12, width=64, height=48))
    monkeypatch.setattr(shard, "AVA_QUICK", replace(shard.AVA_QUICK, seconds=3, width=64, height=48,
                                                    long_gop_size=(96, 64), long_gop_short_side=32))
    records = shard.run(tmp_path, quick=True)
    by = {(r["name"], r.get("mode", r.get("cut"))): r for r in records}
    for mode in ("copy", "reencode"):
        per_core = by[("shard_videos_per_s_per_core", mode)]
        assert per_core["value"] * per_core["workers"] == by[("shard_videos_per_s", mode)]["value"]
        hours = by[("k400_hours_on_64_cores", mode)]["value"]
        assert abs(hours - 240_000 / (per_core["value"] * 64) / 3600) < 1e-9
    assert by[("shard_videos_per_s", "reencode")]["reencode"].startswith("h264 same size")
    for movie in ("vp9 64x48, key frame every 12 frames", "h264 96x64, key frame every 120 frames"):
        ava = {(r["name"], r.get("cut")): r for r in records if r.get("movie") == movie}
        alone = ava[("ava_cut_keyframes_per_s", "per keyframe")]["value"]
        one_pass = ava[("ava_cut_keyframes_per_s", "one pass per movie")]["value"]
        assert abs(ava[("ava_one_pass_speedup", None)]["value"] - one_pass / alone) < 1e-9
        assert ava[("ava_one_pass_speedup", None)]["keyframes"] == 2
        # one pass decodes each frame at most once: at most the movie's 3 s
        decoded = {cut: ava[("ava_cut_frames_decoded_per_keyframe", cut)]["value"]
                   for cut in ("per keyframe", "one pass per movie")}
        assert decoded["one pass per movie"] * 2 <= 3 * 12 < decoded["per keyframe"] * 2
