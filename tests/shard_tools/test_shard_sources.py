import json

import pytest

from shard_tools.sources import SourceError, kinetics_sources, list_sources, ssv2_sources


def touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_kinetics_csv_finds_files_anywhere_and_rejects_missing_and_unlabelled(tmp_path):
    videos = tmp_path / "videos"
    touch(videos / "abseiling" / "aaa_000010_000020.mp4")
    touch(videos / "bbb_000000_000010.mkv")
    touch(videos / "ddd_000001_000011.mp4")
    csv = tmp_path / "train.csv"
    csv.write_text(
        "label,youtube_id,time_start,time_end,split\n"
        "abseiling,aaa,10,20,train\n"
        '"zumba, fast",bbb,0,10,train\n'
        "abseiling,ccc,5,15,train\n"
        ",ddd,1,11,train\n"
        "abseiling,eee,x,15,train\n"
    )
    s = kinetics_sources(videos, csv)
    assert s.dataset == "kinetics" and s.classes == ["abseiling", "zumba, fast"]
    assert [(r.source, r.label, r.label_name) for r in s.records] == [
        ("abseiling/aaa_000010_000020.mp4", 0, "abseiling"), ("bbb_000000_000010.mkv", 1, "zumba, fast")]
    reasons = {r.path: r.reason for r in s.rejected}
    assert reasons["ccc_000005_000015"] == "missing file"
    assert reasons["ddd_000001_000011.mp4"].startswith("unknown label")
    assert reasons["train.csv:6"].startswith("malformed entry")


def test_kinetics_csv_without_the_needed_columns_is_an_error_naming_the_file(tmp_path):
    (tmp_path / "v").mkdir()
    csv = tmp_path / "bad.csv"
    csv.write_text("name,id\nx,y\n")
    with pytest.raises(SourceError, match="bad.csv.*youtube_id"):
        kinetics_sources(tmp_path / "v", csv)


def test_ssv2_strips_template_brackets_to_match_labels_json(tmp_path):
    videos = tmp_path / "videos"
    for vid in ("1", "2", "4"):
        touch(videos / f"{vid}.webm")
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"Putting something on something": "1", "Approaching something": "0"}))
    annotations = tmp_path / "train.json"
    annotations.write_text(json.dumps([
        {"id": "1", "template": "Putting [something] on [something]", "label": "putting a cup on a box"},
        {"id": "2", "template": "Approaching [something]"},
        {"id": "3", "template": "Approaching [something]"},
        {"id": "4", "template": "Juggling [something]"},
        {"id": "5"},
        {"no_id": True},
    ]))
    s = ssv2_sources(videos, labels, annotations)
    assert s.classes == ["Approaching something", "Putting something on something"]
    assert [(r.source, r.label) for r in s.records] == [("1.webm", 1), ("2.webm", 0)]
    reasons = {r.path: r.reason for r in s.rejected}
    assert reasons["3.webm"] == "missing file"
    assert reasons["4.webm"] == "unknown label: 'Juggling something'"
    assert reasons["5.webm"].startswith("unknown label")
    assert reasons["train.json[5]"].startswith("malformed entry")


def test_ssv2_labels_with_gaps_are_an_error(tmp_path):
    (tmp_path / "v").mkdir()
    (tmp_path / "labels.json").write_text(json.dumps({"a": "0", "b": "2"}))
    (tmp_path / "ann.json").write_text("[]")
    with pytest.raises(SourceError, match="labels.json"):
        ssv2_sources(tmp_path / "v", tmp_path / "labels.json", tmp_path / "ann.json")


def test_list_file_paths_with_spaces_comments_and_bad_lines(tmp_path):
    root = tmp_path / "root"
    touch(root / "a" / "one clip.avi")
    touch(root / "b.mp4")
    lst = tmp_path / "list.txt"
    lst.write_text("# comment\n\na/one clip.avi 2\nb.mp4 0\ngone.mp4 1\nb.mp4 x\nlonely\nb.mp4 -1\n")
    s = list_sources(root, lst)
    assert s.classes == ["0", "1", "2"]
    assert [(r.source, r.label, r.label_name) for r in s.records] == [("a/one clip.avi", 2, "2"), ("b.mp4", 0, "0")]
    reasons = sorted((r.path, r.reason.split(":")[0]) for r in s.rejected)
    assert reasons == [("b.mp4", "unknown label"), ("b.mp4", "unknown label"), ("gone.mp4", "missing file"),
                       ("list.txt:7", "malformed entry")]


def test_list_file_with_class_names_rejects_out_of_range_labels(tmp_path):
    touch(tmp_path / "r" / "v.mp4")
    (tmp_path / "classes.txt").write_text("cat\ndog\n")
    (tmp_path / "l.txt").write_text("v.mp4 1\nv.mp4 2\n")
    s = list_sources(tmp_path / "r", tmp_path / "l.txt", tmp_path / "classes.txt")
    assert s.classes == ["cat", "dog"] and s.records[0].label_name == "dog"
    assert [r.reason for r in s.rejected] == ["unknown label: '2'"]


def test_missing_description_files_are_errors(tmp_path):
    (tmp_path / "r").mkdir()
    with pytest.raises(SourceError, match="nope.txt"):
        list_sources(tmp_path / "r", tmp_path / "nope.txt")
    with pytest.raises(SourceError, match="does not exist"):
        list_sources(tmp_path / "missing_root", tmp_path / "nope.txt")
