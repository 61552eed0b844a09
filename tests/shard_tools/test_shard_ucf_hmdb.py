"""The official UCF101 (classInd + train/test lists) and HMDB51 (per-class split files) inputs."""

import json
import tarfile

import pytest
from shard_videos import write_video

from shard_tools.cli import build_parser, main
from shard_tools.sources import SourceError, hmdb51_sources, ucf101_classes, ucf101_sources

CLASS_IND = "1 ApplyEyeMakeup\r\n2 Archery\r\n3 HandstandPushups\r\n"  # the official files have CRLF endings


def touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def shard_labels(out):
    """{source: (cls, label_name)} read back from every shard of ``out``."""
    found = {}
    for shard in sorted(out.glob("shard-*.tar")):
        with tarfile.open(shard) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        for name, data in members.items():
            if name.endswith(".json"):
                info = json.loads(data)
                found[info["source"]] = (int(members[name[:-5] + ".cls"]), info["label_name"])
    return found


@pytest.fixture
def ucf(tmp_path):
    videos = tmp_path / "UCF-101"
    for rel in ("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi", "Archery/v_Archery_g01_c01.avi",
                "HandstandPushups/v_HandStandPushups_g01_c01.avi"):
        touch(videos / rel)
    (tmp_path / "classInd.txt").write_text(CLASS_IND)
    return tmp_path


def test_ucf101_trainlist_labels_are_one_based_and_bad_lines_are_rejected_with_file_and_line(ucf):
    (ucf / "trainlist01.txt").write_text(
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\r\n"
        "HandstandPushups/v_HandStandPushups_g01_c01.avi 3\r\n"
        "\r\n"
        "Archery/v_Archery_g01_c01.avi 4\r\n"
        "Archery/v_Archery_g01_c01.avi 0\r\n"
        "Archery/v_Archery_g09_c09.avi 2\r\n"
        "Archery/v_Archery_g01_c01.avi 2 extra\r\n"
        "Archery/v_Archery_g01_c01.avi two\r\n")
    s = ucf101_sources(ucf / "UCF-101", ucf / "classInd.txt", ucf / "trainlist01.txt")
    assert s.dataset == "ucf101" and s.classes == ["ApplyEyeMakeup", "Archery", "HandstandPushups"]
    assert [(r.source, r.label, r.label_name) for r in s.records] == [
        ("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi", 0, "ApplyEyeMakeup"),
        ("HandstandPushups/v_HandStandPushups_g01_c01.avi", 2, "HandstandPushups")]
    assert [(r.path, r.reason) for r in s.rejected] == [
        ("Archery/v_Archery_g01_c01.avi", "unknown label: label 4 outside 1..3 of classInd.txt (trainlist01.txt:4)"),
        ("Archery/v_Archery_g01_c01.avi", "unknown label: label 0 outside 1..3 of classInd.txt (trainlist01.txt:5)"),
        ("Archery/v_Archery_g09_c09.avi", "missing file"),
        ("trainlist01.txt:7", "malformed entry: expected '<Class>/<video> [<1-based label>]', "
                              "got 'Archery/v_Archery_g01_c01.avi 2 extra'"),
        ("trainlist01.txt:8", "malformed entry: expected '<Class>/<video> [<1-based label>]', "
                              "got 'Archery/v_Archery_g01_c01.avi two'")]


def test_ucf101_testlist_takes_the_class_from_the_directory_name(ucf):
    (ucf / "testlist01.txt").write_text(
        "Archery/v_Archery_g01_c01.avi\nHandstandPushups/v_HandStandPushups_g01_c01.avi\n"
        "Juggling/v_Juggling_g01_c01.avi\nv_Archery_g01_c01.avi\n")
    s = ucf101_sources(ucf / "UCF-101", ucf / "classInd.txt", ucf / "testlist01.txt")
    assert [(r.source, r.label) for r in s.records] == [
        ("Archery/v_Archery_g01_c01.avi", 1), ("HandstandPushups/v_HandStandPushups_g01_c01.avi", 2)]
    assert [(r.path, r.reason) for r in s.rejected] == [
        ("Juggling/v_Juggling_g01_c01.avi",
         "unknown label: class directory 'Juggling' not in classInd.txt (testlist01.txt:3)"),
        ("v_Archery_g01_c01.avi",
         "unknown label: no <Class>/ directory in the path to take the class from (testlist01.txt:4)")]


@pytest.mark.parametrize("text, message", [
    ("1 ApplyEyeMakeup\n2\n", r"classInd.txt:2: expected '<1-based index> <ClassName>', got '2'"),
    ("1 A\nx B\n", r"classInd.txt:2: expected"),
    ("1 A\n1 B\n", r"classInd.txt:2: index 1 appears twice"),
    ("1 A\n2 A\n", r"classInd.txt:2: class 'A' appears twice"),
    ("0 A\n1 B\n", r"classInd.txt: index 0 found, but indices are 1-based"),
    ("1 A\n3 C\n", r"classInd.txt: indices must be 1..2 without gaps; missing \[2\]"),
    ("\n", r"classInd.txt lists no classes"),
])
def test_ucf101_bad_class_index_is_an_error_naming_file_and_line(tmp_path, text, message):
    (tmp_path / "classInd.txt").write_text(text)
    with pytest.raises(SourceError, match=message):
        ucf101_classes(tmp_path / "classInd.txt")


def test_ucf101_class_index_order_is_the_index_not_the_line_order(tmp_path):
    (tmp_path / "classInd.txt").write_text("2 Basketball\n1 Archery\n")
    assert ucf101_classes(tmp_path / "classInd.txt") == ["Archery", "Basketball"]


def hmdb_splits(root, split_lines):
    """Write ``<class>_test_split<N>.txt`` files: {(class, N): [lines]}."""
    splits = root / "testTrainMulti_7030_splits"
    splits.mkdir(parents=True)
    for (cls, n), lines in split_lines.items():
        (splits / f"{cls}_test_split{n}.txt").write_text("".join(f"{line} \n" for line in lines))
    return splits


def test_hmdb51_picks_the_subset_of_one_split_with_sorted_class_names(tmp_path):
    videos = tmp_path / "hmdb51"
    for rel in ("brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_0.avi", "brush_hair/b_1.avi",
                "clap/#20_Rhythm_clap_u_nm_np1_fr_goo_0.avi", "clap/c_2.avi", "clap/c_3.avi"):
        touch(videos / rel)
    splits = hmdb_splits(tmp_path, {
        ("clap", 1): ["#20_Rhythm_clap_u_nm_np1_fr_goo_0.avi 1", "c_2.avi 2", "c_3.avi 0", "c_4.avi 1", "c_5.avi 7",
                      "c_6.avi"],
        ("brush_hair", 1): ["April_09_brush_hair_u_nm_np1_ba_goo_0.avi 1", "b_1.avi 2"],
        ("brush_hair", 2): ["April_09_brush_hair_u_nm_np1_ba_goo_0.avi 2", "b_1.avi 1"],
        ("clap", 2): ["c_2.avi 1"],
    })
    train = hmdb51_sources(videos, splits, 1, "train")
    assert train.dataset == "hmdb51" and train.classes == ["brush_hair", "clap"]
    assert [(r.source, r.label, r.label_name) for r in train.records] == [
        ("brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_0.avi", 0, "brush_hair"),
        ("clap/#20_Rhythm_clap_u_nm_np1_fr_goo_0.avi", 1, "clap")]
    assert [(r.path, r.reason) for r in train.rejected] == [
        ("clap/c_4.avi", "missing file"),
        ("clap_test_split1.txt:5", "malformed entry: expected '<video>.avi <0|1|2>', got 'c_5.avi 7'"),
        ("clap_test_split1.txt:6", "malformed entry: expected '<video>.avi <0|1|2>', got 'c_6.avi'")]
    test = hmdb51_sources(videos, splits, 1, "test")
    assert [(r.source, r.label) for r in test.records] == [("brush_hair/b_1.avi", 0), ("clap/c_2.avi", 1)]
    split2 = hmdb51_sources(videos, splits, 2, "train")
    assert [(r.source, r.label) for r in split2.records] == [("brush_hair/b_1.avi", 0), ("clap/c_2.avi", 1)]


def test_hmdb51_without_split_files_or_with_a_bad_subset_is_an_error(tmp_path):
    (tmp_path / "v").mkdir()
    splits = hmdb_splits(tmp_path, {("clap", 1): ["a.avi 1"]})
    with pytest.raises(SourceError, match=r"has no <class>_test_split3.txt files"):
        hmdb51_sources(tmp_path / "v", splits, 3, "train")
    with pytest.raises(SourceError, match="subset must be one of"):
        hmdb51_sources(tmp_path / "v", splits, 1, "val")
    with pytest.raises(SourceError, match="splits directory .*nowhere does not exist"):
        hmdb51_sources(tmp_path / "v", tmp_path / "nowhere", 1, "train")


def test_ucf101_and_hmdb51_subcommands_shard_real_videos_with_zero_based_labels(tmp_path, capsys):
    ucf = tmp_path / "ucf"
    for rel in ("Archery/v_Archery_g01_c01.avi", "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi"):
        write_video(ucf / "UCF-101" / rel, "mjpeg", 3, 32, 24)
    (ucf / "classInd.txt").write_text(CLASS_IND)
    (ucf / "trainlist01.txt").write_text("Archery/v_Archery_g01_c01.avi 2\n"
                                         "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi 1\n"
                                         "Archery/v_Archery_g02_c01.avi 2\n")
    out = tmp_path / "ucf_shards"
    argv = ["ucf101", "--videos", str(ucf / "UCF-101"), "--class-index", str(ucf / "classInd.txt"),
            "--split-file", str(ucf / "trainlist01.txt"), "--out", str(out), "--workers", "1"]
    assert main(argv) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["dataset"] == "ucf101" and m["classes"] == ["ApplyEyeMakeup", "Archery", "HandstandPushups"]
    assert m["samples"] == 2 and m["rejected"] == [{"path": "Archery/v_Archery_g02_c01.avi", "reason": "missing file"}]
    assert m["options"]["split_file"] == str((ucf / "trainlist01.txt").resolve())
    assert shard_labels(out) == {"Archery/v_Archery_g01_c01.avi": (1, "Archery"),
                                 "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi": (0, "ApplyEyeMakeup")}
    assert main(argv) == 0  # re-running resumes into the same manifest
    assert json.loads((out / "manifest.json").read_text()) == m
    assert "missing file" in capsys.readouterr().out

    hmdb = tmp_path / "hmdb"
    write_video(hmdb / "videos" / "ride_bike" / "r_0.avi", "mjpeg", 3, 32, 24)
    write_video(hmdb / "videos" / "clap" / "c_0.avi", "mjpeg", 3, 32, 24)
    splits = hmdb_splits(hmdb, {("ride_bike", 1): ["r_0.avi 2"], ("clap", 1): ["c_0.avi 1"]})
    out = tmp_path / "hmdb_shards"
    assert main(["hmdb51", "--videos", str(hmdb / "videos"), "--splits-dir", str(splits), "--split", "1",
                 "--subset", "test", "--out", str(out), "--workers", "1", "--no-progress"]) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["dataset"] == "hmdb51" and m["classes"] == ["clap", "ride_bike"] and m["samples"] == 1
    assert m["options"]["split"] == 1 and m["options"]["subset"] == "test"
    assert shard_labels(out) == {"ride_bike/r_0.avi": (1, "ride_bike")}
    assert main(["verify", str(out)]) == 0


def test_ucf101_and_hmdb51_cli_errors_exit_2_naming_the_file(tmp_path, capsys):
    (tmp_path / "v").mkdir()
    (tmp_path / "classInd.txt").write_text("1 A\nbroken\n")
    (tmp_path / "list.txt").write_text("")
    assert main(["ucf101", "--videos", str(tmp_path / "v"), "--class-index", str(tmp_path / "classInd.txt"),
                 "--split-file", str(tmp_path / "list.txt"), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    assert "classInd.txt:2" in capsys.readouterr().err
    assert main(["hmdb51", "--videos", str(tmp_path / "v"), "--splits-dir", str(tmp_path / "v"), "--split", "2",
                 "--subset", "train", "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    assert "test_split2.txt" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser().parse_args(["hmdb51", "--videos", "v", "--splits-dir", "s", "--split", "4", "--subset",
                                   "train", "--out", "o"])
