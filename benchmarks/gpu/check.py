"""Run one call of the GPU check (benchmarks/gpu/plan.py) and leave what the machine returns.

    python3 -m benchmarks.gpu.check --call torch --out OUT [--rehearse] [--budget S]

Each stage of the call runs as its own process under its own limit, cut further by what is left
of the call's budget; its output goes to WORK/logs/<stage>.log. A stage that needs CUDA is
skipped ("skipped: no CUDA") where torch sees none; a stage that would start with less than its
`min_start_s` left is skipped for want of time. After the stages (or after a setup step that
failed, or on SIGTERM from the caller's timeout) the call leaves exactly four files in OUT:

- `summary.md` and `summary.json` (`benchmarks.gpu.summary`): every stage with its status (ran;
  skipped, and why; failed or timed out, with its first error line) and every figure;
- `run.log`: this orchestration's own log;
- `gpu-check-<call>.tar.gz`: WORK, every stage's log and report.

`--rehearse` (a CPU machine): DALI, PyAV and webdataset are made unimportable in every stage, as
on the GPU machine (benchmarks/gpu/offline/sitecustomize.py); the stages' own limits (the GPU
machine's) give way to the call's budget alone, as imports on 2 cores outlast them.

Standard library only: it must run before anything is installed, and after anything failed.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from benchmarks.gpu import summary
from benchmarks.gpu.plan import BY_NAME, MACHINE_DIR, Call, Stage

REPO = Path(__file__).resolve().parents[2]
OFFLINE = Path(__file__).with_name("offline")  # the rehearsal's import blocker
RESERVE_S = 10  # kept back from the budget for the tar and the summaries
MIN_STAGE_S = 5  # a stage is not started with less than this left
# Files above this stay out of the tar (the tar must stay under the 16 MiB a returned file may be)
TAR_FILE_BYTES = 2 * 2**20


class Orchestra:
    """One call's run: the clock, the log, the stage records."""

    def __init__(self, call: Call, out: Path, work: Path, budget_s: int, rehearse: bool,
                 machine: Path = Path(MACHINE_DIR)):
        self.call, self.out, self.work = call, out, work
        self.budget_s, self.rehearse, self.machine = budget_s, rehearse, machine
        self.start = time.monotonic()
        self.records: list[dict] = []
        out.mkdir(parents=True, exist_ok=True)
        work.mkdir(parents=True, exist_ok=True)
        (work / "logs").mkdir(exist_ok=True)
        self.log_file = open(out / "run.log", "a")
        self.env = dict(os.environ, PYTHONUNBUFFERED="1")
        path = [str(REPO)]
        site = machine / "site"
        if site.is_dir():
            path.insert(0, str(site))
        if rehearse:
            path.insert(0, str(OFFLINE))
        self.env["PYTHONPATH"] = os.pathsep.join(
            [*path, *filter(None, [os.environ.get("PYTHONPATH")])])
        self.cuda: bool | None = None

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def left(self) -> float:
        return self.budget_s - RESERVE_S - self.elapsed()

    def log(self, text: str) -> None:
        line = f"[{time.strftime('%H:%M:%S', time.gmtime())} +{self.elapsed():.0f}s] {text}"
        print(line, flush=True)
        self.log_file.write(line + "\n")
        self.log_file.flush()

    def has_cuda(self) -> bool:
        """Whether torch sees a CUDA device: from the env stage's probe when it ran, else asked
        once in a child (this process stays standard-library only)."""
        if self.cuda is None:
            try:
                probe = json.loads((self.work / "env" / "versions.json").read_text())
                self.cuda = bool(probe["environment"]["gpu"])
                how = "the env stage's probe"
            except (OSError, ValueError, KeyError, TypeError):
                child = subprocess.run(
                    [sys.executable, "-c", "import torch; print(torch.cuda.is_available())"],
                    capture_output=True, text=True, env=self.env, timeout=120)
                self.cuda = child.stdout.strip().endswith("True")
                how = "torch.cuda.is_available() in a child"
            self.log(f"CUDA {'available' if self.cuda else 'not available'} ({how})")
        return self.cuda

    def fill(self, arg: str) -> str:
        return (arg.replace("{py}", sys.executable).replace("{work}", str(self.work))
                .replace("{machine}", str(self.machine)))

    def run_stage(self, stage: Stage) -> dict:
        argv = [self.fill(a) for a in stage.argv]
        record = {"stage": stage.name, "limit_s": stage.limit_s, "command": shlex.join(argv),
                  "log": f"logs/{stage.name}.log"}
        left = self.left()
        if stage.needs_cuda and not self.has_cuda():
            return self._skip(record, "no CUDA")
        if left < max(MIN_STAGE_S, stage.min_start_s):
            return self._skip(record, f"no time: {left:.0f} s left of the {self.budget_s} s "
                                      f"budget, the stage starts with {stage.min_start_s} s")
        # the limits are the GPU machine's; a rehearsal on a slow CPU machine keeps only the
        # call's budget (its imports alone take longer than a stage's limit there)
        limit = int(left if self.rehearse else min(stage.limit_s, left))
        self.log(f"{stage.name}: start, limit {limit} s: {record['command']}")
        log_path = self.work / record["log"]
        t0 = time.monotonic()
        with open(log_path, "w") as log:
            proc = subprocess.Popen(argv, cwd=REPO, env=self.env, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
            try:
                rc = proc.wait(timeout=limit)
                status = "ran" if rc == 0 else "failed"
            except subprocess.TimeoutExpired:
                _kill(proc)
                rc, status = None, "timeout"
        record.update(status=status, rc=rc, seconds=round(time.monotonic() - t0, 1),
                      limit_s=limit)
        if status != "ran":
            record["first_error"] = summary.first_error(log_path.read_text(errors="replace"))
        self.log(f"{stage.name}: {status} (rc {rc}) in {record['seconds']} s"
                 + (f": {record['first_error']}" if record.get("first_error") else ""))
        self.records.append(record)
        return record

    def _skip(self, record: dict, why: str) -> dict:
        record.update(status="skipped", reason=why)
        self.log(f"{record['stage']}: skipped: {why}")
        self.records.append(record)
        return record

    def setup_record(self, name: str, status: str, seconds: float, detail: str = "") -> None:
        record = {"stage": name, "status": status, "seconds": round(seconds, 1)}
        if detail:
            record["first_error" if status == "failed" else "detail"] = detail
        self.records.append(record)

    def finish(self) -> int:
        """The summaries, the tar and the log into OUT; exit status 0 when every stage that
        was not skipped ran."""
        (self.work / "stages.json").write_text(json.dumps(self.records, indent=1) + "\n")
        result = summary.summarize(self.work, self.call, self.records, rehearse=self.rehearse,
                                   seconds=self.elapsed())
        summary.write(result, self.out)
        self.log(f"done in {self.elapsed():.0f} s: "
                 + ", ".join(f"{r['stage']} {r['status']}" for r in self.records))
        self.log_file.close()
        tar_path = self.out / f"gpu-check-{self.call.name}.tar.gz"
        left_out = []

        def small(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
            if info.isfile() and info.size > TAR_FILE_BYTES:
                left_out.append(f"{info.name} ({info.size} bytes)")
                return None
            return info

        with tarfile.open(tar_path, "w:gz") as tar:
            tar.add(self.work, arcname=f"gpu-check-{self.call.name}", filter=small)
            tar.add(self.out / "run.log", arcname=f"gpu-check-{self.call.name}/run.log")
        if left_out:  # said in run.log, which travels beside the tar
            with open(self.out / "run.log", "a") as log:
                log.write(f"left out of the tar (over {TAR_FILE_BYTES} bytes): "
                          f"{', '.join(left_out)}\n")
        return 0 if result["ok"] else 1


def _kill(proc: subprocess.Popen) -> None:
    """The stage's whole process group: SIGTERM, then SIGKILL after 5 s."""
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m benchmarks.gpu.check",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--call", choices=tuple(BY_NAME), default="torch")
    parser.add_argument("--out", type=Path, required=True, help="what comes back (4 files)")
    parser.add_argument("--work", type=Path, default=None,
                        help="scratch and stage reports, tarred into OUT (default: a folder "
                        f"under {MACHINE_DIR}/work)")
    parser.add_argument("--machine", type=Path, default=Path(MACHINE_DIR),
                        help=f"what the calls received and installed (default {MACHINE_DIR})")
    parser.add_argument("--budget", type=int, default=None,
                        help="seconds for the whole call (default: the plan's budget)")
    parser.add_argument("--rehearse", action="store_true",
                        help="DALI, PyAV and webdataset unimportable, as on the GPU machine")
    parser.add_argument("--setup", action="append", default=[], metavar="NAME=STATUS:SECONDS",
                        help="a setup step run.sh did before (recorded as a stage)")
    args = parser.parse_args(argv)
    call = BY_NAME[args.call]
    out = args.out.resolve()
    work = (args.work or args.machine / "work" / f"{call.name}-{os.getpid()}").resolve()
    run = Orchestra(call, out, work, args.budget or call.budget_s, args.rehearse,
                    args.machine.resolve())
    # the caller's timeout ends this call with SIGTERM: leave the summary and tar first
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    failed_setup = False
    for item in args.setup:
        name, _, rest = item.partition("=")
        status, _, seconds = rest.partition(":")
        run.setup_record(name, status, float(seconds or 0))
        failed_setup |= status == "failed"
    run.log(f"call {call.name}: budget {run.budget_s} s, out {out}, work {work}"
            + (", rehearsal (DALI, PyAV, webdataset unimportable)" if args.rehearse else ""))
    try:
        for stage in call.stages:
            if failed_setup:
                run._skip({"stage": stage.name, "limit_s": stage.limit_s}, "setup failed")
            else:
                run.run_stage(stage)
    except KeyboardInterrupt:
        run.log("interrupted (SIGTERM or ^C): writing what was measured")
    return run.finish()


if __name__ == "__main__":
    sys.exit(main())
