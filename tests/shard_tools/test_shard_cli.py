import json

import pytest

from shard_tools.cli import build_parser, main


def test_every_subcommand_is_there():
    for command in ("kinetics", "ssv2", "list", "ucf101", "hmdb51", "synth", "ava", "verify"):
        with pytest.raises(SystemExit) as exit_info:
            build_parser().parse_args([command, "--help"])
        assert exit_info.value.code == 0


def test_common_defaults():
    args = build_parser().parse_args(["list", "--root", "r", "--list", "l", "--out", "o"])
    assert args.shard_size_mb == 1024 and args.seed == 0 and args.workers >= 1 and not args.reencode


def test_reencode_flags_without_reencode_are_an_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["list", "--root", "r", "--list", "l", "--out", "o", "--short-side", "128"])
    assert exit_info.value.code == 2
    assert "--short-side only apply with --reencode" in capsys.readouterr().err


def test_bad_inputs_give_exit_2_and_name_the_file(tmp_path, capsys):
    assert main(["list", "--root", str(tmp_path), "--list", str(tmp_path / "absent.txt"),
                 "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    assert "absent.txt" in capsys.readouterr().err


def test_synth_cli_writes_a_manifest_and_prints_a_summary(tmp_path, capsys):
    out = tmp_path / "s"
    assert main(["synth", "--out", str(out), "--num-videos", "4", "--num-frames", "4", "--width", "32",
                 "--height", "16", "--num-classes", "4", "--workers", "1", "--codec", "mjpeg"]) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["samples"] == 4 and m["codecs"] == {"mjpeg": 4}
    summary = capsys.readouterr().out
    assert "samples" in summary and "videos/s" in summary


def test_kinetics_cli_end_to_end_with_rejections_in_the_summary(tmp_path, capsys):
    from shard_videos import write_video

    videos = tmp_path / "k400"
    write_video(videos / "abseiling" / "abc_000001_000011.mp4", "libx264", 6, 32, 24)
    (videos / "zumba").mkdir()
    (videos / "zumba" / "def_000000_000010.mp4").write_bytes(b"")
    csv = tmp_path / "k.csv"
    csv.write_text("label,youtube_id,time_start,time_end,split\nabseiling,abc,1,11,train\n"
                   "zumba,def,0,10,train\nzumba,ghi,0,10,train\n")
    out = tmp_path / "out"
    assert main(["kinetics", "--videos", str(videos), "--csv", str(csv), "--out", str(out), "--workers", "1"]) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["classes"] == ["abseiling", "zumba"] and m["samples"] == 1
    assert sorted(r["reason"] for r in m["rejected"]) == ["empty file", "missing file"]
    summary = capsys.readouterr().out
    assert "empty file" in summary and "missing file" in summary
