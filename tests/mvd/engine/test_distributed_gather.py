"""`all_gather_rows`: every rank's rows in rank order when the ranks hold different numbers of
rows (two gloo processes under real torchrun), the identity without a process group; and
`evaluate` giving the same result as one process when the views are spread unevenly."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mvd.engine.distributed import all_gather_rows

ROOT = Path(__file__).resolve().parents[3]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
            "--standalone"]


@pytest.fixture(scope="module")
def gathered(tmp_path_factory):
    """What each of the two ranks of gather_dist_worker.py got back: [rank 0's, rank 1's]."""
    out = tmp_path_factory.mktemp("gather_dist")
    proc = subprocess.run([*TORCHRUN, str(ROOT / "tests/mvd/engine/gather_dist_worker.py"),
                           str(out)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


@pytest.mark.slow
def test_uneven_rows_come_back_whole_in_rank_order_on_every_rank(gathered):
    for got in gathered:
        assert got["uneven"] == [[0, 1, 2], [10, 11, 12], [20, 21, 22], [100, 101, 102]]
        assert got["one_empty"] == [[100.0, 101.0, 102.0], [110.0, 111.0, 112.0]]
        assert got["both_empty"] == [0, 3]


@pytest.mark.slow
def test_evaluate_counts_each_view_once_however_the_ranks_hold_them(gathered):
    for got in gathered:
        # video 0 right (its 3 views on rank 0), video 1 wrong (1 view on rank 1, padding dropped)
        ev = got["eval"]
        assert {k: ev[k] for k in ("top1", "top5", "videos", "views")} == {
            "top1": 50.0, "top5": 100.0, "videos": 2, "views": 4}
        assert ev["per_class"]["b"]["top1"] == 100.0 and ev["per_class"]["c"]["top1"] == 0.0
        # rank 1 scored nothing: its empty share still joins the gather
        ev = got["eval_rank1_empty"]
        assert {k: ev[k] for k in ("top1", "top5", "videos", "views")} == {
            "top1": 100.0, "top5": 100.0, "videos": 1, "views": 3}


def test_without_a_process_group_the_rows_are_returned_as_they_are():
    t = torch.arange(6).reshape(3, 2)
    assert all_gather_rows(t) is t
