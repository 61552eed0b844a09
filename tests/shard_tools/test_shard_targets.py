"""mvd-shard decides at shard time what the target decoder takes: stream facts in every sample's
json, streams it does not take re-encoded (or rejected with the property named), the others
copied byte for byte, the manifest's stream summary."""

from __future__ import annotations

import json
import re
import shlex
import tarfile
from pathlib import Path

import av
import pytest
from shard_videos import write_video

from shard_tools.build import BuildOptions
from shard_tools.cli import main
from shard_tools.manifest import make_manifest, write_manifest
from shard_tools.parts import Part
from shard_tools.probe import probe_video
from shard_tools.sample import VideoInfo, sample_members, split_member_name
from shard_tools.streams import count_stream, empty_summary, merge_summaries
from shard_tools.verify import verify_shards
from shard_tools.writer import ShardWriter, shard_name
from video_caps.decoders import DEFAULT_TARGET, FORMAT, TOO_SMALL, StreamFacts, decoder, kinds_refusals, refusal

# name -> (encoder, width, height, pix_fmt, the property NVDEC on Ampere/Hopper refuses, or None)
STREAMS = {
    "h264_444.mp4": ("libx264", 64, 48, "yuv444p", FORMAT),
    "h264_422.mp4": ("libx264", 64, 48, "yuv422p", FORMAT),
    "h264_10bit.mp4": ("libx264", 64, 48, "yuv420p10le", FORMAT),
    "vp9_96.webm": ("libvpx-vp9", 96, 96, "yuv420p", TOO_SMALL),
    "h264_32.mp4": ("libx264", 32, 32, "yuv420p", TOO_SMALL),
    "h264_ok.mp4": ("libx264", 64, 48, "yuv420p", None),
    "vp9_ok.webm": ("libvpx-vp9", 128, 128, "yuv420p", None),
}
FRAMES = 6


@pytest.fixture(scope="module")
def streams(tmp_path_factory) -> tuple[Path, Path]:
    """A folder of the streams above and a list file over it (label = position % 2)."""
    root = tmp_path_factory.mktemp("target_streams")
    lines = []
    for i, (name, (encoder, w, h, pix_fmt, _)) in enumerate(STREAMS.items()):
        write_video(root / "v" / name, encoder, FRAMES, w, h, pix_fmt=pix_fmt, gop=4)
        lines.append(f"{name} {i % 2}")
    (root / "list.txt").write_text("\n".join(lines) + "\n")
    return root / "v", root / "list.txt"


def _shard(videos: Path, list_file: Path, out: Path, *flags: str) -> dict:
    assert main(["list", "--root", str(videos), "--list", str(list_file), "--out", str(out), "--workers", "1",
                 "--no-progress", *flags]) == 0
    return json.loads((out / "manifest.json").read_text())


def _samples(out: Path, manifest: dict) -> dict[str, tuple[dict, bytes]]:
    """source -> (json, video bytes) of every packed sample."""
    found = {}
    for shard in manifest["shards"]:
        members: dict[str, dict[str, bytes]] = {}
        with tarfile.open(out / shard["name"]) as tf:
            for m in tf:
                key, ext = split_member_name(m.name)
                members.setdefault(key, {})[ext] = tf.extractfile(m).read()
        for parts in members.values():
            info = json.loads(parts.pop("json"))
            video = [v for ext, v in parts.items() if ext not in ("cls", "meta")]
            found[info["source"]] = (info, video[0])
    return found


def test_probe_records_the_stream_facts_pyav_reports(streams):
    videos, _ = streams
    for name, (_, w, h, pix_fmt, _) in STREAMS.items():
        facts = probe_video(videos / name).info.stream
        with av.open(str(videos / name)) as c:  # independent: the container's own view
            ctx = c.streams.video[0].codec_context
            packets = [p for p in c.demux(video=0) if p.size]
        order = sorted(p.pts for p in packets)  # display order
        starts = sorted(order.index(p.pts) for p in packets if p.is_keyframe) + [len(order)]
        assert (facts.width, facts.height, facts.pix_fmt, facts.num_frames) == (w, h, pix_fmt, FRAMES)
        assert facts.profile == ctx.profile and facts.codec == ctx.codec.canonical_name
        assert facts.bit_depth == (10 if "10" in pix_fmt else 8)
        assert facts.chroma == {"yuv444p": "4:4:4", "yuv422p": "4:2:2"}.get(pix_fmt, "4:2:0")
        assert facts.max_keyframe_interval == max(b - a for a, b in zip(starts, starts[1:]))
        assert not facts.vfr
        assert facts.coded_width >= w and facts.coded_height >= h


def test_every_stream_the_gpu_default_does_not_take_is_reencoded_and_the_rest_copied(streams, tmp_path):
    videos, list_file = streams
    m = _shard(videos, list_file, tmp_path / "out")
    target = decoder(DEFAULT_TARGET)
    samples = _samples(tmp_path / "out", m)
    assert set(samples) == set(STREAMS) and not m["rejected"]
    for name, (_, w, h, _, refused) in STREAMS.items():
        info, video = samples[name]
        facts = StreamFacts.from_json(info["stream"])
        assert refusal(target, facts) is None, name
        if refused is None:
            assert video == (videos / name).read_bytes(), f"{name} must be copied byte for byte"
        else:
            assert (facts.codec, facts.chroma, facts.bit_depth) == ("h264", "4:2:0", 8)
            assert facts.width % 2 == 0 and facts.height % 2 == 0
            assert facts.width >= min(w, 48) and facts.width / facts.height == pytest.approx(w / h, rel=0.05)
            assert info["num_frames"] == FRAMES
    assert m["streams"]["target"] == DEFAULT_TARGET
    assert m["streams"]["reencoded"] == {FORMAT: 3, TOO_SMALL: 2}
    assert not kinds_refusals(target, m["streams"]["kinds"])
    assert sum(m["streams"]["pix_fmts"].values()) == len(STREAMS)
    assert main(["verify", str(tmp_path / "out")]) == 0


def test_reject_unsupported_names_the_property(streams, tmp_path):
    videos, list_file = streams
    m = _shard(videos, list_file, tmp_path / "out", "--reject-unsupported")
    reasons = {r["path"]: r["reason"] for r in m["rejected"]}
    assert set(reasons) == {n for n, s in STREAMS.items() if s[4] is not None}
    assert reasons["h264_444.mp4"].startswith("not taken by the target decoder: H.264 High 4:4:4 Predictive "
                                              "(yuv444p)")
    assert "NVDEC on Ampere/Hopper decodes H.264 as 8-bit 4:2:0 only" in reasons["h264_444.mp4"]
    assert "yuv422p" in reasons["h264_422.mp4"] and "yuv420p10le" in reasons["h264_10bit.mp4"]
    assert "decodes VP9 from 128x128" in reasons["vp9_96.webm"]
    assert "decodes H.264 from 48x16" in reasons["h264_32.mp4"]
    assert m["samples"] == 2 and not m["streams"]["reencoded"]


def test_max_gop_reencodes_streams_with_key_frames_further_apart(streams, tmp_path):
    videos, _ = streams
    (tmp_path / "one.txt").write_text("h264_ok.mp4 0\nvp9_ok.webm 1\n")
    m = _shard(videos, tmp_path / "one.txt", tmp_path / "out", "--max-gop", "2")
    assert m["streams"]["reencoded"] == {"keyframe interval": 2}
    for info, _ in _samples(tmp_path / "out", m).values():
        assert info["stream"]["max_keyframe_interval"] <= 2
    assert m["options"]["max_gop"] == 2


def test_the_pyav_target_copies_every_decodable_stream(streams, tmp_path):
    videos, list_file = streams
    m = _shard(videos, list_file, tmp_path / "out", "--target", "pyav")
    for name, (_, video) in _samples(tmp_path / "out", m).items():
        assert video == (videos / name).read_bytes()
    assert not m["streams"]["reencoded"] and "target" not in m["options"]


def _facts(codec="h264", chroma="4:2:0", depth=8, w=640, h=480) -> StreamFacts:
    return StreamFacts(codec, None, "x", chroma, depth, w, h, w, h, 25.0, 10, 10, False, False)


def test_stream_summaries_of_parts_merge_into_the_whole():
    a, b, whole = empty_summary(), empty_summary(), empty_summary()
    for i, f in enumerate([_facts(w=320, h=240), _facts("vp9", w=1280, h=720), _facts(w=64, h=48)]):
        count_stream(a if i % 2 else b, f, FORMAT if i == 2 else None)
        count_stream(whole, f, FORMAT if i == 2 else None)
    assert merge_summaries([a, b]) == whole != empty_summary()


def test_verify_counts_what_the_gpu_cannot_take_and_its_fix_command_makes_a_folder_it_takes(streams, tmp_path,
                                                                                            capsys):
    videos, list_file = streams
    _shard(videos, list_file, tmp_path / "as_is", "--target", "pyav")
    report = verify_shards(tmp_path / "as_is")
    assert report.ok and report.not_taken == {FORMAT: 3, TOO_SMALL: 2} and report.probed == 0
    assert main(["verify", str(tmp_path / "as_is")]) == 0  # reported, not failed, without --target
    assert main(["verify", str(tmp_path / "as_is"), "--target", DEFAULT_TARGET]) == 1
    fix = shlex.split(capsys.readouterr().out.rsplit("fix: ", 1)[1])
    assert fix[:2] == ["mvd-shard", "list"] and fix[fix.index("--target") + 1] == DEFAULT_TARGET
    assert main(fix[1:] + ["--workers", "1", "--no-progress"]) == 0
    fixed = Path(fix[fix.index("--out") + 1])
    assert fixed == tmp_path / f"as_is-{DEFAULT_TARGET}"
    assert main(["verify", str(fixed), "--target", DEFAULT_TARGET]) == 0


def test_verify_probes_folders_made_before_stream_facts_were_recorded(streams, tmp_path):
    videos, _ = streams
    out = tmp_path / "old"
    out.mkdir()
    writer = ShardWriter(out, shard_name(0))
    for i, name in enumerate(("h264_444.mp4", "h264_ok.mp4")):
        info = probe_video(videos / name).info
        old = VideoInfo(info.num_frames, info.fps, info.width, info.height, info.codec)  # no stream facts
        writer.add(sample_members(f"s{i}", "mp4", (videos / name).read_bytes(), old, 0, "a", name))
    done = writer.finish()
    shard = {"name": done.name, "index": done.index, "samples": 2, "bytes": done.bytes, "sha256": done.sha256,
             "codecs": {"h264": 2}}
    write_manifest(out, make_manifest("list", ["a"], [shard], [], {}))
    report = verify_shards(out)
    assert report.ok and report.probed == 2 and report.not_taken == {FORMAT: 1}
    assert "yuv444p" in report.not_taken_examples[0]


def test_the_summary_table_counts_what_was_reencoded_and_why(streams, tmp_path, capsys):
    videos, list_file = streams
    assert main(["list", "--root", str(videos), "--list", str(list_file), "--out", str(tmp_path / "out"),
                 "--workers", "1"]) == 0
    table = capsys.readouterr().out
    assert re.search(rf"re-encoded for {DEFAULT_TARGET}\s*│\s*5", table)
    assert re.search(r"chroma/bit depth\s*│\s*3", table) and re.search(r"too small\s*│\s*2", table)


def test_runs_made_as_before_keep_their_fingerprint_options():
    """The pyav target (streams packed as they came, as before --target) adds nothing to the
    options a run's fingerprint is made of, so such runs resume; the others record theirs."""
    assert set(BuildOptions().output_options()) == {"seed", "shard_size_mb", "shard_samples", "reencode"}
    gpu = BuildOptions(target=DEFAULT_TARGET, reject_unsupported=True, max_gop=32).output_options()
    assert (gpu["target"], gpu["reject_unsupported"], gpu["max_gop"]) == (DEFAULT_TARGET, True, 32)
    assert "part" not in BuildOptions(part=Part(1, 3)).output_options()  # the parts share one plan
