"""Class lists: the shipped official Kinetics-400 list, ``--classes`` for kinetics and list, official
indices kept for a subset CSV, and the manifest saying where the list came from."""

import csv
import hashlib
import io
import json
import random
import tarfile

import pytest

from shard_tools.class_lists import SHIPPED, ClassListError, kinetics400, read_class_list
from shard_tools.cli import main
from shard_tools.sources import SourceError, kinetics_sources, list_sources

# sha256 of data/kinetics400_classes.txt: the sorted unique labels of the official
# kinetics-400_val.csv (ActivityNet Crawler/Kinetics/data), identical to DeepMind's
# kinetics-i3d data/label_map.txt
KINETICS400_SHA256 = "e9f2806fe9109b851a80a74841244f6f8c9d10917fa0229cd82bab67f2f8e28f"


def kinetics_csv(path, labels, ids=None, start=0):
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["label", "youtube_id", "time_start", "time_end", "split"])
    for i, label in enumerate(labels):
        writer.writerow([label, (ids or {}).get(label, f"id{i:04d}"), start, start + 10, "train"])
    path.write_text(buf.getvalue())
    return path


def test_the_shipped_kinetics400_list_is_400_unique_sorted_names_pinned_by_hash():
    k400 = kinetics400()
    assert len(k400.names) == 400 == len(set(k400.names))
    assert k400.names == sorted(k400.names) and all(n == n.strip() and n for n in k400.names)
    assert k400.names[0] == "abseiling" and k400.names[-1] == "zumba"
    assert "passing American football (not in game)" in k400.names and "massaging person's head" in k400.names
    assert hashlib.sha256(SHIPPED["kinetics400"].read_bytes()).hexdigest() == KINETICS400_SHA256
    assert k400.provenance == {"source": "kinetics400", "file": str(SHIPPED["kinetics400"]),
                               "sha256": KINETICS400_SHA256}


def test_a_full_kinetics_csv_yields_exactly_the_shipped_list(tmp_path):
    labels = kinetics400().names * 2
    random.Random(0).shuffle(labels)
    (tmp_path / "v").mkdir()
    csv_path = kinetics_csv(tmp_path / "train.csv", labels)
    derived = kinetics_sources(tmp_path / "v", csv_path)
    assert derived.classes == kinetics400().names and not derived.notes
    assert derived.class_list == {"source": "csv", "file": str(csv_path.resolve())}
    assert kinetics_sources(tmp_path / "v", csv_path, kinetics400()).classes == kinetics400().names


def test_a_subset_csv_keeps_the_official_indices_with_classes_and_is_flagged_without(tmp_path):
    videos = tmp_path / "v"
    for name in ("aaa_000000_000010.mp4", "zzz_000000_000010.mp4"):
        (videos / name).parent.mkdir(parents=True, exist_ok=True)
        (videos / name).write_bytes(b"x")
    csv_path = kinetics_csv(tmp_path / "mini.csv", ["zumba", "abseiling"], ids={"abseiling": "aaa", "zumba": "zzz"})
    kept = kinetics_sources(videos, csv_path, kinetics400())
    assert len(kept.classes) == 400
    assert {r.label_name: r.label for r in kept.records} == {"abseiling": 0, "zumba": 399}
    assert kept.class_list["source"] == "kinetics400" and not kept.notes
    shifted = kinetics_sources(videos, csv_path)
    assert {r.label_name: r.label for r in shifted.records} == {"abseiling": 0, "zumba": 1}
    assert "2 of the 400 Kinetics-400 classes" in shifted.notes[0] and "--classes kinetics400" in shifted.notes[0]


def test_a_csv_label_outside_the_class_list_is_an_error_naming_it(tmp_path):
    (tmp_path / "v").mkdir()
    csv_path = kinetics_csv(tmp_path / "k.csv", ["abseiling", "air_drumming", "zumba, fast"])
    with pytest.raises(SourceError, match=r"'air_drumming' \(and 1 more\) is not in the class list .*kinetics400"):
        kinetics_sources(tmp_path / "v", csv_path, kinetics400())


def test_class_list_files_are_checked(tmp_path):
    (tmp_path / "dup.txt").write_text("cat\ndog\n\ncat\n")
    with pytest.raises(ClassListError, match=r"'cat' on line 4 already on line 1"):
        read_class_list(tmp_path / "dup.txt")
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(ClassListError, match="names no classes"):
        read_class_list(tmp_path / "empty.txt")
    with pytest.raises(ClassListError, match="absent.txt.*kinetics400"):
        read_class_list(tmp_path / "absent.txt")
    (tmp_path / "ok.txt").write_text(" cat \r\ndog\r\n")
    ok = read_class_list(tmp_path / "ok.txt")
    assert ok.names == ["cat", "dog"] and ok.provenance["source"] == "file"


def test_list_sources_take_a_shipped_list_by_name(tmp_path):
    (tmp_path / "a.mp4").write_bytes(b"x")
    (tmp_path / "l.txt").write_text("a.mp4 399\n")
    s = list_sources(tmp_path, tmp_path / "l.txt", "kinetics400")
    assert s.records[0].label_name == "zumba" and s.class_list["source"] == "kinetics400"


def test_kinetics_cli_with_classes_keeps_official_indices_and_records_the_list(tmp_path, capsys):
    from shard_videos import write_video

    videos = tmp_path / "k400"
    write_video(videos / "zumba" / "abc_000001_000011.mp4", "libx264", 6, 32, 24)
    csv_path = kinetics_csv(tmp_path / "val_subset.csv", ["zumba"], ids={"zumba": "abc"}, start=1)
    out = tmp_path / "out"
    assert main(["kinetics", "--videos", str(videos), "--csv", str(csv_path), "--classes", "kinetics400",
                 "--out", str(out), "--workers", "1", "--no-progress"]) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["classes"] == kinetics400().names and m["samples"] == 1
    assert m["class_list"] == kinetics400().provenance and m["options"]["classes"] == "kinetics400"
    with tarfile.open(out / "shard-000000.tar") as tar:
        cls = [tar.extractfile(x).read() for x in tar.getmembers() if x.name.endswith(".cls")]
    assert cls == [b"399"]

    out2 = tmp_path / "out2"
    assert main(["kinetics", "--videos", str(videos), "--csv", str(csv_path), "--out", str(out2),
                 "--workers", "1", "--no-progress"]) == 0
    assert "--classes kinetics400" in capsys.readouterr().err
    assert json.loads((out2 / "manifest.json").read_text())["class_list"]["source"] == "csv"


def test_list_cli_records_a_class_file_with_its_hash(tmp_path):
    from shard_videos import write_video

    write_video(tmp_path / "videos" / "x.mp4", "libx264", 6, 32, 24)
    (tmp_path / "train.txt").write_text("x.mp4 1\n")
    classes = tmp_path / "classes.txt"
    classes.write_text("cat\ndog\n")
    out = tmp_path / "out"
    assert main(["list", "--root", str(tmp_path / "videos"), "--list", str(tmp_path / "train.txt"),
                 "--classes", str(classes), "--out", str(out), "--workers", "1", "--no-progress"]) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["classes"] == ["cat", "dog"]
    assert m["class_list"] == {"source": "file", "file": str(classes.resolve()),
                               "sha256": hashlib.sha256(b"cat\ndog\n").hexdigest()}
