"""The GPU check's DALI half, on CPU (benchmarks/gpu/pack.py, wheels.py, manifest.py, run.sh):
the slim wheel keeps the CPython 3.12 runtime alone and installs; the pack splits files and cuts
parts that fit beside the working tree; run.sh receives each part in its own call, and the last
call reassembles, checks the sha256s, installs and unpacks, or says which part is missing or
corrupt; the GPU step variants' settings. Offline: the packs here are of tiny real wheels."""

from __future__ import annotations

import base64
import ctypes
import hashlib
import json
import os
import random
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks import report, step, timing
from benchmarks.gpu import manifest as pack_format
from benchmarks.gpu import decode_check, nvdec, pack, plan, wheels
from benchmarks.gpu.manifest import MANIFEST, MiB
from dali_pipelines import load_shard_dir

REPO = Path(__file__).resolve().parents[2]
RUN_SH = REPO / "benchmarks" / "gpu" / "run.sh"
KiB = 1024
PART = 1280 * KiB  # a pack small enough to make in seconds that splits the wheel in two parts
FAKE_REQS = [("fakedep", "1.0"), ("otherdep", "2.0")]
TINY_CHECK = pack.CheckSet(num_videos=4, num_frames=16, width=160, height=160)
DALI_WHEEL = "nvidia_dali_cuda130-2.4.0-py3-none-manylinux_2_28_x86_64.whl"
LAST = plan.DALI_CALLS[-1].name  # the call that installs and runs the DALI stages


def sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def cat(parts: list[Path], out: Path) -> None:
    """Reassemble as run.sh does: `cat PART... > NAME`."""
    subprocess.run(["bash", "-c", 'cat "${@:2}" > "$1"', "_", str(out), *map(str, parts)],
                   check=True)


def make_wheel(folder: Path, name: str, version: str, files: dict[str, bytes],
               filename: str | None = None) -> Path:
    """A real, installable wheel of `files` (stored), with METADATA, WHEEL and RECORD."""
    dist = f"{name}-{version}.dist-info"
    files = {**files,
             f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
             f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: false\n"
                              b"Tag: py3-none-any\n"}
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    files[f"{dist}/RECORD"] = ("\n".join(record + [f"{dist}/RECORD,,"]) + "\n").encode()
    out = folder / (filename or f"{name}-{version}-py3-none-any.whl")
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        for path, data in files.items():
            z.writestr(path, data)
    return out


def fake_dali(folder: Path) -> Path:
    """A wheel named as the pinned DALI, laid out as DALI's: a module, extension modules for
    several Pythons, headers and bytecode, and 1600 KiB of random bytes (so that it splits)."""
    rnd = random.Random(0)
    return make_wheel(folder, "nvidia_dali_cuda130", "2.4.0", {
        "nvidia/dali/__init__.py": b"VALUE = 'slim dali'\n",
        "nvidia/dali/libdali_fake.so": rnd.randbytes(1600 * KiB),
        "nvidia/dali/backend_impl.cpython-312-x86_64-linux-gnu.so": b"312",
        "nvidia/dali/backend_impl.cpython-311-x86_64-linux-gnu.so": b"311",
        "nvidia/dali/backend_impl.cpython-314t-x86_64-linux-gnu.so": b"314t",
        "nvidia/dali/include/dali/core.h": b"// header",
        "nvidia/dali/__pycache__/x.cpython-312.pyc": b"pyc",
    }, filename=DALI_WHEEL)


@pytest.fixture(scope="module")
def packed(tmp_path_factory) -> Path:
    """A pack of the fake DALI (slimmed, xz), two tiny wheels and the tiny check shard set."""
    root = tmp_path_factory.mktemp("gpu_pack")
    wheels = root / "wheels"
    wheels.mkdir()
    fake_dali(wheels)
    make_wheel(wheels, "fakedep", "1.0", {"fakedep_probe/__init__.py": b"VALUE = 'fakedep'\n"})
    make_wheel(wheels, "otherdep", "2.0", {"otherdep_probe/__init__.py": b"VALUE = 'other'\n"})
    make_wheel(wheels, "unrelated", "9.9", {"unrelated_probe/__init__.py": b""})  # left behind
    pack.pack(root / "pack", wheels, strip=False, sets=("check",), check=TINY_CHECK,
              reqs=FAKE_REQS, part_bytes=PART, workers=1)
    return root / "pack"


def run_sh(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(RUN_SH), *args], capture_output=True, text=True,
                          env={**os.environ, "PYTHON": sys.executable}, timeout=300)


def summary_of(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


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


def test_find_wheels_takes_cp312_manylinux_wheels_and_names_what_is_wrong(tmp_path):
    good = ["optree-0.20.0-cp312-cp312-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl",
            "av-18.1.0-cp311-abi3-manylinux_2_28_x86_64.whl",
            "six-1.17.0-py2.py3-none-any.whl"]
    for name in [*good, "gast-0.7.0-cp311-cp311-manylinux_2_28_x86_64.whl"]:
        (tmp_path / name).touch()
    reqs = [("optree", "0.20.0"), ("av", "18.1.0"), ("six", "1.17.0")]
    assert [p.name for p in wheels.find_wheels(tmp_path, reqs)] == good
    with pytest.raises(pack_format.PackError) as err:
        wheels.find_wheels(tmp_path, [*reqs, ("gast", "0.7.0"), ("makefun", "1.16.0")])
    assert "missing gast==0.7.0 makefun==1.16.0 (add --download" in str(err.value)
    assert ("gast-0.7.0-cp311-cp311-manylinux_2_28_x86_64.whl (not for CPython 3.12"
            in str(err.value))


def test_requirements_pin_the_small_wheels_as_constraints_txt():
    pins = dict(wheels.requirements())
    assert set(pins) == set(wheels.WHEELS)
    lock = {line.split("==")[0]: line.split("==")[1] for line in
            (REPO / "constraints.txt").read_text().splitlines() if "==" in line}
    assert all(pins[n] == lock[n] for n in pins)
    assert dict(wheels.requirements(wanted=(wheels.DALI,)))[wheels.DALI] == lock[wheels.DALI]


# ------------------------------------------------------------------------- the slim wheel


@pytest.mark.parametrize("path,keep", [
    ("nvidia/dali/backend_impl.cpython-312-x86_64-linux-gnu.so", True),
    ("nvidia/dali/backend_impl.cpython-311-x86_64-linux-gnu.so", False),
    ("nvidia/dali/backend_impl.cpython-314t-x86_64-linux-gnu.so", False),
    ("nvidia/dali/include/dali/core.h", False),
    ("nvidia/dali/__pycache__/pipeline.cpython-312.pyc", False),
    ("nvidia/dali/libdali_operators.so", True),
    ("nvidia/dali/.libs/libavcodec-0c04e3c0.so.63", True),
    ("nvidia/dali/pipeline.py", True),
    ("../../../bin/rec2idx", False),  # an installed dist's script, outside site-packages
])
def test_the_slim_wheel_keeps_the_cpython_312_runtime_alone(path, keep):
    assert wheels.kept(path) is keep


@pytest.mark.slow  # seconds of packing or model building
def test_the_slim_wheel_installs_with_pip_and_records_what_it_holds(tmp_path):
    fake_dali(tmp_path)
    packed, slimmed = wheels.slim_wheel(tmp_path / "out", tmp_path, strip=False)
    assert packed.name == DALI_WHEEL + ".xz" and slimmed["files_dropped"] == 4
    subprocess.run(["xz", "-d", "-k", str(packed)], check=True)
    wheel = packed.with_suffix("")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        assert all(i.compress_type == zipfile.ZIP_STORED for i in z.infolist())
    assert "nvidia/dali/backend_impl.cpython-312-x86_64-linux-gnu.so" in names
    assert not any("cpython-311" in n or "include/" in n or n.endswith(".pyc") for n in names)
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                    "--target", str(site), str(wheel)], check=True)
    assert (site / "nvidia" / "dali" / "__init__.py").read_text() == "VALUE = 'slim dali'\n"


# ---------------------------------------------------------------------------------- the pack


@pytest.mark.slow  # seconds of packing or model building
def test_the_pack_cuts_parts_that_fit_and_hold_every_piece_once(packed):
    manifest = pack_format.load(packed / MANIFEST)
    kinds = {f["name"]: f["kind"] for f in manifest["files"]}
    assert kinds == {DALI_WHEEL + ".xz": "wheel-xz", "fakedep-1.0-py3-none-any.whl": "wheel",
                     "otherdep-2.0-py3-none-any.whl": "wheel", "shards-check.tar": "shards"}
    assert [b["name"] for b in manifest["batches"]] == ["dali-part-1", "dali-part-2"]
    where = {}
    for batch in manifest["batches"]:
        folder = packed / batch["name"]
        assert {p.name for p in folder.iterdir()} == {*batch["pieces"], MANIFEST}
        assert batch["bytes"] <= PART
        where.update({n: folder / n for n in batch["pieces"]})
    for piece, info in pack_format.expected_pieces(manifest).items():
        assert sha(where[piece]) == info["sha256"]
    dali = next(f for f in manifest["files"] if f["kind"] == "wheel-xz")
    assert len(dali["parts"]) == 2  # split across the two parts
    cat([where[p["name"]] for p in dali["parts"]], packed / "dali.xz")
    assert sha(packed / "dali.xz") == dali["sha256"]
    sizes = pack.sizes(manifest, packed)
    assert set(sizes["carry"]) == {f"{plan.PACK_DIR}/dali-part-1", f"{plan.PACK_DIR}/dali-part-2"}


@pytest.mark.slow  # seconds of packing or model building
def test_the_check_set_is_at_least_160_px_in_three_codecs(packed, tmp_path):
    with tarfile.open(packed / "build" / "shards-check.tar") as tar:
        tar.extractall(tmp_path, filter="data")
    for codec in TINY_CHECK.codecs:
        table = load_shard_dir(tmp_path / "check" / codec).table
        assert len(table) == TINY_CHECK.num_videos
        assert min(table.width) >= 160 and min(table.height) >= 160
    assert min(pack.CheckSet().width, pack.CheckSet().height) >= 160


# ------------------------------------------------------------------------------------ run.sh


def test_run_sh_is_valid_bash():
    proc = subprocess.run(["bash", "-n", str(RUN_SH)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.slow
def test_each_call_receives_its_part_and_the_last_installs_everything(packed, tmp_path):
    machine = tmp_path / "machine"
    where = ["--machine", str(machine)]
    first = run_sh("--call", "dali-1", "--part", str(packed / "dali-part-1"),
                   "--out", str(tmp_path / "out1"), "--budget", "200", *where)
    assert "received dali-part-1" in (tmp_path / "out1" / "run.log").read_text(), first.stdout
    assert summary_of(tmp_path / "out1")["stages"][0]["status"] == "ran"
    out = tmp_path / "out2"
    # the tiny pack has two parts; its last goes with the plan's last (installing) call
    proc = run_sh("--call", LAST, "--part", str(packed / "dali-part-2"), "--install",
                  "--out", str(out), "--budget", "200", *where)
    s = summary_of(out)
    setup = {r["stage"]: r["status"] for r in s["stages"][:2]}
    assert setup == {"receive": "ran", "install": "ran"}, (proc.stdout + proc.stderr)[-3000:]
    site = machine / "site"
    # the slimmed wheel, unpacked from xz and installed, wins over this venv's own DALI and
    # its regular `nvidia` package, whose other folders stay importable
    probe = subprocess.run([sys.executable, "-c", "import fakedep_probe, otherdep_probe, "
                            "nvidia.dali, nvidia; print(fakedep_probe.VALUE, otherdep_probe."
                            "VALUE, nvidia.dali.VALUE.replace(' ', '_'), len(nvidia.__path__))"],
                           capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(site)})
    got = probe.stdout.split()
    assert got[:3] == ["fakedep", "other", "slim_dali"], probe.stderr
    assert int(got[3]) >= 2  # this site's nvidia and the venv's
    assert not list(site.glob("nvidia/dali/*cpython-311*"))
    assert not (site / "unrelated_probe").exists()
    assert (machine / "shards" / "check" / "hevc" / "manifest.json").exists()
    # the stages after the install: skipped for want of CUDA here, every one named
    later = {r["stage"]: r for r in s["stages"][2:]}
    assert list(later) == [st.name for st in plan.DALI_CALLS[-1].stages]
    assert all(r["status"] == "skipped" and r["reason"] == "no CUDA"
               for name, r in later.items() if name != "env")


@pytest.mark.slow  # seconds of packing or model building
def test_the_last_call_says_which_part_is_missing(packed, tmp_path):
    out = tmp_path / "out"
    proc = run_sh("--call", LAST, "--part", str(packed / "dali-part-2"), "--install",
                  "--out", str(out), "--machine", str(tmp_path / "machine"))
    assert proc.returncode != 0
    log = (out / "run.log").read_text()
    assert "missing: dali-part-1" in log and "Run the DALI calls again from the first" in log
    s = summary_of(out)
    assert [(r["stage"], r["status"]) for r in s["stages"][:2]] == [("receive", "ran"),
                                                                    ("install", "failed")]
    assert {r["reason"] for r in s["stages"][2:]} == {"setup failed"}
    assert not (tmp_path / "machine" / "site").exists()


@pytest.mark.slow  # seconds of packing or model building
def test_a_part_corrupted_in_transit_is_refused_naming_it(packed, tmp_path):
    part = tmp_path / "dali-part-1"
    part.mkdir()
    for f in (packed / "dali-part-1").iterdir():
        part.joinpath(f.name).write_bytes(f.read_bytes())
    victim = next(p for p in sorted(part.iterdir()) if p.name != MANIFEST)
    victim.write_bytes(victim.read_bytes()[:-1] + b"?")
    out = tmp_path / "out"
    proc = run_sh("--call", "dali-1", "--part", str(part), "--out", str(out),
                  "--machine", str(tmp_path / "machine"))
    assert proc.returncode != 0
    log = (out / "run.log").read_text()
    assert f"{victim.name}: sha256" in log and "again" in log


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
    (rec,) = report.validate_records("step", [timing.matmul_ceiling(torch.device("cpu"), n=64,
                                                                  iters=2, rounds=1)])
    assert rec["name"] == "bf16_matmul_ceiling" and rec["unit"] == "TFLOP/s" and rec["value"] > 0
    assert rec["shape"] == "64x64x64"


def test_attention_backend_names_the_choices():
    with step.attention_backend("default"):
        pass
    with pytest.raises(ValueError, match="'flash' or 'default'"):
        step.attention_backend("math")


# ------------------------------------------------------------- the DALI stages' CPU-side parts


def test_the_decode_checks_cpu_reference_is_the_cpu_loaders_first_batch(synth_shards, tmp_path):
    import shutil

    data = tmp_path / "vp9"
    shutil.copytree(synth_shards, data)
    saved = np.load(decode_check.reference(data))
    assert saved["video"].dtype == np.uint8
    assert saved["video"].shape == (2, 3, 8, 64, 64) and len(saved["keys"]) == 2
    again, keys, _, _ = decode_check.first_batch(data, "cpu")
    assert decode_check.compare(again, saved["video"])["within"]
    assert list(keys) == [str(k) for k in saved["keys"]]
    off = saved["video"].astype(np.int16) + 40
    assert not decode_check.compare(np.clip(off, 0, 255).astype(np.uint8), saved["video"])["within"]


def test_nvdec_caps_struct_has_cuviddec_h_layout():
    # cuviddec.h: 3 ints + 3 reserved, 2 chars + short, 3 uints, 2 shorts, 2 chars + short,
    # 10 reserved uints
    assert ctypes.sizeof(nvdec.DecodeCaps) == 88
    assert nvdec.DecodeCaps.nNumNVDECs.offset == 25 and nvdec.DecodeCaps.nMinWidth.offset == 40


def test_step_variants_are_chosen_by_name_and_an_unknown_one_is_named():
    chosen = step.settings_for("gpu", False, ("mvd_b", "mvd_s"))
    assert [v.name for v in chosen] == ["mvd_b", "mvd_s"]
    with pytest.raises(ValueError, match="unknown step variant.*mvd_x.*choose from mvd_s"):
        step.settings_for("gpu", False, ("mvd_x",))
    with pytest.raises(ValueError, match="--feed synthetic measures the step on a GPU"):
        step.run(Path("unused"), device="cpu", quick=True, feed="synthetic")


def test_variants_and_feed_are_step_flags_only():
    from benchmarks import cli

    args = cli.parse_args(["step", "--device", "gpu", "--feed", "synthetic", "--variants",
                           "mvd_s,mvd_b", "--out", "x"])
    assert args.variants == ("mvd_s", "mvd_b") and args.feed == "synthetic"
    with pytest.raises(SystemExit):
        cli.parse_args(["loader", "--feed", "synthetic", "--out", "x"])


@pytest.mark.slow  # seconds of packing or model building
def test_the_synthetic_feed_measures_the_trainers_step_without_a_loader():
    """The torch-only step of call 1, on the tiny config on CPU (where the host-sync check
    says it needs CUDA): valid records, no shards made, the step's FLOPs counted."""
    settings = replace(step.QUICK, warmup_steps=1, steps=2, rounds=1)
    records = report.validate_records("step", step.measure_synthetic(settings, 2, None, "cpu"))
    by_name = {r["name"]: r for r in records}
    assert by_name["compute_only"]["value"] > 0 and by_name["flops_per_clip"]["value"] > 0
    assert by_name["steady_state_host_syncs"]["skipped"] == "no CUDA"
    assert by_name["compute_only"]["feed"].startswith("synthetic")
