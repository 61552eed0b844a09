"""The GPU check's plan: every device call, its stages, what it carries, its command and time.

One source for the calls: `check` runs a call's stages from here, PLAN.md is rendered from here
(`python3 -m benchmarks.gpu.plan --write`; a test checks that PLAN.md is current), and `validate`
holds the plan to the machine's limits (as the project describes the GPU machine): a command of at most 2000 characters,
stage limits that add up to less than the call's budget, at most 64 MiB carried with the working
tree, at most 8 files returned.

The calls, in order (each stands alone: it checks what it needs and says what is missing):

1. `torch`: torch alone, nothing carried, the machine's own torch; the most important figures.
2. `dali-1` ... `dali-N`: one part each of what benchmarks.gpu.pack made (the slimmed DALI
   runtime, small wheels, shards; N from pack-sizes.json, 3 today), kept outside the repository
   with its sha256 checked; the last (`--install`) also reassembles, checks, installs and runs
   the DALI stages.

The DALI calls run back to back: the machine is given back when idle for 30 s, and the
received parts with it. The last call then says which part is missing: run them again from the
first.

Standard library only: it runs on the GPU machine before anything is installed.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PLAN_MD = Path(__file__).with_name("PLAN.md")
# What benchmarks.gpu.pack made: each carried part's bytes and sha256 (committed, so that the
# plan's sizes and the machine's checks do not need the ignored pack folder)
PACK_SIZES = Path(__file__).with_name("pack-sizes.json")
MiB = 2**20
CALL_BYTES = 64 * MiB  # a call carries the working tree plus its carried paths, 64 MiB in all
# The working tree's share of a call (tracked and untracked-not-ignored files; a test holds the
# tree to it): the pack's parts are cut to fit beside it
TREE_BUDGET = 4 * MiB
# What one carried part may hold, its copy of the manifest included (benchmarks.gpu.pack cuts
# the parts to this)
PART_LIMIT = CALL_BYTES - TREE_BUDGET
COMMAND_CHARS = 2000
RETURN_FILES = 8
# A compiled variant starts only with this many seconds left ("compiled if time remains").
PACK_DIR = ".gpu-pack"  # git-ignored; benchmarks.gpu.pack writes the parts here
# Where the machine keeps what calls receive and install: outside the repository, so that no
# later call's copy of the working tree replaces it (it lasts while the machine stays warm)
MACHINE_DIR = "/tmp/mvd-gpu"
# The torch-only cuda tests, by file: none imports DALI, PyAV or webdataset at module level
# (the rehearsal collects them with those three unimportable)
TORCH_CUDA_TESTS = ("tests/mvd/test_cuda.py", "tests/mvd/engine/test_checkpoint.py")
STEP_ARGS = ("-m", "benchmarks", "step", "--device", "gpu", "--feed", "synthetic")


@dataclass(frozen=True)
class Stage:
    """One timed stage of a call: `argv` runs with `{py}`, `{work}` (the call's scratch and
    results folder, tarred at the end) and `{machine}` (what the calls received and installed,
    MACHINE_DIR by default) filled in."""

    name: str
    limit_s: int
    argv: tuple[str, ...]
    what: str
    needs_cuda: bool = False
    min_start_s: int = 0  # start only with this much of the budget left ("if time remains")


@dataclass(frozen=True)
class Call:
    name: str
    title: str
    command: str  # what the device tool runs, in the repository root
    carry: tuple[str, ...]
    budget_s: int  # the whole command, its own setup included
    expected_s: int
    stages: tuple[Stage, ...]
    setup: str = ""  # what run.sh does before the stages
    setup_s: int = 0
    returns: tuple[str, ...] = ("summary.md", "summary.json", "run.log", "gpu-check-CALL.tar.gz")
    notes: tuple[str, ...] = field(default_factory=tuple)


def _pytest(*files: str) -> tuple[str, ...]:
    return ("{py}", "-m", "pytest", "-q", "-rA", "-m", "cuda", "-p", "no:cacheprovider",
            "-o", "addopts=", "--junitxml", "{work}/pytest/junit.xml", *files)


TORCH = Call(
    name="torch",
    title="Call 1: torch alone, nothing carried",
    command="bash benchmarks/gpu/run.sh --call torch",
    carry=(),
    budget_s=330,
    expected_s=300,
    stages=(
        Stage("env", 20, ("{py}", "-m", "benchmarks.gpu.probe", "--out", "{work}/env",
                          "--needs", "torch,numpy,yaml,timm,pytest"),
              "nvidia-smi, versions of every module the check imports"),
        Stage("pytest", 100, _pytest(*TORCH_CUDA_TESTS),
              "the torch-only cuda tests, named by file (a collection error elsewhere cannot "
              "stop them)", ),
        Stage("dryrun", 30, ("{py}", "-m", "benchmarks.gpu.memory_plan", "--out",
                             "{work}/dryrun", "--variants", "mvd_s,mvd_b"),
              "the dry run's peak_memory_gib_per_rank of MVD-S and MVD-B at the step's "
              "per-GPU batch (fake tensors, no GPU needed)"),
        Stage("step-eager", 80, ("{py}", *STEP_ARGS, "--variants", "mvd_s,mvd_b",
                                 "--out", "{work}/step-eager", "--work", "{work}/scratch"),
              "mvd-bench step --device gpu --feed synthetic, MVD-S and MVD-B eager at 16x224 "
              "(bf16, flash SDPA, fused AdamW): clips/s, MFU against the bf16 matmul ceiling "
              "measured in the same run, max_memory_allocated, steady-state steps under "
              "set_sync_debug_mode('error'); each variant written as it ends", needs_cuda=True),
        Stage("step-compiled", 90, ("{py}", *STEP_ARGS, "--variants",
                                    "mvd_s_compiled,mvd_b_compiled", "--out",
                                    "{work}/step-compiled", "--work", "{work}/scratch"),
              "the same, compiled (model.compile), if time remains", needs_cuda=True,
              min_start_s=60),
    ),
    setup="nothing to install: the machine's python3, torch, timm, numpy, pyyaml, pytest",
    setup_s=2,
)

def pack_sizes() -> dict[str, int]:
    """{carried path: bytes} as the pack recorded them ({} before the first pack)."""
    try:
        return {k: v["bytes"] for k, v in json.loads(PACK_SIZES.read_text())["carry"].items()}
    except (OSError, ValueError, KeyError):
        return {}


def _receive(n: int, parts: int) -> Call:
    return Call(
        name=f"dali-{n}",
        title=f"Call {n + 1}: part {n} of {parts} of the DALI runtime",
        command=f"bash benchmarks/gpu/run.sh --call dali-{n} --part {PACK_DIR}/dali-part-{n}",
        carry=(f"{PACK_DIR}/dali-part-{n}",),
        budget_s=60,
        expected_s=20,
        stages=(
            Stage("env", 30, ("{py}", "-m", "benchmarks.gpu.probe", "--out", "{work}/env",
                              "--needs", "torch"),
                  "nvidia-smi, the driver's libnvcuvid, module versions"),
        ),
        setup=f"copy the part into {MACHINE_DIR}/parts (outside the repository) and check "
              "its sha256 against the pack's manifest",
        setup_s=5,
        notes=("Run the next call within 30 s of this one's return: an idle machine is given "
               "back with the parts it received.",),
    )


def _last(parts: int) -> Call:
    return Call(
        name=f"dali-{parts}",
        title=f"Call {parts + 1}: part {parts} of {parts}, install, the DALI stages",
        command=f"bash benchmarks/gpu/run.sh --call dali-{parts} --part "
                f"{PACK_DIR}/dali-part-{parts} --install",
        carry=(f"{PACK_DIR}/dali-part-{parts}",),
        budget_s=300,
        expected_s=280,
        stages=(
            Stage("env", 15, ("{py}", "-m", "benchmarks.gpu.probe", "--out", "{work}/env",
                              "--needs", "torch,nvidia.dali,numpy,yaml"),
                  "versions, DALI's import, the NVDEC library"),
            Stage("nvdec", 15, ("{py}", "-m", "benchmarks.gpu.nvdec", "--shards",
                                "{machine}/shards/check", "--out", "{work}/nvdec"),
                  "NVDEC engine count, and cuvidGetDecoderCaps for each check-set stream's codec, "
                  "chroma and bit depth, against its size", needs_cuda=True),
            Stage("decode", 45, ("{py}", "-m", "benchmarks.gpu.decode_check", "--shards",
                                 "{machine}/shards/check", "--out", "{work}/decode"),
                  "each codec (H.264, HEVC, VP9, >= 160 px) through NVDEC against the CPU decode "
                  "made here, with tolerances", needs_cuda=True),
            Stage("loader-sweep", 120, ("{py}", "-m", "benchmarks.gpu.sweep", "--shards",
                                        "{machine}/shards/check", "--out", "{work}/sweep"),
                  "the GPU loader's clips/s over 1/2/4/7 decode pipelines on the H.264, HEVC and "
                  "VP9 shards, uint8 and float; each point written as it ends", needs_cuda=True),
            Stage("data-wait", 60, ("{py}", "-m", "benchmarks", "step", "--device", "gpu",
                                    "--feed", "loader", "--variants", "mvd_s", "--out",
                                    "{work}/data-wait", "--work", "{machine}/shards/bench"),
                  "MVD-S fed by the GPU loader: end to end, compute only, loader only, the data-wait "
                  "share", needs_cuda=True, min_start_s=40),
        ),
        setup=f"receive the part into {MACHINE_DIR}/parts, check that the others are there, reassemble "
              "with cat, check the sha256, xz -d, pip install --no-deps --no-index --target "
              f"{MACHINE_DIR}/site the slimmed DALI wheel and the small wheels, unpack the shards",
        setup_s=25,
        notes=("Needs the earlier parts on the same warm machine: run it at once after them. When "
               "one is missing (the machine went back) it stops at once saying so: run the DALI "
               "calls again from the first.",),
    )


def pack_parts() -> int:
    """How many parts the pack was cut into (pack-sizes.json; before the first pack, 2:
    the GPU machine notes' estimate of the slimmed runtime, ~120 MB, in parts of PART_LIMIT)."""
    return len(pack_sizes()) or 2


_PARTS = pack_parts()
DALI_CALLS = (*(_receive(n, _PARTS) for n in range(1, _PARTS)), _last(_PARTS))
CALLS = (TORCH, *DALI_CALLS)
BY_NAME = {c.name: c for c in CALLS}


def worktree_bytes(repo: Path = REPO) -> int:
    """Bytes of what a device call copies besides its carried paths: tracked files and untracked
    ones that git does not ignore."""
    import subprocess

    listed = subprocess.run(["git", "-C", str(repo), "ls-files", "-z", "--cached", "--others",
                             "--exclude-standard"], capture_output=True, check=True).stdout
    paths = (repo / p.decode() for p in listed.split(b"\0") if p)
    return sum(p.stat().st_size for p in paths if p.is_file())


def validate(calls: tuple[Call, ...] = CALLS) -> list[str]:
    """Every way the plan breaks the machine's limits (empty: it fits)."""
    errors = []
    for call in calls:
        if len(call.command) > COMMAND_CHARS:
            errors.append(f"{call.name}: the command has {len(call.command)} characters, more "
                          f"than {COMMAND_CHARS}")
        total = call.setup_s + sum(s.limit_s for s in call.stages)
        if total >= call.budget_s:
            errors.append(f"{call.name}: setup and stage limits add up to {total} s, not less "
                          f"than the call's budget of {call.budget_s} s")
        if call.expected_s > call.budget_s:
            errors.append(f"{call.name}: expected {call.expected_s} s, over its budget")
        if len(call.returns) > RETURN_FILES:
            errors.append(f"{call.name}: returns {len(call.returns)} files, more than "
                          f"{RETURN_FILES}")
        names = [s.name for s in call.stages]
        if len(set(names)) != len(names):
            errors.append(f"{call.name}: stage names repeat ({names})")
    return errors


def render(sizes: dict | None = None) -> str:
    """PLAN.md: the calls in order, each with its command, carry, size with the working tree,
    expected time and stages. Carried sizes come from the pack's record (pack-sizes.json); the
    working tree is counted at its budget, TREE_BUDGET (a test holds it there)."""
    sizes = pack_sizes() if sizes is None else sizes
    lines = [
        "# The GPU check: the device calls, in order",
        "",
        "Rendered by `python3 -m benchmarks.gpu.plan --write` from `benchmarks/gpu/plan.py` "
        "(a test checks that it is current). Limits (as the project describes the GPU machine): a command of at most 2000 "
        "characters and 10 minutes; 64 MiB carried with the working tree; 8 files back from "
        "`$OUT`; a machine idle for 30 s is given back with everything on it.",
        "",
        "Every call writes the same four files into `$OUT`: `summary.md`, `summary.json` "
        "(every stage with its status: ran, skipped and why, failed with its first error line, "
        "and every figure), `run.log`, and `gpu-check-<call>.tar.gz` (every stage's log and "
        "report). No GPU run has happened yet.",
        "",
        "Order: call 1 first, alone (it needs nothing carried and brings back the most "
        "important figures); then, if at least 6 minutes of device time remain, the DALI "
        "calls back to back, each within 30 s of the last one's return. Each call can start "
        "from scratch: call 1 always; the DALI calls from the first part (the last one says "
        "which part is missing when the machine went back in between).",
        "",
        f"Where the parts wait: a warm machine keeps the repository's ignored files between "
        f"calls, but a call's carried path replaces that path there; so every part is copied "
        f"at once into `{MACHINE_DIR}/parts`, outside the repository, and each call carries "
        "only its own part folder (`.gpu-pack/dali-part-N`, git-ignored).",
        "",
        "Rehearsal on a CPU machine: `bash benchmarks/gpu/run.sh --rehearse` runs call 1 with "
        "the same orchestration, DALI, PyAV and webdataset made unimportable; CUDA stages say "
        "\"skipped: no CUDA\".",
        "",
    ]
    tree = TREE_BUDGET / MiB
    for call in CALLS:
        carried = {c: sizes.get(c) for c in call.carry}
        carried_mib = sum(v or 0 for v in carried.values()) / MiB
        if not call.carry:
            size = f"the working tree only (at most {tree:.0f} MiB)"
        elif all(v is not None for v in carried.values()):
            size = (f"{carried_mib:.1f} MiB carried + at most {tree:.0f} MiB of working tree = "
                    f"at most {carried_mib + tree:.1f} of 64 MiB")
        else:
            size = (f"the pack is not recorded yet (`python -m benchmarks.gpu.pack ... --record`);"
                    f" a part is at most {PART_LIMIT / MiB:.2f} MiB with its manifest by "
                    f"construction, + at most {tree:.0f} MiB of working tree = 64 MiB")
        lines += [
            f"## {call.title} (`{call.name}`)",
            "",
            "```",
            call.command,
            "```",
            "",
            f"- carries: {', '.join(f'`{c}`' for c in call.carry) or 'nothing'}",
            f"- size with the working tree: {size}",
            f"- budget {call.budget_s} s (the command's own setup included); expected about "
            f"{call.expected_s} s; setup: {call.setup} (~{call.setup_s} s); give the device "
            f"call timeout_s={call.budget_s + 20} (the summary and tar are written within the "
            "budget)",
            *(f"- {note}" for note in call.notes),
            "",
            "| stage | limit (s) | needs CUDA | what |",
            "|---|---|---|---|",
            *(f"| {s.name} | {s.limit_s} | {'yes' if s.needs_cuda else 'no'} | {s.what}"
              + (f" (starts only with {s.min_start_s} s left)" if s.min_start_s else "") + " |"
              for s in call.stages),
            f"| (sum) | {call.setup_s + sum(s.limit_s for s in call.stages)} | | setup and "
            f"stage limits, under the budget of {call.budget_s} s |",
            "",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m benchmarks.gpu.plan",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help=f"write {PLAN_MD.name}")
    parser.add_argument("--json", action="store_true", help="print the calls as JSON")
    args = parser.parse_args(argv)
    errors = validate()
    for e in errors:
        print(f"plan: {e}", file=sys.stderr)
    if args.json:
        print(json.dumps([asdict(c) for c in CALLS], indent=1))
    tree = worktree_bytes()
    if tree > TREE_BUDGET:
        errors.append(f"the working tree is {tree / MiB:.1f} MiB, over its budget of "
                      f"{TREE_BUDGET / MiB:.0f} MiB")
        print(f"plan: {errors[-1]}", file=sys.stderr)
    text = render()
    if args.write:
        PLAN_MD.write_text(text)
        print(f"wrote {PLAN_MD}")
    elif not args.json:
        print(text)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
