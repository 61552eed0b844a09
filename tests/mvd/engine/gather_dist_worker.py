"""Run under ``torchrun --nproc_per_node 2`` (gloo, CPU) by test_distributed_gather.py:
``all_gather_rows`` with uneven row counts (one rank empty, both empty), and ``evaluate`` with a
split's views spread unevenly over the two ranks (rank 1 holds the padding and one view).

usage: torchrun --nproc_per_node 2 tests/mvd/engine/gather_dist_worker.py OUT

Writes OUT/rank{R}.json with what rank R got back.
"""

import contextlib
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from mvd.engine.distributed import all_gather_rows
from mvd.engine.evaluate import evaluate

sys.path.insert(0, str(Path(__file__).parent))  # torchrun puts it there too; explicit for clarity
from engine_fakes import ScoresModel, eval_batch  # noqa: E402

BIG = 20.0


def _rows(rank, n, dtype):
    """n rows of 3 whose values name the rank and the row: 100 * rank + 10 * row + column."""
    return (100 * rank + torch.arange(n * 3).reshape(n, 3) // 3 * 10
            + torch.arange(3).repeat(n, 1)).to(dtype)


def main():
    out = Path(sys.argv[1])
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    got = {
        "uneven": all_gather_rows(_rows(rank, [3, 1][rank], torch.long)).tolist(),
        "one_empty": all_gather_rows(_rows(rank, [0, 2][rank], torch.float32)).tolist(),
        "both_empty": list(all_gather_rows(_rows(rank, 0, torch.long)).shape),
    }
    # video 0 (label 1): 3 views on rank 0, averaged right; video 1 (label 2): one wrong view on
    # rank 1, and padding (valid False) that would make it right if it were counted.
    batches = [[eval_batch([0, 0], [0, 1], [1, 1], [True, True], [[BIG, 0, 0], [0, BIG, 0]]),
                eval_batch([0], [2], [1], [True], [[0, BIG, 0]])],
               [eval_batch([1, 1, 1], [0, 0, 0], [2, 2, 2], [True, False, False],
                       [[BIG, 0, 0], [0, 0, BIG], [0, 0, BIG]])]]
    classes = ["a", "b", "c"]
    got["eval"] = evaluate(ScoresModel(), batches[rank], classes, autocast=contextlib.nullcontext)
    got["eval_rank1_empty"] = evaluate(ScoresModel(), batches[0] if rank == 0 else [], classes,
                                       autocast=contextlib.nullcontext)
    (out / f"rank{rank}.json").write_text(json.dumps(got))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
