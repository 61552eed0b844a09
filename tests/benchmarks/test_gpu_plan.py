"""The GPU check's plan and orchestration (benchmarks/gpu/plan.py, check.py, summary.py): every
call within the machine's limits (command length, stage limits under the budget, carried size
with the working tree, files returned), PLAN.md current, a stage's timeout and failure recorded
with its first error line, and the rehearsal of call 1 in a clean clone leaving what the device
returns (at most 8 files, 16 MiB each, 64 MiB together, 2 folders down, safe names)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tarfile
from dataclasses import replace
from pathlib import Path

import pytest

from benchmarks.gpu import pack, plan, summary
from benchmarks.gpu.check import Orchestra
from benchmarks.gpu.plan import CALLS, MiB, Stage

REPO = Path(__file__).resolve().parents[2]
SAFE = re.compile(r"^[A-Za-z0-9._-]+$")


def returned_files(out: Path) -> list[Path]:
    """What the device tool brings back from $OUT, checked against its limits."""
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) <= 8, files
    assert all(p.stat().st_size <= 16 * MiB for p in files)
    assert sum(p.stat().st_size for p in files) <= 64 * MiB
    for p in files:
        rel = p.relative_to(out)
        assert len(rel.parts) <= 3, rel  # at most 2 folders down
        assert all(SAFE.match(part) for part in rel.parts), rel
    return files


def test_every_call_fits_the_machines_limits():
    assert plan.validate() == []
    for call in CALLS:
        assert len(call.command) <= plan.COMMAND_CHARS
        assert call.setup_s + sum(s.limit_s for s in call.stages) < call.budget_s
    torch_call = plan.BY_NAME["torch"]
    assert torch_call.carry == () and torch_call.budget_s <= 360  # 6 minutes, setup included
    assert plan.BY_NAME["dali-2"].budget_s <= 300


def test_validate_names_each_broken_limit():
    call = plan.BY_NAME["torch"]
    broken = replace(call, command="x" * 2001, budget_s=10,
                     stages=(*call.stages, call.stages[0]))
    errors = plan.validate((broken,))
    assert any("2001 characters" in e for e in errors)
    assert any("not less than the call's budget of 10 s" in e for e in errors)
    assert any("stage names repeat" in e for e in errors)


def test_plan_md_is_rendered_from_the_plan():
    assert plan.PLAN_MD.read_text() == plan.render(), \
        "benchmarks/gpu/PLAN.md is stale: run python3 -m benchmarks.gpu.plan --write"


def test_every_calls_carry_plus_the_working_tree_fits_64_mib():
    """Each call's carried parts (as the pack recorded them, else the most a part may hold by
    construction) plus the working tree (tracked and untracked-not-ignored files)."""
    tree = plan.worktree_bytes()
    assert tree <= plan.TREE_BUDGET, f"the working tree is {tree / MiB:.1f} MiB"
    sizes = plan.pack_sizes()
    for call in CALLS:
        carried = sum(sizes.get(c, plan.PART_LIMIT) for c in call.carry)
        assert tree + carried <= plan.CALL_BYTES, \
            f"{call.name}: {tree / MiB:.1f} MiB tree + {carried / MiB:.1f} MiB carried"
    assert pack.PART_BYTES + pack.MANIFEST_RESERVE == plan.PART_LIMIT
    with pytest.raises(pack.PackError, match="more than a batch"):
        pack.plan_batches([pack.Piece("big", Path("x"), 0, pack.PART_BYTES + 1)])


def test_a_stage_past_its_limit_or_failing_is_recorded_with_its_first_error(tmp_path):
    call = replace(plan.BY_NAME["torch"], budget_s=60, stages=())
    run = Orchestra(call, tmp_path / "out", tmp_path / "work", 60, rehearse=False)
    slow = run.run_stage(Stage("slow", 1, ("{py}", "-c", "import time; time.sleep(30)"), "x"))
    assert slow["status"] == "timeout" and slow["limit_s"] == 1
    bad = run.run_stage(Stage("bad", 20, ("{py}", "-c", "print('warming up'); "
                                          "raise ValueError('the first error')"), "x"))
    assert bad["status"] == "failed" and bad["rc"] == 1
    assert bad["first_error"] == "ValueError: the first error"
    late = run.run_stage(Stage("late", 20, ("{py}", "-c", "pass"), "x", min_start_s=500))
    assert late["status"] == "skipped" and late["reason"].startswith("no time")
    assert run.finish() == 1
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [(r["stage"], r["status"]) for r in s["stages"]] == [
        ("slow", "timeout"), ("bad", "failed"), ("late", "skipped")]
    assert "failed: ValueError: the first error" in (tmp_path / "out" / "summary.md").read_text()
    assert len(returned_files(tmp_path / "out")) == 4


def test_first_error_prefers_the_exception_line():
    log = "collecting ...\nTraceback (most recent call last):\n  File x\nRuntimeError: boom\n"
    assert summary.first_error(log) == "RuntimeError: boom"
    assert summary.first_error("") == "(empty log)"


@pytest.mark.slow
def test_rehearsal_in_a_clean_clone_returns_within_the_devices_limits(tmp_path):
    """Call 1 needs nothing untracked: a clone of HEAD rehearses it, with DALI, PyAV and
    webdataset unimportable; CUDA stages say "skipped: no CUDA", the others run for real."""
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", "--no-hardlinks", str(REPO), str(clone)], check=True)
    out, work = tmp_path / "out", tmp_path / "work"
    proc = subprocess.run(["bash", "benchmarks/gpu/run.sh", "--rehearse", "--out", str(out),
                           "--work", str(work)], cwd=clone, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable,
                               "HOME": str(tmp_path)}, timeout=420)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    names = sorted(p.name for p in returned_files(out))
    assert names == ["gpu-check-torch.tar.gz", "run.log", "summary.json", "summary.md"]
    s = json.loads((out / "summary.json").read_text())
    status = {r["stage"]: r["status"] for r in s["stages"]}
    assert status == {"env": "ran", "pytest": "ran", "dryrun": "ran", "step-eager": "skipped",
                      "step-compiled": "skipped"}, s["stages"]
    assert {r["reason"] for r in s["stages"] if r["status"] == "skipped"} == {"no CUDA"}
    assert s["rehearsal"] and s["missing_modules"] == []
    versions = json.loads(tarfile.open(out / "gpu-check-torch.tar.gz").extractfile(
        "gpu-check-torch/env/versions.json").read())
    for blocked in ("nvidia.dali", "av", "webdataset"):
        assert "GPU machine has no" in versions["modules"][blocked]["error"]
    assert versions["modules"]["torch"]["file"].startswith(sys.prefix)
    tests = s["figures"]["pytest"]["pytest"]
    assert tests["errors"] == tests["failed"] == 0 and tests["skipped"] > 0  # collected, no CUDA
    memory = {m["variant"]: m for m in s["figures"]["memory"]}
    assert set(memory) == {"mvd_s", "mvd_b"}
    assert 0 < memory["mvd_s"]["dryrun_peak_memory_gib_per_rank"] \
        < memory["mvd_b"]["dryrun_peak_memory_gib_per_rank"]
    assert "skipped: no CUDA" in (out / "summary.md").read_text()
