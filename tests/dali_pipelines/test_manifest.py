"""Reading a shard directory: the sample table, and a clear error for each bad directory."""

from __future__ import annotations

import json
import shutil
import tarfile

import pytest

from dali_pipelines import PretrainLoader, ShardDirError, load_shard_dir


def test_table_matches_the_json_members(synth_shards):
    shards = load_shard_dir(synth_shards)
    table = shards.table
    assert len(table) == 48 and len(table.shard_paths) == 2
    assert shards.classes == json.loads((synth_shards / "manifest.json").read_text())["classes"]
    with tarfile.open(table.shard_paths[1]) as tar:
        for member in tar.getmembers():
            if member.name.endswith(".json"):
                info = json.load(tar.extractfile(member))
                i = table.keys.index(member.name[: -len(".json")])
                assert table.shard[i] == 1
                assert (table.num_frames[i], table.width[i], table.height[i], table.label[i]) == (
                    info["num_frames"], info["width"], info["height"], info["label"])
            elif member.name.endswith(".webm"):
                i = table.keys.index(member.name[: -len(".webm")])
                assert (table.offset[i], table.size[i]) == (member.offset_data, member.size)


def test_missing_directory_and_manifest_are_named(tmp_path):
    with pytest.raises(ShardDirError, match="no such directory"):
        PretrainLoader(tmp_path / "nowhere", 2, device="cpu")
    with pytest.raises(ShardDirError, match="no manifest.json"):
        PretrainLoader(tmp_path, 2, device="cpu")


def test_listed_but_missing_shard_is_named(synth_shards, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(synth_shards, copy)
    (copy / "shard-000001.tar").unlink()
    with pytest.raises(ShardDirError, match="shard-000001.tar"):
        PretrainLoader(copy, 2, device="cpu")


def test_wrong_format_is_rejected(synth_shards, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(synth_shards, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["format"] = "something-else"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ShardDirError, match="format"):
        load_shard_dir(copy)
