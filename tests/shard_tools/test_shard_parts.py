"""Sharding as an array job: --part I/N on every source, then mvd-shard merge; three parts plus
merge equal one whole run."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from shard_videos import run_env

from shard_tools.cli import main
from shard_tools.merge import MergeError, merge_parts
from shard_tools.parts import Part
from shard_tools.sample import split_member_name
from shard_tools.synth import make_synth_dataset
from shard_tools.verify import verify_shards


def _manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def _samples(out: Path) -> list[tuple[str, dict[str, bytes]]]:
    """(key, members) of every sample, in manifest order."""
    found = []
    for shard in _manifest(out)["shards"]:
        with tarfile.open(out / shard["name"]) as tf:
            for m in tf:
                key, ext = split_member_name(m.name)
                if not found or found[-1][0] != key:
                    found.append((key, {}))
                found[-1][1][ext] = tf.extractfile(m).read()
    return found


def _same_folder(a: Path, b: Path) -> None:
    """Everything but the shard files' names and boundaries is the same."""
    ma, mb = _manifest(a), _manifest(b)
    assert {k for k in ma if k != "shards"} == {k for k in mb if k != "shards"}
    for key in ma:
        if key != "shards":
            assert ma[key] == mb[key], key
    assert _samples(a) == _samples(b)


def test_part_slices_cover_the_order_once():
    for total in (0, 1, 7, 10):
        covered = [p for i in range(3) for p in Part(i, 3).positions(total)]
        assert covered == list(range(total))
    with pytest.raises(ValueError, match="0 <= I < N"):
        Part.parse("3/3")
    with pytest.raises(ValueError, match="expected I/N"):
        Part.parse("1-3")


def test_three_parts_plus_merge_equal_one_whole_run(mixed_videos, mixed_list, tmp_path):
    common = ["list", "--root", str(mixed_videos), "--list", str(mixed_list), "--workers", "1", "--no-progress",
              "--shard-samples", "2", "--seed", "5", "--target", "pyav"]
    assert main(common + ["--out", str(tmp_path / "whole")]) == 0
    parts = tmp_path / "parts"
    assert main(common + ["--out", str(parts), "--part", "2/3"]) == 0
    assert main(common + ["--out", str(parts), "--part", "0/3"]) == 0
    assert main(["merge", str(parts)]) == 1  # part 1/3 is missing
    with pytest.raises(MergeError, match=r"part 1/3 is missing"):
        merge_parts(parts)
    assert not (parts / "manifest.json").exists()
    assert main(common + ["--out", str(parts), "--part", "1/3"]) == 0
    assert main(common + ["--out", str(parts), "--part", "1/3"]) == 0  # a finished part re-run: nothing to do
    assert main(["merge", str(parts)]) == 0
    _same_folder(tmp_path / "whole", parts)
    assert _manifest(parts)["rejected"] and len(_manifest(parts)["shards"]) > 3
    report = verify_shards(parts)
    assert report.ok, report.problems
    assert main(["verify", str(parts)]) == 0


def test_an_unfinished_part_is_named_and_resumes_like_a_whole_run(tmp_path):
    params = {"num_videos": 9, "num_frames": 4, "width": 32, "height": 32, "num_classes": 4, "shard_samples": 1,
              "workers": 1}
    make_synth_dataset(tmp_path / "whole", **params)
    out = tmp_path / "parts"
    for i in range(3):
        make_synth_dataset(out, part=Part(i, 3), **params)
    # part 1 killed after its first shard: its piece gone, its state back to one shard, incomplete
    state_path = out / ".mvd-shard-state.1of3.json"
    state = json.loads(state_path.read_text())
    state["shards"], state["complete"], state["tail_rejected"] = state["shards"][:1], False, []
    state_path.write_text(json.dumps(state))
    (out / ".mvd-shard-part.1of3.json").unlink()
    with pytest.raises(MergeError, match=r"part 1/3 is unfinished \(1 shards done\)"):
        merge_parts(out)
    make_synth_dataset(out, part=Part(1, 3), **params)
    merge_parts(out)
    _same_folder(tmp_path / "whole", out)
    assert verify_shards(out).ok


def test_a_whole_run_refuses_a_folder_holding_parts(tmp_path):
    params = {"num_videos": 2, "num_frames": 4, "width": 32, "height": 32, "num_classes": 4, "workers": 1}
    make_synth_dataset(tmp_path, part=Part(0, 2), **params)
    assert main(["synth", "--out", str(tmp_path), "--num-videos", "2", "--num-frames", "4", "--width", "32",
                 "--height", "32", "--num-classes", "4", "--workers", "1", "--no-progress"]) == 2


@pytest.mark.slow
def test_parts_running_at_the_same_time_into_one_folder_merge_into_the_whole_run(tmp_path):
    flags = ["synth", "--num-videos", "8", "--num-frames", "4", "--width", "32", "--height", "32",
             "--num-classes", "4", "--shard-samples", "2", "--workers", "1", "--no-progress"]
    assert main(flags + ["--out", str(tmp_path / "whole")]) == 0
    procs = [subprocess.Popen([sys.executable, "-m", "shard_tools", *flags, "--out", str(tmp_path / "parts"),
                               "--part", f"{i}/3"], env=run_env()) for i in range(3)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0, 0]
    assert main(["merge", str(tmp_path / "parts")]) == 0
    _same_folder(tmp_path / "whole", tmp_path / "parts")
