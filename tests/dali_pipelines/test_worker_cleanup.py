"""A killed training process must not leave DALI's reader workers behind."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import os, sys, time
from dali_pipelines import PretrainLoader
loader = PretrainLoader(sys.argv[1], 2, device="cpu", num_frames=8, sampling_rate=2, input_size=32,
                        teacher_input_size=32, patch_size=16, reader_workers=2)
next(iter(loader))
print("ready", flush=True)
time.sleep(120)
"""


def _children(pid: int) -> list[int]:
    kids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    kids.append(int(d.name))
            except (OSError, IndexError, ValueError):
                pass
    return kids


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_reader_workers_exit_when_the_loader_process_is_killed(synth_shards):
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(synth_shards)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        workers = _children(proc.pid)
        assert workers, "the loader started no worker processes"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    deadline = time.time() + 20
    while any(_alive(w) for w in workers) and time.time() < deadline:
        time.sleep(0.1)
    left = [w for w in workers if _alive(w)]
    for w in left:
        os.kill(w, signal.SIGKILL)
    assert not left, f"worker processes {left} outlived the killed loader process"
