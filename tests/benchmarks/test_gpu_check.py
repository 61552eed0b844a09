"""The GPU check's CPU-side half (benchmarks/gpu/): the packer's splitting, transfer plan, wheel
checks, shard set and manifest; run.sh's receive / reassemble / verify / install half, run end
to end on a pack of tiny real wheels and stopped before the GPU stages (--prepare-only); and
the GPU step variants' settings. Offline: nothing is downloaded (the packer takes wheels that
are already there)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
import torch

from benchmarks import report, step
from benchmarks.gpu import manifest as pack_format
from benchmarks.gpu import pack
from benchmarks.gpu.manifest import MANIFEST, MiB
from dali_pipelines import load_shard_dir
from shard_tools.verify import verify_shards

REPO = Path(__file__).resolve().parents[2]
RUN_SH = REPO / "benchmarks" / "gpu" / "run.sh"
KiB = 1024
# A pack small enough to make in seconds that still splits files and needs several batches.
PART = 128 * KiB
BATCH = pack.MANIFEST_RESERVE + 320 * KiB
FAKE_REQS = [("fakedali", "2.4.0"), ("fakedep", "1.0")]
TINY_CHECK = pack.CheckSet(num_videos=4, num_frames=16, width=96, height=64)


def sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def cat(parts: list[Path], out: Path) -> None:
    """Reassemble as run.sh does: `cat PART... > NAME`."""
    subprocess.run(["bash", "-c", 'cat "${@:2}" > "$1"', "_", str(out), *map(str, parts)],
                   check=True)


def make_wheel(folder: Path, name: str, version: str, payload: int) -> Path:
    """A real, installable py3-none-any wheel: module `<name>_probe` and `payload` random bytes
    (stored, so the wheel is at least that large)."""
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}_probe/__init__.py": f"VALUE = {name!r}\n".encode(),
        f"{name}_probe/payload.bin": random.Random(name).randbytes(payload),
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                         b"Tag: py3-none-any\n",
    }
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    files[f"{dist}/RECORD"] = ("\n".join(record + [f"{dist}/RECORD,,"]) + "\n").encode()
    out = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        for path, data in files.items():
            z.writestr(path, data)
    return out


@pytest.fixture(scope="module")
def packed(tmp_path_factory) -> Path:
    """A pack of two tiny wheels (one split into parts) and the tiny check shard set."""
    root = tmp_path_factory.mktemp("gpu_pack")
    wheels = root / "wheels"
    wheels.mkdir()
    make_wheel(wheels, "fakedali", "2.4.0", payload=300 * KiB)
    make_wheel(wheels, "fakedep", "1.0", payload=2 * KiB)
    make_wheel(wheels, "unrelated", "9.9", payload=1 * KiB)  # not asked for: left behind
    pack.pack(root / "pack", wheels, sets=("check",), check=TINY_CHECK, reqs=FAKE_REQS,
              part_bytes=PART, batch_bytes=BATCH, workers=2)
    return root / "pack"


def run_sh(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(RUN_SH), *args], capture_output=True, text=True,
                          env={**os.environ, "PYTHON": sys.executable, **(env or {})},
                          timeout=120)


def receive_all(pack_dir: Path, parts: Path) -> None:
    for batch in sorted((pack_dir / "batches").iterdir()):
        proc = run_sh("--receive", str(batch), "--parts", str(parts))
        assert proc.returncode == 0, proc.stderr


# ----------------------------------------------------------------------- splitting, planning


def test_split_file_gives_parts_of_at_most_the_limit_that_cat_back_to_the_same_sha256(tmp_path):
    src = tmp_path / "big.whl"
    src.write_bytes(os.urandom(3 * MiB + MiB // 2))
    pieces = pack.split_file(src, part_bytes=MiB)
    assert [p.name for p in pieces] == [f"big.whl.part{i:02d}" for i in range(4)]
    out = tmp_path / "parts"
    out.mkdir()
    digests = [pack.write_piece(p, out) for p in pieces]
    sizes = [(out / p.name).stat().st_size for p in pieces]
    assert max(sizes) <= MiB and sum(sizes) == src.stat().st_size
    assert digests == [sha(out / p.name) for p in pieces]
    cat([out / p.name for p in pieces], tmp_path / "whole.whl")
    assert sha(tmp_path / "whole.whl") == sha(src)


def test_a_file_no_larger_than_the_part_size_travels_whole(tmp_path):
    src = tmp_path / "small.whl"
    src.write_bytes(b"x" * 100)
    assert pack.split_file(src, part_bytes=100) == [pack.Piece("small.whl", src, 0, 100)]


def test_the_real_wheel_set_travels_in_five_batches_each_under_the_limit(tmp_path):
    """The sizes pip downloaded for cp312 (sparse files: only sizes matter to the plan), plus
    the check and step shard tars: the DALI wheel in 4 parts, 5 batches of <= 60 MiB."""
    sizes = {"nvidia_dali_cuda130-2.4.0-py3-none-manylinux_2_28_x86_64.whl": 198_655_209,
             "av-18.1.0-cp311-abi3-manylinux_2_28_x86_64.whl": 35_786_210,
             "nvtx-0.2.17-cp312-cp312-manylinux_2_28_x86_64.whl": 3_050_476,
             "libcst-1.9.0-cp312-cp312-manylinux_2_28_x86_64.whl": 2_255_388,
             "optree-0.20.0-cp312-cp312-manylinux_2_28_x86_64.whl": 488_981,
             "shards-check.tar": 7 * MiB, "shards-step.tar": 12 * MiB}
    pieces = []
    for name, size in sizes.items():
        with open(tmp_path / name, "wb") as f:
            f.truncate(size)
        pieces += pack.split_file(tmp_path / name)
    assert sum(p.name.startswith("nvidia_dali") for p in pieces) == 4
    assert all(p.size <= 50 * MiB for p in pieces)
    batches = pack.plan_batches(pieces, pack.BATCH_BYTES - pack.MANIFEST_RESERVE)
    assert len(batches) == 5
    assert all(sum(p.size for p in b) <= 60 * MiB - pack.MANIFEST_RESERVE for b in batches)


def test_plan_batches_keeps_every_batch_under_the_limit_and_every_piece_once():
    rng = random.Random(0)
    pieces = [pack.Piece(f"p{i}", Path("x"), 0, rng.randint(1, 100)) for i in range(60)]
    batches = pack.plan_batches(pieces, 100)
    assert all(sum(p.size for p in b) <= 100 for b in batches)
    assert sorted(p.name for b in batches for p in b) == sorted(p.name for p in pieces)
    assert len(batches) <= 2 * sum(p.size for p in pieces) / 100 + 1  # first fit: < 2x optimal
    with pytest.raises(pack.PackError, match="more than a batch"):
        pack.plan_batches([pack.Piece("huge", Path("x"), 0, 101)], 100)


# ------------------------------------------------------------------------------------ wheels


def test_requirements_pin_dali_and_its_deps_as_constraints_txt():
    pins = dict(pack.requirements())
    assert set(pins) == set(pack.WHEELS)
    lock = {line.split("==")[0]: line.split("==")[1] for line in
            (REPO / "constraints.txt").read_text().splitlines() if "==" in line}
    assert pins["nvidia-dali-cuda130"] == lock["nvidia-dali-cuda130"]
    assert pins["av"] == lock["av"]


def test_find_wheels_takes_cp312_manylinux_wheels_and_names_what_is_wrong(tmp_path):
    good = ["optree-0.20.0-cp312-cp312-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl",
            "av-18.1.0-cp311-abi3-manylinux_2_28_x86_64.whl",
            "six-1.17.0-py2.py3-none-any.whl"]
    for name in [*good, "gast-0.7.0-cp311-cp311-manylinux_2_28_x86_64.whl"]:
        (tmp_path / name).touch()
    reqs = [("optree", "0.20.0"), ("av", "18.1.0"), ("six", "1.17.0")]
    assert [p.name for p in pack.find_wheels(tmp_path, reqs)] == good
    with pytest.raises(pack.PackError) as err:
        pack.find_wheels(tmp_path, [*reqs, ("gast", "0.7.0"), ("makefun", "1.16.0")])
    assert "missing gast==0.7.0 makefun==1.16.0 (add --download" in str(err.value)
    assert ("gast-0.7.0-cp311-cp311-manylinux_2_28_x86_64.whl (not for CPython 3.12"
            in str(err.value))


# ---------------------------------------------------------------------------------- the pack


def test_pack_manifest_batches_stay_under_the_limit_and_hold_every_piece(packed):
    manifest = pack_format.load(packed / MANIFEST)
    names = {f["name"]: f for f in manifest["files"]}
    assert set(names) == {"fakedali-2.4.0-py3-none-any.whl", "fakedep-1.0-py3-none-any.whl",
                          "shards-check.tar"}
    dali = names["fakedali-2.4.0-py3-none-any.whl"]
    assert len(dali["parts"]) == 3 and all(p["bytes"] <= PART for p in dali["parts"])
    assert len(manifest["batches"]) >= 2
    where = {}
    for batch in manifest["batches"]:
        folder = packed / "batches" / batch["name"]
        files = {p.name for p in folder.iterdir()}
        assert files == {*batch["pieces"], MANIFEST}
        assert (folder / MANIFEST).read_text() == (packed / MANIFEST).read_text()
        size = sum((folder / n).stat().st_size for n in batch["pieces"])
        assert size == batch["bytes"] <= BATCH - pack.MANIFEST_RESERVE
        where.update({n: folder / n for n in batch["pieces"]})
    for piece, info in pack_format.expected_pieces(manifest).items():
        assert sha(where[piece]) == info["sha256"]
    cat([where[p["name"]] for p in dali["parts"]], packed / "dali.whl")
    assert sha(packed / "dali.whl") == dali["sha256"]
    assert manifest["transfer"]["calls"][-1]["command"].endswith("&& bash benchmarks/gpu/run.sh")


def test_pack_makes_the_check_shard_set_in_three_codecs_readable_by_the_loaders(packed, tmp_path):
    manifest = pack_format.load(packed / MANIFEST)
    entry = next(f for f in manifest["files"] if f["name"] == "shards-check.tar")
    tar_path = packed / "build" / "shards-check.tar"
    assert sha(tar_path) == entry["sha256"]
    with tarfile.open(tar_path) as tar:
        tar.extractall(tmp_path, filter="data")
    assert manifest["shard_sets"]["check"]["dirs"] == ["check/h264", "check/hevc", "check/vp9"]
    for codec in TINY_CHECK.codecs:
        shards = tmp_path / "check" / codec
        meta = json.loads((shards / "manifest.json").read_text())
        assert meta["codecs"] == {codec: TINY_CHECK.num_videos}
        assert (meta["options"]["width"], meta["options"]["height"], meta["options"]["gop"]) == \
            (TINY_CHECK.width, TINY_CHECK.height, TINY_CHECK.gop)
        assert len(load_shard_dir(shards).table) == TINY_CHECK.num_videos
        assert verify_shards(shards).ok


def test_a_shard_set_too_large_to_travel_is_refused_before_encoding(tmp_path):
    big = pack.CheckSet(num_videos=10_000)
    with pytest.raises(pack.PackError, match=r"shard set 'check' would be about \d+ MiB"):
        pack.make_shard_set("check", tmp_path, big, workers=1, max_bytes=pack.MAX_SET_BYTES)
    assert not (tmp_path / "check").exists()


# ------------------------------------------------------------------------------------ run.sh


def test_run_sh_is_valid_bash():
    proc = subprocess.run(["bash", "-n", str(RUN_SH)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_run_sh_receives_reassembles_verifies_and_installs_the_pack(packed, tmp_path):
    parts, work, out = tmp_path / "parts", tmp_path / "work", tmp_path / "out"
    batches = sorted((packed / "batches").iterdir())
    proc = run_sh("--receive", str(batches[0]), "--parts", str(parts))
    assert proc.returncode == 0, proc.stderr
    assert f"1 of {len(batches)} batches present" in proc.stdout
    early = run_sh("--prepare-only", "--parts", str(parts), "--work", str(work),
                   "--out", str(out))
    assert early.returncode != 0 and "missing: batch-2" in early.stderr

    receive_all(packed, parts)
    proc = run_sh("--prepare-only", "--parts", str(parts), "--work", str(work), "--out", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    manifest = json.loads((packed / MANIFEST).read_text())
    for f in manifest["files"]:
        assert sha(parts / f["name"]) == f["sha256"], f["name"]
    assert "reassembled fakedali-2.4.0-py3-none-any.whl from 3 parts with cat" in proc.stdout
    site = work / "site"
    probe = subprocess.run([sys.executable, "-c", "import fakedali_probe, fakedep_probe; "
                            "print(fakedali_probe.VALUE, fakedep_probe.VALUE)"],
                           capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(site)})
    assert probe.stdout.split() == ["fakedali", "fakedep"], probe.stderr
    assert not (site / "unrelated_probe").exists()
    assert (work / "check" / "hevc" / "manifest.json").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert [s["stage"] for s in summary["stages"]] == ["prepare"] and summary["ok"]
    assert json.loads((out / "pack-manifest.json").read_text()) == manifest


@pytest.mark.slow
def test_run_sh_runs_a_stage_into_the_out_folder_and_skips_one_the_budget_has_no_time_for(
        packed, tmp_path):
    parts, work, out = tmp_path / "parts", tmp_path / "work", tmp_path / "out"
    receive_all(packed, parts)
    where = ["--parts", str(parts), "--work", str(work), "--out", str(out)]
    proc = run_sh("--stages", "env", "--budget", "120", *where)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    versions = json.loads((out / "env" / "versions.json").read_text())
    assert versions["missing"] == [] and versions["modules"]["av"]["version"]
    assert (out / "env" / "pip-list.txt").exists() and (out / "env.log").exists()
    assert [s["stage"] for s in json.loads((out / "summary.json").read_text())["stages"]] == \
        ["prepare", "env"]
    assert "wheels already installed" not in proc.stdout  # a fresh work folder installs them

    proc = run_sh("--stages", "decode", "--budget", "5", *where)
    assert proc.returncode == 1  # not every stage ok
    assert "wheels already installed" in proc.stdout
    stages = json.loads((out / "summary.json").read_text())["stages"]
    assert [(s["stage"], s["status"]) for s in stages] == [("prepare", "ok"),
                                                             ("decode", "skipped")]


def test_run_sh_stops_when_a_reassembled_file_does_not_match_its_sha256(packed, tmp_path):
    parts = tmp_path / "parts"
    receive_all(packed, parts)
    part = parts / "fakedali-2.4.0-py3-none-any.whl.part01"
    data = bytearray(part.read_bytes())
    data[100] ^= 0xFF
    part.write_bytes(bytes(data))
    proc = run_sh("--prepare-only", "--parts", str(parts), "--work", str(tmp_path / "work"),
                  "--out", str(tmp_path / "out"))
    assert proc.returncode == 2
    assert "fakedali-2.4.0-py3-none-any.whl: FAILED" in proc.stderr
    assert "sha256 mismatch" in proc.stderr
    assert not (tmp_path / "work" / "site").exists()


def test_receive_refuses_a_batch_that_arrived_corrupted(packed, tmp_path):
    batch = tmp_path / "batch-1"
    shutil.copytree(packed / "batches" / "batch-1", batch)
    victim = next(p for p in sorted(batch.iterdir()) if p.name != MANIFEST)
    victim.write_bytes(victim.read_bytes()[:-1] + b"?")
    proc = run_sh("--receive", str(batch), "--parts", str(tmp_path / "parts"))
    assert proc.returncode != 0
    assert f"{victim.name}: sha256" in proc.stderr and "send batch-1 again" in proc.stderr


# ------------------------------------------------------------------------- the GPU step part


def test_gpu_step_variants_are_mvd_s_and_b_eager_and_compiled_bf16_flash_fused():
    variants = step.settings_for("gpu", False)
    seen = set()
    for v in variants:
        assert v.attention == "flash"
        assert {"train.precision=bf16", "optim.implementation=fused"} <= set(v.overrides)
        compiled = "model.compile=true" in v.overrides
        seen.add((v.config.name, compiled))
        assert v.synth is step.GPU_SHARDS  # one shard set, the one the pack carries
    assert seen == {(c, on) for c in ("pretrain_mvd_small_k400.yaml", "pretrain_mvd_base_k400.yaml")
                    for on in (False, True)}
    s = step.GPU_SHARDS
    assert pack.estimate_bytes(s["num_videos"], s["width"], s["height"], s["num_frames"]) \
        <= pack.MAX_SET_BYTES


def test_matmul_ceiling_is_a_valid_tflops_record():
    (rec,) = report.validate_records("step", [step.matmul_ceiling(torch.device("cpu"), n=64,
                                                                  iters=2, rounds=1)])
    assert rec["name"] == "bf16_matmul_ceiling" and rec["unit"] == "TFLOP/s" and rec["value"] > 0
    assert rec["shape"] == "64x64x64"


def test_attention_backend_names_the_choices():
    with step.attention_backend("default"):
        pass
    with pytest.raises(ValueError, match="'flash' or 'default'"):
        step.attention_backend("math")
