"""The output contract of a sharding run (ARCHITECTURE.md, "Shards (mvd-shards/1)")."""

import io
import json
import tarfile
from pathlib import Path

import pytest
import webdataset as wds
from shard_videos import BROKEN_VIDEOS, GOOD_VIDEOS, count_frames, label_of
from wds2idx import IndexCreator

from shard_tools.cli import main
from shard_tools.rejections import category_of
from shard_tools.sample import FORMAT, split_member_name, unpack_meta


def read_samples(tar_path: Path) -> list[tuple[str, dict[str, bytes]]]:
    samples = []
    with tarfile.open(tar_path) as tf:
        for member in tf:
            key, ext = split_member_name(member.name)
            if not samples or samples[-1][0] != key:
                samples.append((key, {}))
            samples[-1][1][ext] = tf.extractfile(member).read()
    return samples


@pytest.fixture(scope="module")
def mixed_shards(mixed_videos, mixed_list, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mixed_shards")
    rc = main(["list", "--root", str(mixed_videos), "--list", str(mixed_list), "--out", str(out),
               "--workers", "2", "--shard-size-mb", "0.03", "--seed", "3", "--no-progress", "--target", "pyav"])
    assert rc == 0
    return out


def test_manifest_has_the_contract_fields(mixed_shards, mixed_list, mixed_videos):
    m = json.loads((mixed_shards / "manifest.json").read_text())
    assert set(m) == {"format", "dataset", "samples", "classes", "class_list", "shards", "codecs", "rejected",
                      "options", "streams"}
    assert m["class_list"] == {"source": "list indices", "file": str(mixed_list.resolve())}
    assert m["format"] == FORMAT and m["dataset"] == "list"
    assert m["samples"] == len(GOOD_VIDEOS) == sum(s["samples"] for s in m["shards"])
    assert m["classes"] == ["0", "1", "2"]
    assert len(m["shards"]) > 1, "0.03 MB shards should split the set"
    for i, shard in enumerate(m["shards"]):
        assert set(shard) == {"name", "index", "samples", "bytes", "sha256"}
        assert shard["name"] == f"shard-{i:06d}.tar" and shard["index"] == f"shard-{i:06d}.idx"
        assert (mixed_shards / shard["name"]).stat().st_size == shard["bytes"]
    assert m["codecs"] == {"h264": 5, "hevc": 1, "mjpeg": 1, "vp8": 1, "vp9": 2}
    assert m["options"]["seed"] == 3 and m["options"]["shard_size_mb"] == 0.03
    assert m["options"]["list"] == str(mixed_list.resolve())
    assert not any(name.endswith(".partial") for name in (p.name for p in mixed_shards.iterdir()))


def test_every_broken_input_is_rejected_with_its_reason(mixed_shards):
    m = json.loads((mixed_shards / "manifest.json").read_text())
    got = {(r["path"], category_of(r["reason"])) for r in m["rejected"]}
    expected = {(name, category) for name, category in BROKEN_VIDEOS.items()}
    expected |= {("does_not_exist.mp4", "missing file"), ("h264_a.mp4", "unknown label"),
                 (f"{Path(m['options']['list']).name}:{len(GOOD_VIDEOS) + len(BROKEN_VIDEOS) + 5}", "malformed entry")}
    assert got == expected
    assert all(r["reason"] for r in m["rejected"])


def test_samples_hold_identical_video_bytes_and_consistent_metadata(mixed_shards, mixed_videos):
    m = json.loads((mixed_shards / "manifest.json").read_text())
    seen = {}
    for shard in m["shards"]:
        samples = read_samples(mixed_shards / shard["name"])
        assert len(samples) == shard["samples"]
        for key, members in samples:
            assert "." not in key and key not in seen
            info = json.loads(members["json"])
            source = info["source"]
            seen[key] = source
            video_ext = Path(source).suffix.lstrip(".").lower()
            assert set(members) == {video_ext, "cls", "json", "meta"}
            assert members[video_ext] == (mixed_videos / source).read_bytes()
            encoder, frames, width, height, _ = GOOD_VIDEOS[source]
            assert info["num_frames"] == frames == count_frames(io.BytesIO(members[video_ext]))
            assert (info["width"], info["height"], info["fps"]) == (width, height, 12.0)
            assert info["label"] == int(members["cls"]) == label_of(source)
            assert info["label_name"] == m["classes"][info["label"]]
            assert unpack_meta(members["meta"]) == (frames, width, height, label_of(source))
    assert sorted(seen.values()) == sorted(GOOD_VIDEOS)


def test_names_with_dots_give_one_sample_each_with_unique_keys(mixed_shards):
    keys = [key for shard in sorted(mixed_shards.glob("shard-*.tar")) for key, _ in read_samples(shard)]
    assert {"clip_with_dots", "clip_with_dots-1"} <= set(keys)
    assert len(keys) == len(set(keys)) == len(GOOD_VIDEOS)


def test_dali_index_is_exactly_what_wds2idx_writes(mixed_shards, tmp_path):
    for tar in sorted(mixed_shards.glob("shard-*.tar")):
        reference = tmp_path / f"{tar.stem}.idx"
        with IndexCreator(str(tar), str(reference), verbose=False) as creator:
            creator.create_index()
        assert (mixed_shards / f"{tar.stem}.idx").read_text() == reference.read_text()


def test_webdataset_reads_the_shards_back(mixed_shards):
    tars = sorted(str(p) for p in mixed_shards.glob("shard-*.tar"))
    samples = list(wds.WebDataset(tars, shardshuffle=False, empty_check=False))
    assert len(samples) == len(GOOD_VIDEOS)
    for s in samples:
        assert int(s["cls"]) == json.loads(s["json"])["label"]
        assert len(s["meta"]) == 16
