import json
import shutil
import subprocess
import sys

import pytest
from shard_videos import run_env

from shard_tools.cli import main
from shard_tools.verify import verify_shards


@pytest.fixture
def shard_copy(synth_shards, tmp_path):
    out = tmp_path / "shards"
    shutil.copytree(synth_shards, out)
    return out


def test_verify_passes_on_a_fresh_directory(synth_shards):
    report = verify_shards(synth_shards)
    assert report.ok, report.problems
    assert (report.shards, report.samples) == (2, 48)


def test_verify_cli_reports_ok_and_exits_zero(synth_shards, capsys):
    assert main(["verify", str(synth_shards)]) == 0
    assert "48 samples in 2 shards" in capsys.readouterr().out


def test_a_flipped_byte_fails_with_the_shard_named(shard_copy, capsys):
    tar = shard_copy / "shard-000001.tar"
    data = bytearray(tar.read_bytes())
    data[1000] ^= 0xFF  # inside the first video's bytes
    tar.write_bytes(bytes(data))
    report = verify_shards(shard_copy)
    assert not report.ok
    assert any("shard-000001.tar" in p and "sha256" in p for p in report.problems)
    assert main(["verify", str(shard_copy)]) == 1
    assert "shard-000001.tar" in capsys.readouterr().err


def test_a_deleted_shard_fails(shard_copy):
    (shard_copy / "shard-000000.tar").unlink()
    problems = verify_shards(shard_copy).problems
    assert problems == ["shard-000000.tar: listed in the manifest but missing"]


def test_a_stale_index_or_manifest_count_fails(shard_copy):
    idx = shard_copy / "shard-000000.idx"
    idx.write_text(idx.read_text().replace("v1.2 24", "v1.2 23"))
    manifest = json.loads((shard_copy / "manifest.json").read_text())
    manifest["shards"][1]["samples"] = 25
    (shard_copy / "manifest.json").write_text(json.dumps(manifest))
    problems = verify_shards(shard_copy).problems
    assert any("shard-000000.idx does not match" in p for p in problems)
    assert any("shard-000001.tar: 24 samples, manifest says 25" in p for p in problems)


def test_a_directory_without_manifest_fails_clearly(tmp_path):
    assert "manifest.json not found" in verify_shards(tmp_path).problems[0]


def test_python_dash_m_shard_tools_verify(synth_shards):
    proc = subprocess.run([sys.executable, "-m", "shard_tools", "verify", str(synth_shards)],
                          capture_output=True, text=True, env=run_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("OK")


def test_a_manifest_codec_count_that_disagrees_fails(shard_copy):
    manifest = json.loads((shard_copy / "manifest.json").read_text())
    manifest["codecs"] = {"h264": 48}
    (shard_copy / "manifest.json").write_text(json.dumps(manifest))
    assert any("codec counts" in p for p in verify_shards(shard_copy).problems)
