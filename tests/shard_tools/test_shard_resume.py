"""Re-running a command into the same directory resumes it and gives the same manifest."""

import json
import subprocess
import sys
import time

import pytest
from shard_videos import run_env

from shard_tools import build
from shard_tools.build import ShardDirError
from shard_tools.state import STATE_NAME, load_state
from shard_tools.synth import make_synth_dataset
from shard_tools.verify import verify_shards

SMALL = {"num_videos": 16, "num_frames": 8, "width": 32, "height": 32, "num_classes": 4, "shard_samples": 4}


@pytest.fixture
def count_processed(monkeypatch):
    """Count the videos a run probes (runs must use workers=1, so work stays in-process)."""
    calls = []
    original = build._process

    def counting(task):
        calls.append(task.key)
        return original(task)

    monkeypatch.setattr(build, "_process", counting)
    return calls


def manifest_of(out):
    return json.loads((out / "manifest.json").read_text())


def test_resume_after_a_killed_process_finishes_the_work_once(tmp_path, count_processed):
    params = {"num_videos": 32, "num_frames": 16, "width": 96, "height": 64, "num_classes": 8, "shard_samples": 2}
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in params.items()]
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "shard_tools", "synth", *flags, "--workers=1", "--no-progress",
                             "--out", str(killed)], env=run_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        state = load_state(killed) if (killed / STATE_NAME).exists() else None
        if state is not None and len(state.shards) >= 2:
            break
        time.sleep(0.005)
    proc.kill()
    proc.wait()
    state = load_state(killed)
    assert state is not None and not state.complete, "the run ended before it could be killed"
    assert not (killed / "manifest.json").exists()
    assert verify_shards(killed).problems  # an unfinished directory never passes

    resumed = make_synth_dataset(killed, workers=1, **params)
    assert len(count_processed) == 32 - state.next_source  # finished shards were not redone
    reference = make_synth_dataset(tmp_path / "reference", workers=1, **params)
    assert resumed == reference
    assert verify_shards(killed).ok
    assert not [p.name for p in killed.iterdir() if p.name.endswith(".partial")]


def test_resume_from_partial_state_and_leftovers(tmp_path, count_processed):
    out = tmp_path / "out"
    full = make_synth_dataset(out, workers=1, **SMALL)
    assert len(full["shards"]) == 4 and len(count_processed) == 16
    # simulate a kill after shard 2 was renamed into place but before the state recorded it
    state = load_state(out)
    state.shards, state.complete = state.shards[:2], False
    state.save(out)
    (out / "manifest.json").unlink()
    (out / "shard-000002.tar").write_bytes(b"half a shard")
    (out / ".shard-000003.tar.partial").write_bytes(b"junk")
    (out / ".work").mkdir()
    (out / ".work" / "leftover.webm").write_bytes(b"junk")
    count_processed.clear()
    assert make_synth_dataset(out, workers=1, **SMALL) == full
    assert len(count_processed) == 8
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "manifest.json", *(f"shard-{i:06d}.{ext}" for i in range(4) for ext in ("idx", "tar"))]
    assert verify_shards(out).ok


def test_a_corrupted_finished_shard_is_rewritten(tmp_path, count_processed):
    out = tmp_path / "out"
    full = make_synth_dataset(out, workers=1, **SMALL)
    data = bytearray((out / "shard-000001.tar").read_bytes())
    data[700] ^= 1
    (out / "shard-000001.tar").write_bytes(bytes(data))
    count_processed.clear()
    assert make_synth_dataset(out, workers=1, **SMALL) == full
    assert len(count_processed) == 12
    assert verify_shards(out).ok


def test_rerunning_a_finished_command_does_no_work(tmp_path, count_processed):
    out = tmp_path / "out"
    first = make_synth_dataset(out, workers=1, **SMALL)
    count_processed.clear()
    assert make_synth_dataset(out, workers=1, **SMALL) == first
    assert count_processed == []


def test_another_command_into_the_same_directory_is_refused_unless_overwrite(tmp_path):
    out = tmp_path / "out"
    make_synth_dataset(out, workers=1, **SMALL)
    with pytest.raises(ShardDirError, match="different command"):
        make_synth_dataset(out, workers=1, seed=1, **SMALL)
    other = make_synth_dataset(out, workers=1, seed=1, overwrite=True, **SMALL)
    assert other["options"]["seed"] == 1 and verify_shards(out).ok


def test_shards_not_written_by_a_resumable_run_are_not_overwritten(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "shard-000000.tar").write_bytes(b"someone else's")
    with pytest.raises(ShardDirError, match="no resumable mvd-shard run"):
        make_synth_dataset(out, workers=1, **SMALL)
