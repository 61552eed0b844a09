"""The clips every cuda-marked loader test decodes are ones NVDEC accepts: at least
GPU_MIN_SIDE on each side (DALI checks NVDEC's caps per stream and fails below VP9/AV1 128x128,
HEVC 144x144, H.264 48x16). Found by reading the tests: each cuda-marked test function of this
folder, and the shard fixtures it takes (which therefore live in conftest.py)."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
from conftest import GPU_MIN_SIDE

from dali_pipelines import load_shard_dir

HERE = Path(__file__).resolve().parent


def _cuda_tests() -> dict[str, list[str]]:
    """test name -> its arguments, for every function marked pytest.mark.cuda here."""
    found = {}
    for path in sorted(HERE.glob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.FunctionDef) and any(
                    "cuda" in ast.unparse(d) for d in node.decorator_list):
                found[f"{path.name}::{node.name}"] = [a.arg for a in node.args.args]
    return found


def _shard_dir(value) -> Path | None:
    candidate = getattr(value, "out_dir", value[0] if isinstance(value, tuple) else value)
    if isinstance(candidate, (str, Path)) and (Path(candidate) / "manifest.json").is_file():
        return Path(candidate)
    return None


def test_every_cuda_loader_test_decodes_clips_nvdec_accepts(request):
    tests = _cuda_tests()
    assert tests, "no cuda-marked test found: the scan is broken"
    checked = 0
    for test, args in tests.items():
        for arg in args:
            where = _shard_dir(request.getfixturevalue(arg))
            if where is None:
                continue
            table = load_shard_dir(where).table
            small = int(np.minimum(table.width, table.height).min())
            assert small >= GPU_MIN_SIDE, (f"{test} decodes {arg} on the GPU, whose smallest "
                                           f"side is {small} px (< {GPU_MIN_SIDE})")
            checked += 1
    assert checked, "no cuda-marked test takes shards: nothing checked"
