"""The GPU check's machine has DALI but no PyAV: the loaders import and decode VP9 without it."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import sys
sys.modules["av"] = None  # as if PyAV were not installed: importing it raises ImportError
from dali_pipelines import PretrainLoader
batch = next(iter(PretrainLoader(sys.argv[1], 2, device="cpu", num_frames=8, sampling_rate=2,
                                 input_size=32, teacher_input_size=32, normalize=False)))
print(tuple(batch["video"].shape))
"""


def test_vp9_loads_without_pyav(synth_shards):
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(synth_shards)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "(2, 3, 8, 32, 32)"
